"""COCO JSON for detections (``predictions.json``) and, for cross-checks, for YOLO ground truth.

Category ids: the 80-class COCO label set (class ids 0..79 in the usual order) is written with
the official 91-id COCO category ids (1..90 with gaps), so ``predictions.json`` can be scored
against ``instances_val2017.json`` directly. Any other dataset uses ``start .. start + nc - 1``
(``start`` = 0 by default, 1 when you want COCO-like 1-based ids). ``coco91=None`` means "auto":
on when ``nc == 80``.

``image_id`` is the image file stem, as an int when it is numeric (``000000000139.jpg`` -> 139),
else the stem string.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from sparseyolo.utils.io import atomic_write_text

# COCO category ids that are not used by any of the 80 detection classes
_COCO91_UNUSED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO80_TO_91: list[int] = [i for i in range(1, 91) if i not in _COCO91_UNUSED]


def category_ids(nc: int, coco91: bool | None = None, start: int = 0) -> list[int]:
    """The JSON category id of each class index 0..nc-1 (see the module docstring)."""
    if coco91 is None:
        coco91 = nc == 80
    if coco91:
        if nc != 80:
            raise ValueError(f"the COCO 91-id mapping needs 80 classes, got {nc}")
        return list(COCO80_TO_91)
    return list(range(start, start + nc))


def image_id_from_path(path: str | Path) -> int | str:
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def detections_to_coco(path: str | Path, det: torch.Tensor | np.ndarray, cat_ids: Sequence[int]) -> list[dict]:
    """Rows ``x1, y1, x2, y2, score, cls`` in original-image pixels -> COCO result dicts."""
    det = det.detach().cpu().numpy() if isinstance(det, torch.Tensor) else np.asarray(det)
    image_id = image_id_from_path(path)
    out = []
    for x1, y1, x2, y2, score, cls in det[:, :6].tolist():
        out.append(
            {
                "image_id": image_id,
                "category_id": int(cat_ids[int(cls)]),
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(score, 5),
            }
        )
    return out


def save_json(records: list[dict], path: str | Path) -> Path:
    """Write a COCO results list atomically."""
    return atomic_write_text(path, json.dumps(records))


def ground_truth_to_coco(
    images: Iterable[tuple[str | Path, int, int, np.ndarray]], names: Sequence[str], cat_ids: Sequence[int]
) -> dict:
    """A COCO ground-truth dict from ``(path, width, height, labels)`` items, where ``labels``
    (m, 5) = cls, x1, y1, x2, y2 in pixels. ``area`` is the box area; nothing is crowd."""
    dataset = {
        "images": [],
        "annotations": [],
        "categories": [{"id": int(cat_ids[i]), "name": str(n)} for i, n in enumerate(names)],
    }
    ann_id = 1
    for path, w, h, labels in images:
        image_id = image_id_from_path(path)
        dataset["images"].append({"id": image_id, "width": int(w), "height": int(h), "file_name": Path(path).name})
        for cls, x1, y1, x2, y2 in np.asarray(labels, dtype=np.float64).reshape(-1, 5).tolist():
            bw, bh = x2 - x1, y2 - y1
            dataset["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": int(cat_ids[int(cls)]),
                    "bbox": [x1, y1, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    return dataset
