"""Decode + NMS inside the exported graph (``--include-nms``).

The graph ends in the standard ONNX ``NonMaxSuppression`` op (class-aware, per-class limit
``max_det``), then keeps the ``max_det`` best boxes per image and pads to a fixed
``(batch, max_det, 6)`` tensor: ``x1, y1, x2, y2, score, class`` in input pixels, sorted by score,
padding rows all zero. Score = objectness x class probability.

ONNX Runtime runs these graphs; DeepSparse 1.8 crashes while compiling them (a segfault in its
engine, even though each piece alone compiles), so for DeepSparse export raw outputs and run NMS
on the host, as its own YOLO pipelines do.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseyolo.utils.boxes import box_iou, xywh2xyxy


class _NonMaxSuppression(torch.autograd.Function):
    """Eager: greedy per-class NMS returning ``(K, 3)`` [batch, class, box] like the ONNX op."""

    @staticmethod
    def forward(
        ctx,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        max_out: int,
        iou_thres: float,  # noqa: D102
        score_thres: float,
    ) -> torch.Tensor:
        selected = []
        bs, nc, _ = scores.shape
        for b in range(bs):
            for c in range(nc):
                s = scores[b, c]
                idx = torch.nonzero(s > score_thres).flatten()
                if idx.numel() == 0:
                    continue
                idx = idx[torch.argsort(s[idx], descending=True)]
                iou = box_iou(boxes[b, idx], boxes[b, idx])
                keep: list[int] = []
                suppressed = torch.zeros(idx.numel(), dtype=torch.bool)
                for j in range(idx.numel()):
                    if suppressed[j]:
                        continue
                    keep.append(j)
                    if len(keep) >= max_out:
                        break
                    suppressed |= iou[j] > iou_thres
                selected += [[b, c, int(idx[j])] for j in keep]
        return torch.tensor(selected, dtype=torch.int64).reshape(-1, 3)

    @staticmethod
    def symbolic(g, boxes, scores, max_out, iou_thres, score_thres):  # noqa: D102
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_thres], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_thres], dtype=torch.float32)),
            center_point_box_i=0,
        )


class DetectWithNMS(nn.Module):
    """Wrap a detector whose eval forward returns ``(pred, raw)``; output ``(bs, max_det, 6)``."""

    def __init__(self, model: nn.Module, max_det: int = 300, conf_thres: float = 0.25, iou_thres: float = 0.45):
        super().__init__()
        self.model = model
        if hasattr(model, "export_raw"):
            model.export_raw = False
        self.max_det, self.conf_thres, self.iou_thres = int(max_det), float(conf_thres), float(iou_thres)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pred = self.model(x)[0]  # (bs, N, 5 + nc): xywh px, objectness, class probabilities
        bs, n = pred.shape[0], pred.shape[1]
        boxes = xywh2xyxy(pred[..., :4])
        scores = pred[..., 5:] * pred[..., 4:5]  # (bs, N, nc)
        nc = scores.shape[2]
        sel = _NonMaxSuppression.apply(
            boxes, scores.transpose(1, 2).contiguous(), self.max_det, self.iou_thres, self.conf_thres
        )
        b, c, i = sel[:, 0], sel[:, 1], sel[:, 2]
        box = boxes.reshape(-1, 4)[b * n + i]
        score = scores.reshape(-1)[(b * n + i) * nc + c]
        det = torch.cat((box, score.unsqueeze(1), c.to(box.dtype).unsqueeze(1)), 1)
        score, order = torch.sort(score, descending=True)
        det, b = det[order], b[order]
        # rank of each detection within its image, to keep the max_det best per image
        onehot = (b.unsqueeze(1) == torch.arange(bs, device=x.device).unsqueeze(0)).to(torch.int64)
        rank = (torch.cumsum(onehot, 0) * onehot).sum(1) - 1
        dump = bs * self.max_det  # rows beyond max_det go to one spare row that is cut off
        dest = torch.where(rank < self.max_det, b * self.max_det + rank, torch.full_like(rank, dump))
        out = torch.zeros(dump + 1, 6, dtype=det.dtype, device=det.device)
        out = out.scatter(0, dest.unsqueeze(1).expand(-1, 6), det)
        return out[:dump].reshape(bs, self.max_det, 6)
