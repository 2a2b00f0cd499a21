"""A detector's score on a small validation subset: what sensitivity analysis and recipe suggestion
compare pruned variants by."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.logging import LOGGER


def detection_scorer(
    data: str | Path, img: int, n_images: int, batch_size: int = 16, metric: str = "mAP50"
) -> Callable[[object], float]:
    """``score(model) -> metric`` on the first ``n_images`` of the data YAML's val split (evaluation.validation)."""
    import torch

    from sparseyolo.data.config import load_data_config
    from sparseyolo.data.dataset import create_dataloader
    from sparseyolo.evaluation.validation import validate

    cfg = load_data_config(data)
    if not cfg.get("val"):
        raise SparseYoloError(f"{data}: no 'val' split to score the sensitivity on")
    _, dataset = create_dataloader(
        cfg["val"],
        img,
        batch_size,
        stride=32,
        augment=False,
        rect=False,
        workers=0,
        shuffle=False,
        prefix="sensitivity: ",
    )
    n = min(int(n_images), len(dataset))
    if n <= 0:
        raise SparseYoloError(f"{data}: the val split has no images")
    subset = torch.utils.data.Subset(dataset, list(range(n)))
    loader = torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=type(dataset).collate_fn
    )
    names = cfg["names"]

    def score(model) -> float:
        level = LOGGER.level
        LOGGER.setLevel(logging.WARNING)  # one mAP table per pruned variant would bury the progress bar
        try:
            metrics, _ = validate(model, loader, names=names, desc="score")
        finally:
            LOGGER.setLevel(level)
        return float(metrics[metric])

    return score
