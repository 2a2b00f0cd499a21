"""Plots are written, decodable, and draw boxes where they should."""

import cv2
import numpy as np
import torch

from sparseyolo.evaluation.metrics import ConfusionMatrix, ap_per_class
from sparseyolo.evaluation.plots import (
    annotate_detections,
    class_color,
    output_to_target,
    plot_images,
    plot_labels,
    plot_results,
)


def _near(img, y, x, color, tol=60):
    """Some pixel within 1 px of (y, x) has roughly ``color`` (JPEG + anti-aliasing blur edges)."""
    patch = img[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).astype(int)
    return np.abs(patch - np.array(color)).max(1).min() < tol


def _read(path):
    img = cv2.imread(str(path))
    assert img is not None, path
    return img


def test_metric_curves_and_confusion_matrix(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    tp = rng.random((n, 10)) < np.linspace(0.8, 0.2, 10)
    res = ap_per_class(
        tp,
        rng.random(n),
        rng.integers(0, 3, n),
        rng.integers(0, 3, 150),
        plot=True,
        save_dir=tmp_path,
        names=["a", "b", "c"],
    )
    for f in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"):
        assert _read(tmp_path / f).shape[0] > 300
    cm = ConfusionMatrix(3)
    cm.process_batch(torch.tensor([[0, 0, 10, 10, 0.9, 1.0]]), torch.tensor([[1, 0, 0, 10, 10.0]]))
    assert _read(cm.plot(tmp_path, ["a", "b", "c"])).shape[0] > 300
    assert res.ap.shape == (3, 10)


def test_plot_results(tmp_path):
    csv = tmp_path / "results.csv"
    lines = ["epoch, train/box_loss, metrics/mAP50, metrics/mAP50-95, lr0"]
    lines += [f"{e}, {1 / (e + 1):.4f}, {e / 20:.3f}, {e / 40:.3f}, 0.01" for e in range(8)]
    csv.write_text("\n".join(lines) + "\n")
    out = plot_results(csv)
    assert out == tmp_path / "results.png"
    assert _read(out).shape[1] > 1000  # 4 panels side by side


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.concatenate([rng.integers(0, 4, (100, 1)), rng.random((100, 4)) * 0.5 + 0.1], 1)
    out = plot_labels(labels, ["a", "b", "c", "d"], tmp_path)
    assert out.name == "labels.jpg" and _read(out).shape[0] > 500


def test_plot_images_draws_labels_and_predictions(tmp_path):
    images = torch.zeros(4, 3, 64, 96, dtype=torch.uint8)
    # image 1: one label box of class 2 covering x 24..72, y 16..48 (normalised xywh)
    targets = torch.tensor([[1, 2, 0.5, 0.5, 0.5, 0.5]])
    out = plot_images(
        images, targets, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], tmp_path / "train_batch0.jpg", names=["x", "y", "z"]
    )
    m = _read(out)
    assert m.shape == (128, 192, 3)  # 2 x 2 tiles
    tile = m[:64, 96:]
    color = np.array(class_color(2))
    # the box's left edge (x=24) is drawn in the class colour, the centre stays black
    assert _near(tile, 40, 24, color)
    assert tile[32, 48].max() < 30
    # predictions in pixels with confidence; low-confidence ones are skipped
    dets = [torch.zeros(0, 6), torch.tensor([[10.0, 10, 30, 30, 0.9, 0], [40, 40, 60, 60, 0.1, 1]])]
    tg = output_to_target(dets)
    assert tg.shape == (2, 7) and tg[0].tolist() == [1, 0, 20, 20, 20, 20, 0.8999999761581421]
    m = _read(plot_images(torch.zeros(2, 3, 64, 64), tg, None, tmp_path / "val_batch0_pred.jpg"))
    assert _near(m, 20, 64 + 10, class_color(0), tol=100)  # thin red line, JPEG-blurred
    assert m[50, 64 + 40].max() < 30


def test_annotate_detections():
    img = np.zeros((100, 100, 3), np.uint8)
    annotate_detections(img, torch.tensor([[20.0, 30, 80, 90, 0.75, 1]]), ["cat", "dog"], 2)
    assert _near(img, 60, 20, class_color(1))
    assert img[60, 50].max() == 0
