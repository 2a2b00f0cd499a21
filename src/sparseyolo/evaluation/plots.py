"""Plots for validation and training: metric curves, confusion matrix, results.png, labels.jpg,
batch mosaics, and the box drawing used by ``sparseyolo detect``.

Matplotlib is used through ``Figure`` + the Agg canvas directly, so importing this module never
changes the process-wide pyplot backend. Images are drawn with OpenCV.
"""

from __future__ import annotations

import colorsys
import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from sparseyolo.utils.logging import LOGGER


def _figure(*args, **kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(*args, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _name(names: Sequence[str] | Mapping[int, str], c: int) -> str:
    try:
        return str(names[c])
    except (IndexError, KeyError, TypeError):
        return str(c)


def class_color(c: int, bgr: bool = True) -> tuple[int, int, int]:
    """A stable, well separated colour per class id (golden-ratio hue steps)."""
    h = (int(c) * 0.618033988749895) % 1.0
    r, g, b = (int(v * 255) for v in colorsys.hsv_to_rgb(h, 0.75, 0.95))
    return (b, g, r) if bgr else (r, g, b)


# ------------------------------------------------------------------------------ metric curves
def _curve_plot(
    save_path: Path, x: np.ndarray, ys: np.ndarray, names, classes, xlabel: str, ylabel: str, mean_label: str
) -> Path:
    fig = _figure(figsize=(9, 6), tight_layout=True)
    ax = fig.add_subplot()
    per_class_legend = 0 < len(ys) < 21
    for y, c in zip(ys, classes, strict=False):
        if per_class_legend:
            ax.plot(x, y, linewidth=1, label=_name(names, c))
        else:  # too many classes to tell apart: thin grey lines
            ax.plot(x, y, linewidth=1, color="grey", alpha=0.5)
    if len(ys):
        ax.plot(x, ys.mean(0), linewidth=3, color="blue", label=mean_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    fig.savefig(save_path, dpi=200)
    return save_path


def plot_metric_curves(result, save_dir: Path, names: Sequence[str] | Mapping[int, str] = ()) -> list[Path]:
    """PR_curve.png, F1_curve.png, P_curve.png and R_curve.png from an ``APResult``."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    cur, classes = result.curves, result.classes
    px = cur["px"]
    # precision interpolated on a common recall axis for the PR curve
    pr = (
        np.stack([np.interp(px, r, p, right=0) if len(r) > 1 or r[0] > 0 else np.zeros_like(px) for r, p in cur["pr"]])
        if len(classes)
        else np.zeros((0, len(px)))
    )
    map50 = result.ap50.mean() if len(classes) else 0.0
    paths = [
        _curve_plot(
            save_dir / "PR_curve.png", px, pr, names, classes, "Recall", "Precision", f"all classes {map50:.3f} mAP@0.5"
        )
    ]
    best = result.best_conf
    for key, label, fname in (
        ("f1", "F1", "F1_curve.png"),
        ("p", "Precision", "P_curve.png"),
        ("r", "Recall", "R_curve.png"),
    ):
        ys = cur[key]
        mean_at = ys.mean(0)[int(round(best * (len(px) - 1)))] if len(ys) else 0.0
        paths.append(
            _curve_plot(
                save_dir / fname,
                px,
                ys,
                names,
                classes,
                "Confidence",
                label,
                f"all classes {mean_at:.2f} at {best:.3f}",
            )
        )
    return paths


def plot_confusion_matrix(
    matrix: np.ndarray, save_dir: Path, names: Sequence[str] = (), normalize: bool = True
) -> Path:
    """confusion_matrix.png; columns (true classes) are normalised to sum to 1."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    m = matrix.astype(np.float64)
    if normalize:
        m = m / (m.sum(0, keepdims=True) + 1e-9)
    m[m < 0.005] = np.nan  # blank cells instead of a sea of zeros
    nc = matrix.shape[0] - 1
    labels = [_name(names, i) for i in range(nc)] + ["background"]
    fig = _figure(figsize=(12, 9), tight_layout=True)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax)
    if nc < 30:
        ax.set_xticks(range(nc + 1), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(nc + 1), labels, fontsize=8)
        if nc < 15:
            for i in range(nc + 1):
                for j in range(nc + 1):
                    if not np.isnan(m[i, j]):
                        ax.text(
                            j,
                            i,
                            f"{m[i, j]:.2f}" if normalize else f"{int(m[i, j])}",
                            ha="center",
                            va="center",
                            fontsize=7,
                        )
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion matrix" + (" (normalised)" if normalize else ""))
    path = save_dir / "confusion_matrix.png"
    fig.savefig(path, dpi=150)
    return path


# ------------------------------------------------------------------------------ training plots
def plot_results(results_csv: str | Path) -> Path:
    """results.png next to ``results_csv``: one panel per numeric column against ``epoch``."""
    results_csv = Path(results_csv)
    with open(results_csv, newline="") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if r]
    if len(rows) < 2:
        raise ValueError(f"{results_csv}: no data rows to plot")
    header, data = rows[0], rows[1:]

    def num(v: str) -> float:
        try:
            return float(v)
        except ValueError:
            return math.nan

    arr = np.array([[num(v) for v in r] + [math.nan] * (len(header) - len(r)) for r in data])
    x_col = header.index("epoch") if "epoch" in header else None
    x = arr[:, x_col] if x_col is not None else np.arange(len(arr))
    cols = [i for i, h in enumerate(header) if i != x_col and not np.all(np.isnan(arr[:, i]))]
    ncols = min(5, max(1, len(cols)))
    nrows = max(1, math.ceil(len(cols) / ncols))
    fig = _figure(figsize=(3.2 * ncols, 2.8 * nrows), tight_layout=True)
    for k, i in enumerate(cols):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.plot(x, arr[:, i], marker=".", linewidth=2, markersize=6)
        if len(arr) > 4:  # a light trend line
            y = arr[:, i]
            ok = ~np.isnan(y)
            if ok.sum() > 4:
                w = max(3, ok.sum() // 5) | 1
                pad = np.pad(y[ok], w // 2, mode="edge")
                ax.plot(x[ok], np.convolve(pad, np.ones(w) / w, mode="valid"), ":", color="orange")
        ax.set_title(header[i], fontsize=10)
    path = results_csv.with_name("results.png")
    fig.savefig(path, dpi=150)
    return path


def plot_labels(
    labels: np.ndarray | torch.Tensor, names: Sequence[str] | Mapping[int, str], save_dir: str | Path
) -> Path:
    """labels.jpg: class histogram and box centre / size distributions.

    ``labels`` (n, 5) = cls, cx, cy, w, h normalised (the concatenated dataset labels).
    """
    lab = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    lab = lab.reshape(-1, 5).astype(np.float64)
    nc = int(max(len(names), lab[:, 0].max() + 1 if len(lab) else 0, 1))
    fig = _figure(figsize=(10, 8), tight_layout=True)
    ax = fig.add_subplot(2, 2, 1)
    counts = np.bincount(lab[:, 0].astype(int), minlength=nc)
    ax.bar(range(nc), counts, color=[np.array(class_color(i, bgr=False)) / 255 for i in range(nc)])
    ax.set_ylabel("instances")
    if nc < 30:
        ax.set_xticks(range(nc), [_name(names, i) for i in range(nc)], rotation=90, fontsize=8)
    else:
        ax.set_xlabel("classes")
    # box shapes overlaid at the centre
    ax = fig.add_subplot(2, 2, 2)
    canvas = np.full((500, 500, 3), 255, np.uint8)
    for cls, _, _, w, h in lab[:1000]:
        x1, y1 = int((0.5 - w / 2) * 500), int((0.5 - h / 2) * 500)
        x2, y2 = int((0.5 + w / 2) * 500), int((0.5 + h / 2) * 500)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), class_color(int(cls), bgr=False), 1)
    ax.imshow(canvas)
    ax.axis("off")
    for k, (a, b, xl, yl) in enumerate(((1, 2, "x", "y"), (3, 4, "width", "height"))):
        ax = fig.add_subplot(2, 2, 3 + k)
        if len(lab):
            ax.hist2d(lab[:, a], lab[:, b], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / "labels.jpg"
    fig.savefig(path, dpi=120)
    return path


# ------------------------------------------------------------------------------ image drawing
def draw_box(
    img: np.ndarray, xyxy: Sequence[float], label: str, color: tuple[int, int, int], thickness: int = 2
) -> None:
    """Draw one box with a filled label tag on a BGR uint8 image, in place."""
    p1 = (int(xyxy[0]), int(xyxy[1]))
    p2 = (int(xyxy[2]), int(xyxy[3]))
    cv2.rectangle(img, p1, p2, color, thickness, cv2.LINE_AA)
    if not label:
        return
    scale = max(thickness / 3, 0.35)
    ft = max(thickness - 1, 1)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, ft)
    outside = p1[1] - th - base >= 0  # tag above the box when there is room
    q1 = (p1[0], p1[1] - th - base if outside else p1[1])
    q2 = (p1[0] + tw, p1[1] if outside else p1[1] + th + base)
    cv2.rectangle(img, q1, q2, color, -1, cv2.LINE_AA)
    y = p1[1] - base if outside else p1[1] + th
    lum = 0.299 * color[2] + 0.587 * color[1] + 0.114 * color[0]
    cv2.putText(
        img,
        label,
        (p1[0], y),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (0, 0, 0) if lum > 150 else (255, 255, 255),
        ft,
        cv2.LINE_AA,
    )


def annotate_detections(
    img: np.ndarray,
    det: torch.Tensor | np.ndarray,
    names: Sequence[str] | Mapping[int, str],
    line_thickness: int | None = None,
    show_conf: bool = True,
) -> np.ndarray:
    """Draw ``det`` rows (x1, y1, x2, y2, score, cls) on a BGR image, in place; returns it."""
    det = det.detach().cpu().numpy() if isinstance(det, torch.Tensor) else np.asarray(det)
    lw = line_thickness or max(round(sum(img.shape[:2]) / 2 * 0.003), 2)
    for *xyxy, score, cls in det[:, :6].tolist():
        label = f"{_name(names, int(cls))} {score:.2f}" if show_conf else _name(names, int(cls))
        draw_box(img, xyxy, label, class_color(int(cls)), lw)
    return img


def plot_images(
    images: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    paths: Sequence[str] | None = None,
    fname: str | Path = "images.jpg",
    names: Sequence[str] | Mapping[int, str] = (),
    max_subplots: int = 16,
    max_size: int = 1920,
    conf_thres: float = 0.25,
) -> Path:
    """A mosaic of a batch with its boxes, e.g. train_batch0.jpg or val_batch0_pred.jpg.

    ``images`` (bs, 3, H, W) RGB, uint8 or float in [0, 1]; ``targets`` (n, 6) labels
    ``[batch, cls, cx, cy, w, h]`` or (n, 7) predictions ``[batch, cls, cx, cy, w, h, conf]``, with
    boxes normalised (all values <= 1) or in pixels of the batch images. Predictions under
    ``conf_thres`` are not drawn.
    """
    imgs = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, np.float32)
    tg = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    tg = tg.reshape(-1, tg.shape[-1] if tg.ndim == 2 else 6).astype(np.float64)
    if imgs.size and imgs.max() <= 1.0:
        imgs = imgs * 255
    bs, _, h, w = imgs.shape
    n = min(bs, max_subplots)
    ns = math.ceil(n**0.5)  # tiles per side
    scale = min(1.0, max_size / (ns * max(h, w)))
    th, tw = math.ceil(h * scale), math.ceil(w * scale)
    mosaic = np.full((ns * th, ns * tw, 3), 255, np.uint8)
    normalised = len(tg) and tg[:, 2:6].max() <= 1.01
    for i in range(n):
        y0, x0 = (i // ns) * th, (i % ns) * tw
        tile = np.ascontiguousarray(imgs[i].transpose(1, 2, 0)[..., ::-1]).clip(0, 255).astype(np.uint8)
        if scale < 1:
            tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
        tile = tile.copy()
        t = tg[tg[:, 0] == i]
        is_pred = t.shape[1] >= 7
        if is_pred:
            t = t[t[:, 6] >= conf_thres]
        for row in t:
            cx, cy, bw, bh = row[2:6] * ([tw, th, tw, th] if normalised else scale)
            cls = int(row[1])
            label = _name(names, cls) + (f" {row[6]:.1f}" if is_pred else "")
            draw_box(tile, (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), label, class_color(cls), thickness=1)
        if paths is not None and i < len(paths):
            cv2.putText(
                tile, Path(paths[i]).name[:40], (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (220, 220, 220), 1, cv2.LINE_AA
            )
        cv2.rectangle(tile, (0, 0), (tw - 1, th - 1), (255, 255, 255), 2)
        mosaic[y0 : y0 + th, x0 : x0 + tw] = tile
    fname = Path(fname)
    fname.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(fname), mosaic):
        LOGGER.warning(f"WARNING: could not write {fname}")
    return fname


def output_to_target(output: Sequence[torch.Tensor], max_det: int = 300) -> torch.Tensor:
    """NMS output (list of (n, 6) xyxy, score, cls) -> (m, 7) [batch, cls, cx, cy, w, h, conf]
    rows for :func:`plot_images`."""
    rows = []
    for i, o in enumerate(output):
        o = o[:max_det].detach().cpu().float()
        xywh = torch.cat(((o[:, :2] + o[:, 2:4]) / 2, o[:, 2:4] - o[:, :2]), 1)
        rows.append(torch.cat((torch.full((len(o), 1), float(i)), o[:, 5:6], xywh, o[:, 4:5]), 1))
    return torch.cat(rows, 0) if rows else torch.zeros((0, 7))
