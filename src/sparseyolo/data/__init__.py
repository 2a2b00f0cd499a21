"""Datasets: data YAML files, YOLO-format datasets with label checks, augmentation, VOC conversion.

The main entry points are re-exported lazily (importing this package does not import torch)::

    from sparseyolo.data import load_data_config, YoloDataset, create_dataloader
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_data_config": "sparseyolo.data.config",
    "YoloDataset": "sparseyolo.data.dataset",
    "create_dataloader": "sparseyolo.data.dataset",
    "letterbox": "sparseyolo.data.augment",
    "convert_voc": "sparseyolo.data.voc",
    "VOC_NAMES": "sparseyolo.data.voc",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sparseyolo.data' has no attribute {name!r}")
