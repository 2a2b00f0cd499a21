"""Evaluation: COCO-style matching and AP / mAP (``metrics``), COCO JSON (``coco``), plots (``plots``)."""

from sparseyolo.evaluation.metrics import (
    IOU_THRESHOLDS,
    APResult,
    ConfusionMatrix,
    ap_per_class,
    coco_ap,
    fitness,
    match_predictions,
)

__all__ = ["IOU_THRESHOLDS", "APResult", "ConfusionMatrix", "ap_per_class", "coco_ap", "fitness", "match_predictions"]
