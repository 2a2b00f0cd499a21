"""The anchor-based YOLOv3/YOLOv5 detection loss.

Per output level, each target is matched to every anchor whose width/height ratio to the target
satisfies ``max(r, 1/r) < anchor_t``. With the ``v5`` head decode (``xy = 2*sigmoid - 0.5``) a
target is also assigned to the two neighbouring cells nearest its centre (offset 0.5), because that
decode can reach +/-0.5 cell beyond its own cell. The ``darknet`` decode (``sigmoid + c``) cannot,
so only the centre cell is used, and a match also needs an anchor/target shape IoU >= ``iou_t``
(its ``exp`` width/height is unbounded, so the ratio rule alone is a weak prior).

Losses: CIoU box loss, BCE objectness with the (detached, clamped >= 0) IoU as target, and BCE
classes, optionally focal (``fl_gamma > 0``).

Per-level objectness balance is chosen by the level's *stride*, not its index: stride 8 -> 4.0,
16 -> 1.0, 32 -> 0.4 (64 -> 0.06, 128 -> 0.02). For the 3-level YOLOv3 this is YOLOv5's
[4.0, 1.0, 0.4]; for the 2-level YOLOv3-tiny (strides 16, 32) it gives [1.0, 0.4], which keeps the
same weight for the same grid density (the weight compensates for the number of cells per level).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from sparseyolo.utils.boxes import bbox_iou

_BALANCE_BY_STRIDE = {8: 4.0, 16: 1.0, 32: 0.4, 64: 0.06, 128: 0.02}


def level_balance(strides: list[float]) -> list[float]:
    """Objectness weight of each output level, looked up by stride (see module docstring)."""
    out = []
    for s in strides:
        s = int(round(float(s)))
        if s in _BALANCE_BY_STRIDE:
            out.append(_BALANCE_BY_STRIDE[s])
        else:  # unusual stride: interpolate in log2 space between the known ones
            keys = sorted(_BALANCE_BY_STRIDE)
            lo = max([k for k in keys if k <= s], default=keys[0])
            hi = min([k for k in keys if k >= s], default=keys[-1])
            if lo == hi:
                out.append(_BALANCE_BY_STRIDE[lo])
            else:
                t = (math.log2(s) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
                out.append(_BALANCE_BY_STRIDE[lo] ** (1 - t) * _BALANCE_BY_STRIDE[hi] ** t)
    return out


def scaled_gains(hyp: dict[str, float], nl: int, nc: int, img_size: int) -> dict[str, float]:
    """YOLOv5 gain scaling: hyp values are tuned for 3 levels, 80 classes, 640 pixels."""
    return {
        "box": hyp["box"] * 3 / nl,
        "cls": hyp["cls"] * nc / 80 * 3 / nl,
        "obj": hyp["obj"] * (img_size / 640) ** 2 * 3 / nl,
    }


def _cell_index(shape: torch.Size, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Row-major linear positions of ``index`` (one tensor per leading dim) in a tensor of ``shape``."""
    linear = index[0]
    for i, size in zip(index[1:], shape[1 : len(index)], strict=True):
        linear = linear * size + i
    return linear


def gather_cells(pred: torch.Tensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``pred[b, a, gj, gi]`` (one row per target; ``pred`` has one more dim than ``index``), with a
    backward pass that adds the gradients of targets sharing an (image, anchor, cell) in index order.

    Advanced indexing's backward is ``index_put_(accumulate=True)``, which on CPU adds such
    duplicates with parallel atomic adds: their order, hence the float rounding, changed from process
    to process (two of six resumes of the same BCCD epoch drifted apart), so a resumed run did not
    reproduce an uninterrupted one. ``index_select``'s backward, ``index_add_``, adds one index after
    the other on CPU (CUDA's still adds atomically).
    """
    return pred.reshape(-1, pred.shape[-1]).index_select(0, _cell_index(pred.shape, index))


def objectness_target(shape: torch.Size, index: tuple[torch.Tensor, ...], score: torch.Tensor) -> torch.Tensor:
    """Zeros of ``shape`` with ``score`` (>= 0) written at ``index``; where several targets share an
    anchor and a cell, the cell takes the best-fitting one's (the largest) score.

    Sorting by score and then writing ``tobj[index] = score`` does not decide which duplicate wins: on
    CPU, ``index_put_`` writes in parallel, and the winner changed from run to run (the objectness
    gradient changed sign at those cells, and a resumed QAT run drifted from an uninterrupted one).
    A max does not depend on the order of the writes.
    """
    tobj = score.new_zeros(math.prod(shape))
    return tobj.scatter_reduce_(0, _cell_index(shape, index), score, reduce="amax").view(shape)


class FocalLoss(nn.Module):
    """Focal loss wrapper around ``BCEWithLogitsLoss`` (Lin et al., 2017)."""

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.bce, self.gamma, self.alpha = bce, gamma, alpha
        self.reduction = bce.reduction
        self.bce.reduction = "none"

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.bce(pred, true)
        p = torch.sigmoid(pred)
        p_t = true * p + (1 - true) * (1 - p)
        alpha = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha * (1.0 - p_t) ** self.gamma
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss


def _detect_head(model: nn.Module) -> nn.Module:
    m = model.module if hasattr(model, "module") else model  # DDP
    return m.model[-1]


def wh_iou(anchors: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    """IoU of (na, 2) anchor shapes with (n, 2) target shapes, both centred: -> (na, n)."""
    inter = torch.min(anchors[:, None], wh[None]).prod(2)
    return inter / (anchors.prod(1)[:, None] + wh.prod(1)[None] - inter + 1e-9)


class YoloLoss:
    """Callable ``loss(preds, targets) -> (total * bs, tensor([box, obj, cls]).detach())``.

    ``preds`` is the train-mode model output (list of ``(bs, na, ny, nx, nc+5)``); ``targets`` is
    ``(n, 6)`` = image index, class, cx, cy, w, h (normalised), as built by the collate function.
    """

    def __init__(self, model: nn.Module, hyp: dict[str, float], img_size: int = 640, label_smoothing: float = 0.0):
        det = _detect_head(model)
        self.det = det
        device = next(model.parameters()).device
        self.hyp = hyp
        self.nl, self.na, self.nc = int(det.nl), int(det.na), int(det.nc)
        self.decode = getattr(det, "decode", "v5")
        self.gains = scaled_gains(hyp, self.nl, self.nc, img_size)
        self.balance = level_balance([float(s) for s in det.stride])
        self.anchor_t = hyp["anchor_t"]
        self.iou_t = hyp["iou_t"]
        self.cp, self.cn = 1.0 - 0.5 * label_smoothing, 0.5 * label_smoothing
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["cls_pw"]], device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["obj_pw"]], device=device))
        if hyp["fl_gamma"] > 0:
            bce_cls, bce_obj = FocalLoss(bce_cls, hyp["fl_gamma"]), FocalLoss(bce_obj, hyp["fl_gamma"])
        self.bce_cls, self.bce_obj = bce_cls, bce_obj

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = targets.device
        lcls = torch.zeros(1, device=device)
        lbox = torch.zeros(1, device=device)
        lobj = torch.zeros(1, device=device)
        tcls, tbox, indices, anch = self.build_targets(preds, targets)
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            n = b.shape[0]
            if n:
                ps = gather_cells(pi, (b, a, gj, gi))
                t_xy, t_wh = ps[:, :2], ps[:, 2:4]
                if self.decode == "darknet":
                    t_wh = t_wh.clamp(-10.0, 8.0)  # exp() must not overflow into inf/NaN IoUs
                # decode in grid units: zero grid offset (tbox is relative to the cell), stride 1
                pxy, pwh = self.det.decode_xy_wh(t_xy, t_wh, 0.0, anch[i], 1.0)
                pbox = torch.cat((pxy, pwh), 1)
                iou = bbox_iou(pbox.float(), tbox[i], CIoU=True).reshape(-1)  # (n,), also for n == 1
                lbox = lbox + (1.0 - iou).mean()
                score = iou.detach().clamp(0).to(pi.dtype)
                tobj = objectness_target(pi.shape[:4], (b, a, gj, gi), score)
                if self.nc > 1:
                    t = torch.full_like(ps[:, 5:], self.cn)
                    t[range(n), tcls[i]] = self.cp
                    lcls = lcls + self.bce_cls(ps[:, 5:], t)
            else:
                tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            lobj = lobj + self.bce_obj(pi[..., 4], tobj) * self.balance[i]
        lbox = lbox * self.gains["box"]
        lobj = lobj * self.gains["obj"]
        lcls = lcls * self.gains["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    @torch.no_grad()
    def build_targets(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[list, list, list, list]:
        """Assign targets to (image, anchor, cell) per level.

        Returns per level: class ids, boxes (cx, cy relative to the cell; w, h in grid units),
        indices (b, a, gj, gi) and the matched anchors in grid units.
        """
        na, nt = self.na, targets.shape[0]
        device = targets.device
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=device)
        ai = torch.arange(na, device=device).float().view(na, 1).repeat(1, nt)
        t_all = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7): ..., anchor
        neighbours = self.decode != "darknet"
        g = 0.5
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device).float() * g
        for i in range(self.nl):
            stride = float(self.det.stride[i])
            anchors = self.det.anchors[i].to(device).float() / stride  # grid units
            ny, nx = preds[i].shape[2:4]
            gain[2:6] = torch.tensor([nx, ny, nx, ny], device=device, dtype=torch.float)
            t = t_all * gain
            offsets = torch.zeros((0, 2), device=device)
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                j = torch.max(r, 1 / r).max(2)[0] < self.anchor_t
                if not neighbours:
                    j &= wh_iou(anchors, t[0, :, 4:6]) >= self.iou_t
                t = t[j]
                gxy = t[:, 2:4]
                if neighbours:
                    gxi = gain[[2, 3]] - gxy
                    jj, kk = ((gxy % 1 < g) & (gxy > 1)).T
                    ll, mm = ((gxi % 1 < g) & (gxi > 1)).T
                    sel = torch.stack((torch.ones_like(jj), jj, kk, ll, mm))
                    t = t.repeat((5, 1, 1))[sel]
                    offsets = (torch.zeros_like(gxy)[None] + off[:, None])[sel]
                else:
                    offsets = torch.zeros_like(gxy)
            else:
                t = t_all[0][:0]
            b, c = t[:, :2].long().T
            gxy, gwh = t[:, 2:4], t[:, 4:6]
            gij = (gxy - offsets).long()
            gi = gij[:, 0].clamp_(0, nx - 1)
            gj = gij[:, 1].clamp_(0, ny - 1)
            a = t[:, 6].long()
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch


def build_loss(model: nn.Module, hyp: dict[str, Any], img_size: int, label_smoothing: float = 0.0) -> YoloLoss:
    """Convenience constructor mirroring :class:`YoloLoss`."""
    return YoloLoss(model, hyp, img_size=img_size, label_smoothing=label_smoothing)
