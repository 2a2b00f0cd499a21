"""YOLO-format detection dataset and its DataLoader.

Images under ``.../images/...`` pair with labels under ``.../labels/...`` (``.txt``, one
``cls cx cy w h`` row per object, normalised). Bad images and label rows are skipped and reported
once per dataset (see :mod:`sparseyolo.data.labels`).

Reproducibility: a training loader's order and every augmented sample's randomness depend only on
``(seed, epoch, index)`` (:class:`EpochSampler`), never on which worker ran the sample or on what the
workers did in earlier epochs, so a resumed run (fresh workers) sees exactly the batches an
uninterrupted one (persistent workers) saw, with any ``--workers``.

An image that cannot be read any more during training (e.g. truncated after the label scan) is
replaced by the next readable one; its path travels to the main process in the batch
(:attr:`Batch.skipped`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, distributed

from sparseyolo.data.augment import (
    augment_hsv,
    letterbox,
    mixup,
    mosaic4,
    random_flips,
    random_perspective,
    xywhn_to_xyxy,
)
from sparseyolo.data.image_cache import ImageCache
from sparseyolo.data.labels import Problems, cache_path_for, img2label_paths, list_images, scan_labels
from sparseyolo.data.sampling import EpochSampler, seed_worker, seeded
from sparseyolo.utils.errors import ConfigError, DataError
from sparseyolo.utils.logging import LOGGER

# YOLOv5 hyp.scratch augmentation values, used for any key the caller's hyp leaves out
AUGMENT_DEFAULTS = {
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
}


def _source_name(path) -> str:
    return ", ".join(map(str, path)) if isinstance(path, (list, tuple)) else str(path)


class YoloDataset(Dataset):
    """Images + YOLO labels, letterboxed to ``img_size`` (or per-batch rectangles with ``rect``).

    ``__getitem__`` returns ``(img, labels, path, shapes)``: ``img`` uint8 (3, H, W) RGB,
    ``labels`` float (n, 6) rows ``[0, cls, cx, cy, w, h]`` normalised to the returned image,
    ``shapes = ((h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)))`` mapping the returned image back to
    the original (None for mosaic samples, which have no single original).

    Attributes: ``im_files``, ``label_files``, ``labels`` (list of (n, 5) ``[cls, cx, cy, w, h]``
    arrays), ``shapes`` ((n, 2) original width, height), ``batch_shapes`` ((nb, 2) h, w with ``rect``).
    ``nc`` (optional) rejects label rows whose class id is >= nc.
    """

    def __init__(
        self,
        path,
        img_size: int = 640,
        batch_size: int = 16,
        augment: bool = False,
        hyp: dict | None = None,
        rect: bool = False,
        cache: str | bool | None = None,
        stride: int = 32,
        pad: float = 0.0,
        prefix: str = "",
        nc: int | None = None,
        workers: int = 4,
    ):
        # checked before the label scan: a zero size or batch only fails much later, deep in numpy / OpenCV
        if int(img_size) < 1 or int(batch_size) < 1:
            raise ConfigError(
                f"{prefix}image size (--img) and batch size (--batch-size) must be >= 1, got "
                f"{img_size} and {batch_size}"
            )
        self.path, self.img_size, self.augment, self.rect, self.stride = path, img_size, augment, rect, stride
        self.hyp = {**AUGMENT_DEFAULTS, **(hyp or {})}
        self.prefix = prefix
        self.problems = Problems()
        im_files = list_images(path, self.problems)
        label_files = img2label_paths(im_files)
        entries, from_cache = scan_labels(
            im_files, label_files, prefix, workers, cache_file=cache_path_for(path, label_files)
        )
        self._collect(im_files, label_files, entries, nc)
        if self.problems:
            LOGGER.warning(f"{prefix}{_source_name(path)}: {self.problems.summary()}")
        if not self.im_files:
            raise DataError(
                f"{prefix}no usable images in {_source_name(path)}"
                + (f" ({self.problems.summary()})" if self.problems else "")
            )
        n_obj = sum(len(lb) for lb in self.labels)
        LOGGER.info(f"{prefix}{len(self.im_files)} images, {n_obj} objects" f"{' (label cache)' if from_cache else ''}")
        if rect:
            self._make_rect_batches(batch_size, pad)
        self.images = ImageCache(self.im_files, img_size, augment, cache, prefix)
        self._unreadable: set[int] = set()  # indices found unreadable while training (per process)
        self._skipped: list[str] = []  # paths replaced while making the current item

    def _collect(self, im_files: list[str], label_files: list[str], entries: dict, nc: int | None) -> None:
        self.im_files, self.label_files, self.labels, hw = [], [], [], []
        for im, lb in zip(im_files, label_files, strict=False):
            e = entries[im]
            self.problems.extend(e.get("problems", {}))
            if not e["ok"]:
                continue
            rows = np.array(e["labels"], dtype=np.float32).reshape(-1, 5)
            if nc is not None and len(rows) and rows[:, 0].max() >= nc:
                self.problems.add("class id >= nc", f"{Path(lb).name} (class {int(rows[:, 0].max())}, nc={nc})")
                continue
            self.im_files.append(im)
            self.label_files.append(lb)
            self.labels.append(rows)
            hw.append(e["shape"])
        hw = np.array(hw, dtype=np.float64).reshape(-1, 2)
        self.shapes = hw[:, ::-1].copy()  # (w, h) per image, as autoanchor-style code expects

    def _make_rect_batches(self, batch_size: int, pad: float) -> None:
        """Sort by aspect ratio and give each batch the smallest stride-multiple shape that fits."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort()
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes, ar = self.shapes[order], ar[order]
        self.batch = np.floor(np.arange(len(ar)) / batch_size).astype(int)
        nb = int(self.batch[-1]) + 1
        rel = np.ones((nb, 2))
        for i in range(nb):
            ari = ar[self.batch == i]
            if ari.max() < 1:  # all landscape: height shrinks
                rel[i] = [ari.max(), 1]
            elif ari.min() > 1:  # all portrait: width shrinks
                rel[i] = [1, 1 / ari.min()]
        self.batch_shapes = (np.ceil(rel * self.img_size / self.stride + pad) * self.stride).astype(int)

    def __len__(self) -> int:
        return len(self.im_files)

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """BGR image ``i`` resized so its long side is ``img_size``; returns (img, (h0, w0), (h, w))."""
        return self.images.get(i)

    def __getitem__(self, index):
        """``index`` is an int, or ``(index, seed)`` from :class:`EpochSampler`: then ``random`` and
        ``np.random`` are seeded with ``seed`` for this sample (and restored afterwards)."""
        if isinstance(index, (tuple, list)):
            index, seed = index
            with seeded(seed):
                return self._get(int(index))
        return self._get(int(index))

    def _get(self, index: int):
        hyp = self.hyp
        self._skipped = []
        if self.augment and not self.rect and random.random() < hyp["mosaic"]:  # rect keeps batch shapes
            img, labels, index = self._mosaic(index)
            shapes = None
            if random.random() < hyp["mixup"]:
                img, labels = mixup(img, labels, *self._mosaic(random.randrange(len(self)))[:2])
        else:
            # a replacement image keeps the batch shape of the one it replaces (rect batches)
            shape = tuple(self.batch_shapes[self.batch[index]]) if self.rect else self.img_size
            index, (img, (h0, w0), (h, w)) = self._load_readable(index)
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = ((h0, w0), ((h * ratio[1] / h0, w * ratio[0] / w0), pad))
            labels = self.labels[index].copy()
            if len(labels):
                labels[:, 1:] = xywhn_to_xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, pad[0], pad[1])
            if self.augment:
                img, labels = random_perspective(
                    img,
                    labels,
                    degrees=hyp["degrees"],
                    translate=hyp["translate"],
                    scale=hyp["scale"],
                    shear=hyp["shear"],
                    perspective=hyp["perspective"],
                )
        labels = _xyxy_to_xywhn(labels, img.shape[1], img.shape[0])
        if self.augment:
            img = augment_hsv(np.ascontiguousarray(img), hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
            img, labels = random_flips(img, labels, hyp["flipud"], hyp["fliplr"])
        out = torch.zeros((len(labels), 6))
        if len(labels):
            out[:, 1:] = torch.from_numpy(labels)
        img = np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        item = (torch.from_numpy(img), out, self.im_files[index], shapes)
        return _Sample(item, self._skipped) if self._skipped else item

    def _load_readable(self, index: int) -> tuple[int, tuple]:
        """``(i, load_image(i))`` for ``index`` or, when that image cannot be read any more, the next
        readable one (deterministic: the same replacement in every worker and every run). Unreadable
        paths are added to ``self._skipped`` each time they are met, and remembered so they are not
        decoded again."""
        bad, n = self._unreadable, len(self)
        for k in range(n):
            i = (index + k) % n
            if i not in bad:
                try:
                    return i, self.load_image(i)
                except (DataError, OSError, EOFError, ValueError, cv2.error):
                    bad.add(i)
            self._skipped.append(self.im_files[i])
        raise DataError(f"{self.prefix}none of the {n} images of {_source_name(self.path)} can be read any more")

    def _mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        indices = [index] + random.choices(range(len(self)), k=3)
        random.shuffle(indices)
        loaded = [self._load_readable(i) for i in indices]
        img, labels = mosaic4(
            lambda k: loaded[k][1][0], lambda k: self.labels[loaded[k][0]], [0, 1, 2, 3], self.img_size, self.hyp
        )
        return img, labels, loaded[indices.index(index)][0]

    @staticmethod
    def collate_fn(batch) -> Batch:
        """Stack images; concatenate labels with column 0 set to the image's index in the batch.
        The paths of images replaced because they could not be read ride along as ``.skipped``."""
        skipped = tuple(p for item in batch for p in getattr(item, "skipped", ()))
        imgs, labels, paths, shapes = zip(*batch, strict=False)
        for i, lb in enumerate(labels):
            lb[:, 0] = i
        return Batch((torch.stack(imgs, 0), torch.cat(labels, 0), paths, shapes), skipped)


class _Sample(tuple):
    """A dataset item ``(img, labels, path, shapes)`` that stands in for unreadable image(s) ``skipped``."""

    def __new__(cls, item, skipped):
        self = super().__new__(cls, item)
        self.skipped = tuple(skipped)
        return self

    def __reduce__(self):
        return _Sample, (tuple(self), self.skipped)


class Batch(tuple):
    """``(imgs, targets, paths, shapes)`` as before, plus ``skipped``: the paths of images that could not
    be read while this batch was made (each replaced by the next readable image). It crosses from the
    DataLoader workers to the main process with the batch, so nothing is lost between processes."""

    def __new__(cls, items, skipped=()):
        self = super().__new__(cls, items)
        self.skipped = tuple(skipped)
        return self

    def __reduce__(self):
        return Batch, (tuple(self), self.skipped)

    def pin_memory(self) -> Batch:  # DataLoader(pin_memory=True) would otherwise drop ``skipped``
        from torch.utils.data._utils.pin_memory import pin_memory

        return Batch(tuple(pin_memory(x) for x in self), self.skipped)


def _xyxy_to_xywhn(labels: np.ndarray, w: int, h: int) -> np.ndarray:
    """``[cls, x1, y1, x2, y2]`` pixels -> ``[cls, cx, cy, w, h]`` normalised, clipped to the image."""
    labels = np.asarray(labels, dtype=np.float32).reshape(-1, 5).copy()
    if not len(labels):
        return labels
    x1, x2 = labels[:, 1].clip(0, w), labels[:, 3].clip(0, w)
    y1, y2 = labels[:, 2].clip(0, h), labels[:, 4].clip(0, h)
    labels[:, 1], labels[:, 2] = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
    labels[:, 3], labels[:, 4] = (x2 - x1) / w, (y2 - y1) / h
    return labels[(labels[:, 3] > 0) & (labels[:, 4] > 0)]


def create_dataloader(
    path,
    img_size: int,
    batch_size: int,
    stride: int,
    hyp: dict | None = None,
    augment: bool = False,
    rect: bool = False,
    cache: str | bool | None = None,
    workers: int = 8,
    shuffle: bool = False,
    rank: int = -1,
    seed: int = 0,
    prefix: str = "",
    nc: int | None = None,
    pad: float = 0.0,
) -> tuple[DataLoader, YoloDataset]:
    """Build a :class:`YoloDataset` and its DataLoader (DistributedSampler when ``rank != -1``).

    ``workers`` is capped at the CPU count; ``seed`` makes shuffles and augmentations reproducible:
    with ``shuffle`` or ``augment`` the sampler is an :class:`EpochSampler` (call its ``set_epoch``),
    so epoch ``e`` gives the same batches whatever the worker count and whatever ran before it.
    """
    if rect and shuffle:
        LOGGER.warning(f"{prefix}rect=True sorts images by aspect ratio; shuffle=True ignored")
        shuffle = False
    dataset = YoloDataset(
        path,
        img_size,
        batch_size,
        augment=augment,
        hyp=hyp,
        rect=rect,
        cache=cache,
        stride=stride,
        pad=pad,
        prefix=prefix,
        nc=nc,
        workers=workers,
    )
    batch_size = min(batch_size, len(dataset))
    world = 1
    if rank != -1:
        world = (
            torch.distributed.get_world_size()
            if torch.distributed.is_initialized()
            else int(os.environ.get("WORLD_SIZE", 1))
        )
    nw = min(os.cpu_count() or 1, max(0, workers), batch_size if batch_size > 1 else 0)
    nw = min(nw, max(1, (os.cpu_count() or 1) // world)) if nw else 0
    sampler = (
        None
        if rank == -1
        else distributed.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
    )
    if shuffle or augment:
        sampler = EpochSampler(len(dataset), shuffle, seed, seeds=augment, base=sampler)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=nw,
        pin_memory=torch.cuda.is_available(),
        collate_fn=YoloDataset.collate_fn,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=nw > 0,
    )
    return loader, dataset


def shared_images(a: Sequence[str | Path], b: Sequence[str | Path]) -> list[str]:
    """Image files in both lists (symlinks resolved): a validation set that overlaps training."""
    resolved = {os.path.realpath(f) for f in a}
    return sorted(str(f) for f in b if os.path.realpath(f) in resolved)
