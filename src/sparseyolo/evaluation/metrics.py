"""Detection metrics: COCO-style matching, AP / mAP, P/R/F1 at the best-F1 confidence, fitness.

The matching and AP follow the COCO evaluation protocol (``bbox``, area range *all*):
predictions are matched to ground truth greedily in descending score order, per image and class,
each ground-truth box at most once, at every IoU threshold 0.50:0.05:0.95 independently; AP is the
101-point interpolated area under the monotone precision envelope. Classes without ground truth are
left out of the mean, as COCO does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sparseyolo.utils.boxes import box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def match_predictions(
    detections: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, iouv: np.ndarray = IOU_THRESHOLDS
) -> np.ndarray:
    """Mark each detection as TP or FP at every IoU threshold, COCO style.

    ``detections`` (n, 6) = x1, y1, x2, y2, score, cls; ``labels`` (m, 5) = cls, x1, y1, x2, y2
    (same pixel space). Returns a bool array (n, len(iouv)) in the order of ``detections``.
    """
    det = torch.as_tensor(detections, dtype=torch.float32).cpu()
    lab = torch.as_tensor(labels, dtype=torch.float32).cpu()
    n, t = det.shape[0], len(iouv)
    correct = np.zeros((n, t), dtype=bool)
    if n == 0 or lab.shape[0] == 0:
        return correct
    iou = box_iou(det[:, :4], lab[:, 1:]).numpy().astype(np.float64)
    iou[det[:, 5:6].numpy() != lab[:, 0].numpy()[None]] = -1.0  # only same-class pairs can match
    order = np.argsort(-det[:, 4].numpy(), kind="stable")
    gt_taken = np.zeros((t, lab.shape[0]), dtype=bool)
    thr = np.minimum(iouv, 1 - 1e-10)[:, None]
    for d in order:
        row = iou[d]
        if row.max() < thr[0, 0]:
            continue  # overlaps nothing well enough at any threshold: FP everywhere
        cand = np.where((~gt_taken) & (row[None] >= thr), row[None], -1.0)  # (t, m)
        best = cand.argmax(1)
        hit = cand[np.arange(t), best] >= 0
        correct[d, hit] = True
        gt_taken[np.nonzero(hit)[0], best[hit]] = True
    return correct


def coco_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """101-point interpolated AP from cumulative recall / precision sorted by descending score."""
    if recall.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # monotone non-increasing
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    values = np.zeros_like(RECALL_POINTS)
    valid = idx < len(recall)
    values[valid] = envelope[idx[valid]]
    return float(values.mean())


@dataclass
class APResult:
    """Per-class results of :func:`ap_per_class`, rows in the order of ``classes``."""

    classes: np.ndarray  # class ids that have ground truth
    ap: np.ndarray  # (nc_present, n_iou)
    p: np.ndarray  # precision at the best mean-F1 confidence
    r: np.ndarray
    f1: np.ndarray
    n_targets: np.ndarray  # instances per class
    best_conf: float = 0.0
    curves: dict = field(default_factory=dict)  # px, p_curve, r_curve, f1_curve, pr (recall, precision)

    @property
    def ap50(self) -> np.ndarray:
        return self.ap[:, 0] if self.ap.size else np.zeros(0)

    @property
    def ap50_95(self) -> np.ndarray:
        return self.ap.mean(1) if self.ap.size else np.zeros(0)

    def mean_results(self) -> tuple[float, float, float, float]:
        """Mean precision, recall, mAP@0.5 and mAP@0.5:0.95 over the classes with ground truth."""
        if not len(self.classes):
            return 0.0, 0.0, 0.0, 0.0
        return (float(self.p.mean()), float(self.r.mean()), float(self.ap50.mean()), float(self.ap50_95.mean()))


def _smooth(y: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Moving average with a window of ``frac`` of the points (odd length), edge-padded."""
    k = int(round(len(y) * frac * 2)) // 2 + 1
    pad = np.concatenate([np.full(k // 2, y[0]), y, np.full(k // 2, y[-1])])
    return np.convolve(pad, np.ones(k) / k, mode="valid")


def ap_per_class(
    tp: np.ndarray,
    conf: np.ndarray,
    pred_cls: np.ndarray,
    target_cls: np.ndarray,
    plot: bool = False,
    save_dir: str | Path | None = None,
    names: Sequence[str] | Mapping[int, str] = (),
    eps: float = 1e-16,
) -> APResult:
    """COCO AP per class plus precision / recall / F1 at the confidence that maximises mean F1.

    ``tp`` (n, n_iou) bool from :func:`match_predictions` for all predictions of the dataset, with
    their ``conf`` and ``pred_cls``; ``target_cls`` lists the class of every ground-truth box.
    Predictions must be concatenated image by image (any order within an image): ties in score are
    broken by that order, as in COCO. With ``plot`` it writes the PR / F1 / P / R curves to ``save_dir``.
    """
    tp = np.asarray(tp, dtype=bool)
    tp = tp[:, None] if tp.ndim == 1 else tp
    conf, pred_cls, target_cls = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (conf, pred_cls, target_cls))
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_targets = np.unique(target_cls, return_counts=True)
    nc, n_iou = len(classes), tp.shape[1]
    px = np.linspace(0, 1, 1000)
    ap = np.zeros((nc, n_iou))
    p_curve, r_curve = np.zeros((nc, 1000)), np.zeros((nc, 1000))
    pr_curves = []
    for ci, c in enumerate(classes):
        i = pred_cls == c
        n_gt = n_targets[ci]
        if not i.any():
            pr_curves.append((np.zeros(1), np.zeros(1)))
            continue
        tpc = np.cumsum(tp[i], 0)
        fpc = np.cumsum(~tp[i], 0)
        recall = tpc / (n_gt + eps)
        precision = tpc / (tpc + fpc)
        for j in range(n_iou):
            ap[ci, j] = coco_ap(recall[:, j], precision[:, j])
        # confidence curves at IoU 0.5 (x decreasing in conf, so negate for np.interp)
        r_curve[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        pr_curves.append((recall[:, 0], np.maximum.accumulate(precision[::-1, 0])[::-1]))
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = int(_smooth(f1_curve.mean(0)).argmax()) if nc else 0
    result = APResult(
        classes=classes.astype(int),
        ap=ap,
        p=p_curve[:, best],
        r=r_curve[:, best],
        f1=f1_curve[:, best],
        n_targets=n_targets,
        best_conf=float(px[best]),
        curves={"px": px, "p": p_curve, "r": r_curve, "f1": f1_curve, "pr": pr_curves},
    )
    if plot and save_dir is not None:
        from sparseyolo.evaluation.plots import plot_metric_curves

        plot_metric_curves(result, Path(save_dir), names)
    return result


class ConfusionMatrix:
    """(nc + 1) x (nc + 1) counts: rows = predicted class, columns = true class; the last row and
    column are background (missed objects / false detections)."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres
        self.matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: ``detections`` (n, 6) xyxy, score, cls; ``labels`` (m, 5) cls, xyxy."""
        labels = torch.as_tensor(labels, dtype=torch.float32).cpu()
        gt_cls = labels[:, 0].long().numpy()
        if detections is None or len(detections) == 0:
            for c in gt_cls:
                self.matrix[self.nc, c] += 1
            return
        det = torch.as_tensor(detections, dtype=torch.float32).cpu()
        det = det[det[:, 4] > self.conf]
        det_cls = det[:, 5].long().numpy()
        if len(labels) == 0:
            for c in det_cls:
                self.matrix[c, self.nc] += 1
            return
        iou = box_iou(labels[:, 1:], det[:, :4]).numpy()
        gi, di = np.nonzero(iou > self.iou_thres)
        pairs = np.stack([gi, di, iou[gi, di]], 1)
        if len(pairs):
            # best IoU first; each detection and each label is used once
            pairs = pairs[np.argsort(-pairs[:, 2], kind="stable")]
            pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]
            pairs = pairs[np.argsort(-pairs[:, 2], kind="stable")]
            pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]
        matched_gt = dict(zip(pairs[:, 0].astype(int), pairs[:, 1].astype(int), strict=False))
        for g, c in enumerate(gt_cls):
            row = det_cls[matched_gt[g]] if g in matched_gt else self.nc
            self.matrix[row, c] += 1
        used = set(matched_gt.values())
        for d, c in enumerate(det_cls):
            if d not in used:
                self.matrix[c, self.nc] += 1

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]

    def plot(self, save_dir: str | Path, names: Sequence[str] = (), normalize: bool = True) -> Path:
        from sparseyolo.evaluation.plots import plot_confusion_matrix

        return plot_confusion_matrix(self.matrix, Path(save_dir), names, normalize)


def fitness(metrics: Mapping[str, float] | Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Model selection score ``0.1 * mAP50 + 0.9 * mAP50-95``.

    Accepts the metrics dict of :func:`sparseyolo.evaluation.validation.validate`, a sequence
    ``(precision, recall, mAP50, mAP50-95, ...)``, or a 2-D array of such rows (one score per row).
    """
    if isinstance(metrics, Mapping):
        return 0.1 * float(metrics["mAP50"]) + 0.9 * float(metrics["mAP50-95"])
    m = np.asarray(metrics, dtype=np.float64)
    if m.ndim == 2:  # rows of results
        return m[:, 2] * 0.1 + m[:, 3] * 0.9
    return 0.1 * float(m[2]) + 0.9 * float(m[3])
