"""sparseyolo: train, sparsify, quantize, export and benchmark anchor-based YOLO detectors.

``sparseyolo.train / val / detect / export / benchmark`` mirror the CLI (see :mod:`sparseyolo.api`);
they load lazily, so ``import sparseyolo`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("train", "val", "detect", "export", "benchmark", "TrainResult", "Metrics", "ExportResult")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from sparseyolo import api

        return getattr(api, name)
    raise AttributeError(f"module 'sparseyolo' has no attribute {name!r}")
