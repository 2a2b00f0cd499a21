"""Training: the trainer and its hooks, loss, EMA, optimiser, DDP, checkpoints, logging.

Heavy submodules load lazily, so importing one piece does not pull in the trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "sparseyolo.engine.setup",
    "Trainer": "sparseyolo.engine.trainer",
    "train": "sparseyolo.engine.trainer",
    "NonFiniteLossError": "sparseyolo.engine.trainer",
    "TrainerBase": "sparseyolo.engine.base",
    "HookBase": "sparseyolo.engine.base",
    "YoloLoss": "sparseyolo.engine.loss",
    "ModelEMA": "sparseyolo.engine.ema",
    "load_hyp": "sparseyolo.engine.hyp",
    "HYP_KEYS": "sparseyolo.engine.hyp",
    "build_optimizer": "sparseyolo.engine.optim",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparseyolo.engine' has no attribute {name!r}")
