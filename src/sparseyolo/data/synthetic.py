"""A small built-in detection dataset of coloured shapes, generated on the fly.

It lets the demo (and tests) run the whole pipeline on a fresh machine with no data supplied.
Three classes: ``square``, ``circle``, ``triangle``; boxes are exact because we draw the shapes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

SHAPES_NAMES = ["square", "circle", "triangle"]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour gradient plus noise, so the task is not trivially separable."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    img = (c0 * (1 - t) + c1 * t).repeat(size, 0)
    if rng.random() < 0.5:
        img = img.transpose(1, 0, 2)
    img = img + rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(img: np.ndarray, cls: int, cx: int, cy: int, r: int, color: tuple[int, int, int]):
    if cls == 0:
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
        return cx - r, cy - r, cx + r, cy + r
    if cls == 1:
        cv2.circle(img, (cx, cy), r, color, -1, lineType=cv2.LINE_AA)
        return cx - r, cy - r, cx + r, cy + r
    pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
    cv2.fillPoly(img, [pts], color, lineType=cv2.LINE_AA)
    return cx - r, cy - r, cx + r, cy + r


def _one_image(rng: np.random.Generator, size: int, max_objects: int):
    img = _background(rng, size)
    boxes: list[tuple[int, float, float, float, float]] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # place without overlap so every box is fully visible
            r = int(rng.integers(size // 16, size // 5))
            cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
            box = (cx - r, cy - r, cx + r, cy + r)
            if all(box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3] for t in taken):
                break
        else:
            continue
        cls = int(rng.integers(0, len(SHAPES_NAMES)))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        x1, y1, x2, y2 = _draw(img, cls, cx, cy, r, color)
        taken.append(box)
        boxes.append((cls, (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size))
    return img, boxes


def make_shapes_dataset(
    root: str | Path, n_train: int = 256, n_val: int = 64, img_size: int = 256, max_objects: int = 4, seed: int = 0
) -> Path:
    """Write ``root/images/{train,val}``, ``root/labels/{train,val}`` and ``root/shapes.yaml``.

    Returns the data YAML path. Existing complete datasets are reused.
    """
    root = Path(root)
    data_yaml = root / "shapes.yaml"
    if data_yaml.exists():
        return data_yaml
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, boxes = _one_image(rng, img_size, max_objects)
            stem = f"{split}_{i:05d}"
            cv2.imwrite(str(root / "images" / split / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in boxes]
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    cfg = {"path": str(root.resolve()), "train": "images/train", "val": "images/val", "names": list(SHAPES_NAMES)}
    data_yaml.write_text(yaml.safe_dump(cfg, sort_keys=False))  # written last: marks completion
    return data_yaml
