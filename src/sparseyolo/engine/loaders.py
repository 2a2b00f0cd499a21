"""The training and validation loaders of a run, built from its data YAML."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparseyolo.utils.errors import DataError, where
from sparseyolo.utils.logging import LOGGER


@contextlib.contextmanager
def _data_key(data_yaml: str, split: str) -> Iterator[None]:
    """Prefix dataset errors with the data YAML and key they came from (the loader only knows the path)."""
    try:
        yield
    except DataError as e:
        raise DataError(f"{where(data_yaml, key=split)}: {e}") from None


def build_loaders(cfg: Any, data: dict, img_size: int, stride: int, hyp: dict, dist: Any) -> tuple[Any, Any, Any]:
    """``(train_loader, train_dataset, val_loader)``; the val loader only on rank 0 (None without a
    ``val`` split). Warns when val images are also training images."""
    from sparseyolo.data.dataset import create_dataloader, shared_images

    if not data.get("train"):
        raise DataError(f"{cfg.data}: no 'train' images given")
    batch = max(cfg.batch_size // dist.world_size, 1)
    common = dict(hyp=hyp, cache=cfg.cache, workers=cfg.workers, seed=cfg.seed, nc=int(data["nc"]))
    with _data_key(cfg.data, "train"):
        train_loader, train_dataset = create_dataloader(
            data["train"],
            img_size,
            batch,
            stride,
            augment=True,
            shuffle=True,
            rank=dist.rank,
            prefix="train: ",
            **common,
        )
    if len(train_dataset) == 0:
        raise DataError(f"{cfg.data}: the training set {data['train']} has no usable images")
    val_loader = None
    if dist.main and data.get("val"):
        with _data_key(cfg.data, "val"):
            val_loader, val_dataset = create_dataloader(
                data["val"],
                img_size,
                batch * 2,
                stride,
                augment=False,
                rect=True,
                shuffle=False,
                rank=-1,
                prefix="val: ",
                pad=0.5,
                **common,
            )
        both = shared_images(train_dataset.im_files, val_dataset.im_files)
        if both:
            LOGGER.warning(
                f"WARNING: {len(both)} of the {len(val_dataset.im_files)} val images are also training images "
                f"(e.g. {Path(both[0]).name}): val metrics will overstate accuracy. Hold images out, e.g. "
                "`sparseyolo data voc2yolo ... --val-fraction 0.2`"
            )
    elif dist.main:
        LOGGER.warning(f"{cfg.data}: no 'val' set; metrics will be empty and best.pt follows last.pt")
    return train_loader, train_dataset, val_loader
