"""Batched, class-aware non-maximum suppression in pure torch (no torchvision).

Class awareness uses the usual offset trick: every box is shifted by ``class * MAX_WH`` pixels so
boxes of different classes can never overlap, and a single greedy pass handles all classes.
"""

from __future__ import annotations

import time

import torch

from sparseyolo.utils.boxes import xywh2xyxy
from sparseyolo.utils.logging import LOGGER

MAX_WH = 7680  # larger than any image side we expect; the per-class box offset
MAX_NMS = 30000  # cap on boxes entering the greedy kernel (highest scores kept)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def nms_kernel(
    boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, max_keep: int | None = None
) -> torch.Tensor:
    """Greedy NMS of xyxy ``boxes`` (N, 4); returns kept indices in descending score order.

    A box is suppressed when its IoU with an already kept, higher-scored box is > ``iou_thres``.
    Each iteration keeps the best remaining box and drops the remaining boxes it overlaps, so the
    Python loop runs once per *kept* box and all the work inside is vectorised.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].float()
    area = _area(b)
    x1, y1, x2, y2 = b.unbind(1)
    remaining = torch.arange(len(b), device=b.device)
    keep: list[torch.Tensor] = []
    while remaining.numel():
        i = remaining[0]
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        rest = remaining[1:]
        if rest.numel() == 0:
            break
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (area[i] + area[rest] - inter + 1e-9)
        remaining = rest[iou <= iou_thres]
    return order[torch.stack(keep)]


def non_max_suppression(
    pred: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    max_det: int = 300,
    multi_label: bool = False,
    max_nms: int = MAX_NMS,
    time_limit: float | None = None,
) -> list[torch.Tensor]:
    """Filter raw detections ``pred`` (bs, N, 5 + nc) to a list of (n, 6) tensors per image.

    ``pred`` rows are ``cx, cy, w, h`` (pixels), objectness and sigmoid-ed class probabilities; the
    output rows are ``x1, y1, x2, y2, score, cls`` with score = objectness * class probability,
    sorted by score. ``multi_label`` keeps every class whose score passes ``conf_thres`` (one row
    each), otherwise only the best class per box. ``classes`` keeps only those class ids.
    ``agnostic`` suppresses across classes. ``time_limit`` (seconds; default none) stops early
    with a warning. Validation never sets it: a limit that a busy CPU reaches drops detections and
    silently lowers mAP, and the work is already bounded (``max_nms`` boxes, ``max_det`` greedy
    passes per image).
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres must be in [0, 1], got {conf_thres}")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres must be in [0, 1], got {iou_thres}")
    if isinstance(pred, (list, tuple)):  # eval-mode model output (pred, raw)
        pred = pred[0]
    bs, nc = pred.shape[0], pred.shape[2] - 5
    multi_label &= nc > 1
    limit = time_limit if time_limit is not None else float("inf")
    t0 = time.time()
    output = [torch.zeros((0, 6), device=pred.device, dtype=pred.dtype) for _ in range(bs)]
    candidates = pred[..., 4] > conf_thres
    for xi, x in enumerate(pred):
        x = x[candidates[xi]]
        if not x.shape[0]:
            continue
        box = xywh2xyxy(x[:, :4])
        scores = x[:, 5:] * x[:, 4:5]  # obj * cls prob
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            det = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device)).any(1)]
        if not det.shape[0]:
            continue
        if det.shape[0] > max_nms:
            det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        offset = det[:, 5:6] * (0 if agnostic else MAX_WH)
        keep = nms_kernel(det[:, :4] + offset, det[:, 4], iou_thres, max_keep=max_det)
        output[xi] = det[keep[:max_det]]
        if time.time() - t0 > limit:
            LOGGER.warning(f"WARNING: NMS time limit {limit:.2f}s exceeded after {xi + 1}/{bs} images")
            break
    return output
