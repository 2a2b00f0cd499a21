"""YOLOv3-family models: YAML configs, builder, Detect head, Darknet import/export, checkpoints."""

from sparseyolo.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sparseyolo.models.common import SPP, Bottleneck, Concat, Conv
from sparseyolo.models.darknet import load_darknet_weights, save_darknet_weights
from sparseyolo.models.detect import Detect
from sparseyolo.models.parse import MODELS
from sparseyolo.models.weights import load_model, resolve_weights
from sparseyolo.models.yolo import DetectionModel, build_model, model_names

__all__ = [
    "Bottleneck",
    "Concat",
    "Conv",
    "Detect",
    "DetectionModel",
    "MODELS",
    "SPP",
    "build_model",
    "model_names",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "load_darknet_weights",
    "save_darknet_weights",
    "resolve_weights",
    "load_model",
]
