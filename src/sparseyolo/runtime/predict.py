"""Inference on image files: letterbox, forward, NMS, boxes back to the original image, then
annotated images, YOLO txt labels and COCO JSON (``sparseyolo detect``)."""

from __future__ import annotations

import glob
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from sparseyolo.evaluation.coco import category_ids, detections_to_coco, save_json
from sparseyolo.evaluation.plots import annotate_detections
from sparseyolo.runtime.backends import Backend, load_backend, postprocess, select_device
from sparseyolo.utils.boxes import clip_boxes, xyxy2xywhn
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.io import atomic_write_text, increment_path
from sparseyolo.utils.logging import LOGGER

IMG_FORMATS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"}


def list_sources(source: str | Path) -> list[Path]:
    """Image files named by a file, a folder (not recursive) or a glob pattern, sorted."""
    s = str(source)
    if any(ch in s for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(s, recursive=True))]
    elif Path(s).is_dir():
        files = sorted(Path(s).iterdir())
    elif Path(s).is_file():
        files = [Path(s)]
    else:
        raise SparseYoloError(f"--source {s}: no such file, folder or glob match")
    images = [f for f in files if f.is_file() and f.suffix[1:].lower() in IMG_FORMATS]
    if not images:
        raise SparseYoloError(f"--source {s}: no images found (supported: {', '.join(sorted(IMG_FORMATS))})")
    return images


@dataclass
class Prediction:
    path: Path
    det: torch.Tensor  # (n, 6) x1, y1, x2, y2, score, cls in original-image pixels
    shape: tuple[int, int]  # original (h, w)


def iter_letterboxed(
    files: Sequence[Path], img_size: int | tuple[int, int], stride: int, auto: bool
) -> Iterator[tuple[Path, np.ndarray | None, np.ndarray | None, tuple]]:
    """Yield ``(path, original BGR, letterboxed RGB CHW uint8, (ratio_w, ratio_h, pad_w, pad_h))``;
    unreadable images yield ``None`` arrays so the caller can report them."""
    from sparseyolo.data.augment import letterbox

    for f in files:
        img0 = cv2.imread(str(f))
        if img0 is None:
            yield f, None, None, ()
            continue
        img, (rw, rh), (pw, ph) = letterbox(img0, img_size, auto=auto, stride=stride)
        yield f, img0, np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)), (rw, rh, pw, ph)


def scale_to_original(det: torch.Tensor, ratio_pad: tuple, shape0: tuple[int, int]) -> torch.Tensor:
    """Letterboxed xyxy -> original pixels with the per-axis ratios, clipped (in place)."""
    rw, rh, pw, ph = ratio_pad
    det[:, [0, 2]] = (det[:, [0, 2]] - pw) / rw
    det[:, [1, 3]] = (det[:, [1, 3]] - ph) / rh
    clip_boxes(det[:, :4], shape0)
    return det


def _summary(det: torch.Tensor, names: Sequence[str]) -> str:
    if not len(det):
        return "no detections"
    classes, counts = det[:, 5].long().unique(return_counts=True)
    return ", ".join(
        f"{n} {names[c] if c < len(names) else c}{'s' * (n > 1)}"
        for c, n in zip(classes.tolist(), counts.tolist(), strict=False)
    )


def predict(
    backend: Backend,
    files: Sequence[Path],
    img_size: int = 416,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    max_det: int = 1000,
    classes: list[int] | None = None,
    agnostic_nms: bool = False,
    names: Sequence[str] | None = None,
    save_dir: Path | None = None,
    save_img: bool = True,
    save_txt: bool = False,
    save_conf: bool = False,
    save_json_file: bool = False,
    line_thickness: int | None = 3,
) -> list[Prediction]:
    """Detect objects in ``files`` with ``backend``; optionally write outputs into ``save_dir``."""
    names = list(names if names is not None else backend.names)
    # minimal stride-multiple padding when the model allows it; a runtime that compiles one size at a
    # time (DeepSparse on a dynamic-shape file) gets every image padded to the same square
    auto = backend.fixed_shape is None and not backend.static_shapes
    size = backend.fixed_shape or img_size
    results: list[Prediction] = []
    records: list[dict] = []
    cat_ids = category_ids(len(names)) if save_json_file else []
    bad: list[str] = []
    dt = [0.0, 0.0, 0.0]
    pbar = tqdm(
        iter_letterboxed(files, size, backend.stride, auto),
        total=len(files),
        desc="detect",
        bar_format="{l_bar}{bar:10}{r_bar}",
    )
    for path, img0, img, ratio_pad in pbar:
        if img0 is None:
            bad.append(path.name)
            LOGGER.warning(f"WARNING: skipping unreadable image {path}")
            continue
        t0 = time.perf_counter()
        x = backend.preprocess(torch.from_numpy(img)[None])
        t1 = time.perf_counter()
        pred = backend.forward(x)
        t2 = time.perf_counter()
        det = (
            postprocess(backend, pred, conf_thres, iou_thres, classes=classes, agnostic=agnostic_nms, max_det=max_det)[
                0
            ]
            .float()
            .cpu()
        )
        dt[0] += t1 - t0
        dt[1] += t2 - t1
        dt[2] += time.perf_counter() - t2
        scale_to_original(det, ratio_pad, img0.shape[:2])
        results.append(Prediction(path, det, img0.shape[:2]))
        pbar.set_postfix_str(f"{img.shape[1]}x{img.shape[2]} {_summary(det, names)}", refresh=False)
        LOGGER.debug(f"{path}: {_summary(det, names)}")
        if save_dir is None:
            continue
        if save_img:
            annotate_detections(img0, det, names, line_thickness)
            if not cv2.imwrite(str(save_dir / path.name), img0):
                LOGGER.warning(f"WARNING: could not write {save_dir / path.name}")
        if save_txt:
            _write_txt(save_dir / "labels" / f"{path.stem}.txt", det, img0.shape[:2], save_conf)
        if save_json_file:
            records += detections_to_coco(path, det, cat_ids)
    pbar.close()
    n = max(len(results), 1)
    LOGGER.info(
        f"Speed: {dt[0] / n * 1e3:.1f}ms pre-process, {dt[1] / n * 1e3:.1f}ms inference, "
        f"{dt[2] / n * 1e3:.1f}ms NMS per image"
    )
    if bad:
        LOGGER.warning(
            f"WARNING: {len(bad)} unreadable image(s) skipped: {', '.join(bad[:10])}"
            + (" ..." if len(bad) > 10 else "")
        )
    if save_dir is not None and save_json_file:
        save_json(records, save_dir / "predictions.json")
    return results


def _write_txt(path: Path, det: torch.Tensor, shape0: tuple[int, int], save_conf: bool) -> None:
    h0, w0 = shape0
    xywhn = xyxy2xywhn(det[:, :4], w=w0, h=h0)
    lines = []
    for (cx, cy, bw, bh), conf, c in zip(xywhn.tolist(), det[:, 4].tolist(), det[:, 5].tolist(), strict=False):
        lines.append(f"{int(c)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}" + (f" {conf:.5f}" if save_conf else ""))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def run(
    weights: str | Path,
    source: str | Path,
    img_size: int = 416,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    max_det: int = 1000,
    classes: list[int] | None = None,
    agnostic_nms: bool = False,
    save_txt: bool = False,
    save_conf: bool = False,
    save_json: bool = False,
    nosave: bool = False,
    line_thickness: int = 3,
    project: str | Path = "runs/detect",
    name: str = "exp",
    exist_ok: bool = False,
    device: str = "",
    cfg: str | None = None,
    half: bool = False,
    data: str | Path | None = None,
    engine: str | None = None,
    exact_file: bool = False,
) -> tuple[Path, list[Prediction]]:
    """``sparseyolo detect``: returns the run folder and the per-image predictions. ``engine`` /
    ``exact_file``: which runtime runs an ``.onnx`` file, and in which int8 form (see ``load_backend``)."""
    files = list_sources(source)
    if img_size < 1:
        raise SparseYoloError(f"--img must be a positive image size, got {img_size}")
    names = None
    if data is not None:
        from sparseyolo.data.config import load_data_config

        names = load_data_config(data)["names"]
    backend = load_backend(weights, select_device(device), half=half, cfg=cfg, engine=engine, exact_file=exact_file)
    with closing(backend):  # sessions, DeepSparse worker processes
        if names is not None and len(backend.names) and len(names) != len(backend.names):
            raise SparseYoloError(f"{weights} predicts {len(backend.names)} classes but {data} lists {len(names)}")
        if backend.fixed_shape is not None and max(backend.fixed_shape) != img_size:
            LOGGER.info(f"{Path(weights).name} has a fixed {backend.fixed_shape[0]}x{backend.fixed_shape[1]} input")
        if img_size % backend.stride:
            img_size = int(np.ceil(img_size / backend.stride) * backend.stride)
            LOGGER.warning(f"WARNING: image size rounded up to {img_size}, a multiple of the stride {backend.stride}")
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        if save_txt:
            (save_dir / "labels").mkdir(parents=True, exist_ok=True)
        results = predict(
            backend,
            files,
            img_size,
            conf_thres,
            iou_thres,
            max_det,
            classes,
            agnostic_nms,
            names,
            save_dir,
            save_img=not nosave,
            save_txt=save_txt,
            save_conf=save_conf,
            save_json_file=save_json,
            line_thickness=line_thickness,
        )
        n_det = sum(len(r.det) for r in results)
        LOGGER.info(f"{len(results)} images, {n_det} detections. Results saved to {save_dir}")
        return save_dir, results
