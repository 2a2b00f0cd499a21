"""Model-agnostic pruning: schedules, magnitude mask creators and mask enforcement."""

from sparseyolo.sparsity.masker import ParamMasker
from sparseyolo.sparsity.masks import MaskType, magnitude_masks, parse_mask_type, tensor_sparsity
from sparseyolo.sparsity.params import (
    ALL_PRUNABLE_TOKEN,
    PRUNABLE_TYPES,
    prunable_param_names,
    resolve_params,
)
from sparseyolo.sparsity.schedule import INTER_FUNCS, interpolate, schedule_progress

__all__ = [
    "ALL_PRUNABLE_TOKEN",
    "INTER_FUNCS",
    "MaskType",
    "PRUNABLE_TYPES",
    "ParamMasker",
    "interpolate",
    "magnitude_masks",
    "parse_mask_type",
    "prunable_param_names",
    "resolve_params",
    "schedule_progress",
    "tensor_sparsity",
]
