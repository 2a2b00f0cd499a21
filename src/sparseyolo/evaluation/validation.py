"""The validation loop: forward, NMS, COCO-style matching, mAP table, plots and COCO JSON.

``validate`` is called by the trainer every epoch (with a model and its val loader) and by
``sparseyolo val`` through :func:`sparseyolo.runtime.val.run` (with weights, a data YAML, or an
``.onnx`` file behind a runtime backend).
Boxes are matched in original-image pixels, as COCO evaluation does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sparseyolo.evaluation.backend import Backend, TorchBackend, postprocess
from sparseyolo.evaluation.coco import category_ids, detections_to_coco, ground_truth_to_coco
from sparseyolo.evaluation.coco import save_json as write_json
from sparseyolo.evaluation.metrics import IOU_THRESHOLDS, ConfusionMatrix, ap_per_class, fitness, match_predictions
from sparseyolo.evaluation.plots import output_to_target, plot_images
from sparseyolo.utils.boxes import clip_boxes, xywh2xyxy, xyxy2xywhn
from sparseyolo.utils.io import atomic_write_text
from sparseyolo.utils.logging import LOGGER

HEADER = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"


def _row(name: str, images: int, instances: int, p: float, r: float, m50: float, m: float) -> str:
    return f"{name:>22}{images:>11d}{instances:>11d}{p:>11.3g}{r:>11.3g}{m50:>11.3g}{m:>11.3g}"


def to_original(boxes: torch.Tensor, ratio_pad: Any, shape0: tuple[int, int]) -> torch.Tensor:
    """Letterboxed xyxy pixels -> original-image pixels, in place, clipped.

    Uses the per-axis ratios ``((ratio_h, ratio_w), (pad_w, pad_h))``: with rounding of the resized
    size they differ slightly, and one shared gain would shift boxes by up to ~1 % on long sides.
    """
    (rh, rw), (pw, ph) = ratio_pad
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pw) / rw
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - ph) / rh
    return clip_boxes(boxes, shape0)


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _Accumulator:
    """Per-image matching results and extras (confusion matrix, JSON records, txt labels)."""

    def __init__(
        self,
        nc: int,
        names: Sequence[str],
        save_dir: Path | None,
        save_json: bool,
        save_txt: bool,
        save_conf: bool,
        coco91: bool | None,
    ):
        self.stats: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.confusion = ConfusionMatrix(nc)
        self.cat_ids = category_ids(nc, coco91)
        self.names, self.save_dir = names, save_dir
        self.save_json, self.save_txt, self.save_conf = save_json, save_txt, save_conf
        self.records: list[dict] = []
        self.gt_images: list[tuple[str, int, int, np.ndarray]] = []
        self.images_per_class = np.zeros(nc, dtype=np.int64)

    def add(self, det: torch.Tensor, labels: torch.Tensor, path: str, img_hw: tuple[int, int], shape: Any) -> None:
        """``det`` NMS rows in letterboxed pixels; ``labels`` (m, 5) cls + normalised xywh."""
        (h0, w0), ratio_pad = shape
        predn = det.detach().float().cpu().clone()
        to_original(predn, ratio_pad, (h0, w0))
        h, w = img_hw
        tbox = xywh2xyxy(labels[:, 1:5].float().cpu()) * torch.tensor([w, h, w, h], dtype=torch.float32)
        to_original(tbox, ratio_pad, (h0, w0))
        labelsn = torch.cat((labels[:, :1].float().cpu(), tbox), 1)
        tcls = labelsn[:, 0].numpy()
        present = np.unique(tcls.astype(int))
        self.images_per_class[present[present < len(self.images_per_class)]] += 1
        correct = match_predictions(predn, labelsn, IOU_THRESHOLDS)
        self.stats.append((correct, predn[:, 4].numpy(), predn[:, 5].numpy(), tcls))
        self.confusion.process_batch(predn, labelsn)
        if self.save_json:
            self.records += detections_to_coco(path, predn, self.cat_ids)
            self.gt_images.append((path, w0, h0, labelsn.numpy()))
        if self.save_txt and self.save_dir is not None:
            xywhn = xyxy2xywhn(predn[:, :4], w=w0, h=h0)
            lines = []
            for (cx, cy, bw, bh), conf, c in zip(
                xywhn.tolist(), predn[:, 4].tolist(), predn[:, 5].tolist(), strict=False
            ):
                extra = f" {conf:.5f}" if self.save_conf else ""
                lines.append(f"{int(c)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}{extra}")
            atomic_write_text(
                self.save_dir / "labels" / f"{Path(path).stem}.txt", "\n".join(lines) + ("\n" if lines else "")
            )


def _coco_cross_check(acc: _Accumulator) -> dict[str, float]:
    """Score the JSON records with faster-coco-eval against the labels (when it is installed)."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        LOGGER.info("faster-coco-eval not installed; predictions.json written but not scored")
        return {}
    if not acc.records:
        return {}
    gt = COCO(ground_truth_to_coco(acc.gt_images, acc.names, acc.cat_ids))
    ev = COCOeval_faster(gt, gt.loadRes(acc.records), iouType="bbox", print_function=LOGGER.info)
    ev.params.maxDets = [1, 10, max(100, max(len(s[1]) for s in acc.stats))]  # our max_det, not 100
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"coco/mAP50": float(ev.stats[1]), "coco/mAP50-95": float(ev.stats[0])}


@torch.no_grad()
def validate(
    model: nn.Module | Backend,
    dataloader: Iterable,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    names: Sequence[str] | None = None,
    save_dir: str | Path | None = None,
    plots: bool = False,
    save_json: bool = False,
    compute_loss: Callable | None = None,
    half: bool = False,
    verbose: bool = False,
    single_cls: bool = False,
    save_txt: bool = False,
    save_conf: bool = False,
    agnostic: bool = False,
    multi_label: bool = True,
    coco91: bool | None = None,
    device: str | torch.device | None = None,
    desc: str = "val",
) -> tuple[dict, np.ndarray]:
    """Evaluate ``model`` on ``dataloader`` batches ``(imgs uint8, targets, paths, shapes)``.

    Returns ``(metrics, maps)``: ``metrics`` has ``precision``, ``recall``, ``mAP50``, ``mAP50-95``,
    ``fitness``, ``ap50_per_class`` / ``ap_per_class`` (name -> AP), ``speed`` (ms per image for
    ``preprocess`` / ``inference`` / ``nms``), ``box_loss`` / ``obj_loss`` / ``cls_loss`` when
    ``compute_loss`` is given, and ``coco/*`` numbers when ``save_json``. ``maps`` (nc,) holds each
    class's mAP50-95, with the overall mAP50-95 for classes absent from the data (YOLOv5 convention).
    """
    args = (dataloader, conf_thres, iou_thres, max_det, names, save_dir, plots, save_json, compute_loss, verbose)
    args += (single_cls, save_txt, save_conf, agnostic, multi_label, coco91, desc)
    if isinstance(model, Backend):
        return _validate(model, *args)
    with _module_backend(model, device, half) as backend:
        return _validate(backend, *args)


@contextlib.contextmanager
def _module_backend(model: nn.Module, device: str | torch.device | None, half: bool) -> Iterator[TorchBackend]:
    """A training model behind the backend interface; its mode, precision and head flag are left as
    they were found."""
    was_training, raw_flag = model.training, getattr(model, "export_raw", None)
    dtype = next(model.parameters()).dtype
    dev = device if device is not None else next(model.parameters()).device
    try:
        yield TorchBackend(model, dev, half)
    finally:
        if next(model.parameters()).dtype != dtype:
            model.to(dtype)
        model.train(was_training)
        if raw_flag is not None:
            model.export_raw = raw_flag


def _validate(
    backend: Backend,
    dataloader: Iterable,
    conf_thres: float,
    iou_thres: float,
    max_det: int,
    names: Sequence[str] | None,
    save_dir: str | Path | None,
    plots: bool,
    save_json: bool,
    compute_loss: Callable | None,
    verbose: bool,
    single_cls: bool,
    save_txt: bool,
    save_conf: bool,
    agnostic: bool,
    multi_label: bool,
    coco91: bool | None,
    desc: str,
) -> tuple[dict, np.ndarray]:
    names = list(names if names is not None else backend.names)
    nc = 1 if single_cls else len(names)
    if single_cls:
        names = names if len(names) == 1 else ["item"]
    save_dir = Path(save_dir) if save_dir is not None else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    acc = _Accumulator(nc, names, save_dir, save_json, save_txt, save_conf, coco91)
    dt, seen = [0.0, 0.0, 0.0], 0
    loss = torch.zeros(3)
    want_loss = compute_loss is not None and isinstance(backend, TorchBackend)
    pbar = tqdm(dataloader, desc=f"{desc:>22}", bar_format="{l_bar}{bar:10}{r_bar}", leave=False)
    for bi, (imgs, targets, paths, shapes) in enumerate(pbar):
        t0 = _sync(backend.device)
        x = backend.preprocess(imgs)
        t1 = _sync(backend.device)
        if want_loss:
            out = backend.model(x)
            pred = out[0].float()
            loss += compute_loss([r.float() for r in out[1]], targets.to(backend.device))[1].cpu()
        else:
            pred = backend.forward(x)
        t2 = _sync(backend.device)
        out = postprocess(
            backend,
            pred,
            conf_thres,
            iou_thres,
            agnostic=agnostic or single_cls,
            max_det=max_det,
            multi_label=multi_label,
        )
        t3 = _sync(backend.device)
        dt[0] += t1 - t0
        dt[1] += t2 - t1
        dt[2] += t3 - t2
        targets = targets.cpu().float()
        if single_cls:
            targets[:, 1] = 0
        for si, det in enumerate(out):
            if single_cls:
                det[:, 5] = 0
            acc.add(det, targets[targets[:, 0] == si, 1:], paths[si], tuple(imgs.shape[2:]), shapes[si])
            seen += 1
        if plots and save_dir is not None and bi < 3:
            plot_images(imgs, targets, paths, save_dir / f"val_batch{bi}_labels.jpg", names)
            plot_images(imgs, output_to_target(out, max_det=30), paths, save_dir / f"val_batch{bi}_pred.jpg", names)
    pbar.close()
    return _summarise(
        acc,
        names,
        nc,
        seen,
        dt,
        loss / max(bi + 1, 1) if want_loss and seen else None,
        save_dir,
        plots,
        save_json,
        verbose,
    )


def _summarise(
    acc: _Accumulator,
    names: Sequence[str],
    nc: int,
    seen: int,
    dt: list[float],
    loss: torch.Tensor | None,
    save_dir: Path | None,
    plots: bool,
    save_json: bool,
    verbose: bool,
) -> tuple[dict, np.ndarray]:
    cat = (
        [np.concatenate(x, 0) for x in zip(*acc.stats, strict=False)]
        if acc.stats
        else [np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0)]
    )
    res = ap_per_class(*cat, plot=plots and save_dir is not None, save_dir=save_dir, names=names)
    mp, mr, map50, map5095 = res.mean_results()
    n_inst = np.bincount(cat[3].astype(int), minlength=nc)
    LOGGER.info(HEADER)
    LOGGER.info(_row("all", seen, int(n_inst.sum()), mp, mr, map50, map5095))
    if not len(cat[3]):
        LOGGER.warning("WARNING: no labels found in the validation set, metrics are 0")
    if verbose and nc > 1:
        for i, c in enumerate(res.classes):
            LOGGER.info(
                _row(
                    names[c] if c < len(names) else str(c),
                    int(acc.images_per_class[c]),
                    int(res.n_targets[i]),
                    res.p[i],
                    res.r[i],
                    res.ap50[i],
                    res.ap50_95[i],
                )
            )
    speed = {k: t / max(seen, 1) * 1e3 for k, t in zip(("preprocess", "inference", "nms"), dt, strict=False)}
    LOGGER.info(
        f"Speed: {speed['preprocess']:.1f}ms pre-process, {speed['inference']:.1f}ms inference, "
        f"{speed['nms']:.1f}ms NMS per image"
    )
    metrics: dict[str, Any] = {"precision": mp, "recall": mr, "mAP50": map50, "mAP50-95": map5095}
    metrics["fitness"] = fitness(metrics)
    metrics["ap50_per_class"] = {
        names[c]: float(a) for c, a in zip(res.classes, res.ap50, strict=False) if c < len(names)
    }
    metrics["ap_per_class"] = {
        names[c]: float(a) for c, a in zip(res.classes, res.ap50_95, strict=False) if c < len(names)
    }
    metrics["speed"] = speed
    if loss is not None:
        metrics.update({k: float(v) for k, v in zip(("box_loss", "obj_loss", "cls_loss"), loss, strict=False)})
    if plots and save_dir is not None:
        acc.confusion.plot(save_dir, names)
    if save_json and save_dir is not None:
        path = write_json(acc.records, save_dir / "predictions.json")
        LOGGER.info(f"Saved {len(acc.records)} detections to {path}")
        metrics.update(_coco_cross_check(acc))
    maps = np.full(nc, map5095)
    for c, a in zip(res.classes, res.ap50_95, strict=False):
        if c < nc:
            maps[c] = a
    return metrics, maps
