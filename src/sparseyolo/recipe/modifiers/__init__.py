"""All recipe modifiers; importing this package fills the ``MODIFIERS`` registry."""

from sparseyolo.recipe.modifiers.base import LOGGING_KEYS, MODIFIERS, REQUIRED, Modifier, register
from sparseyolo.recipe.modifiers.distillation import DistillationModifier
from sparseyolo.recipe.modifiers.pruning import (
    ConstantPruningModifier,
    GlobalMagnitudePruningModifier,
    GMPruningModifier,
    MagnitudePruningModifier,
    PruningBase,
)
from sparseyolo.recipe.modifiers.quantization import QuantizationModifier
from sparseyolo.recipe.modifiers.structured import (
    BatchNormL1Modifier,
    LayerThinningModifier,
    StructuredPruningModifier,
)
from sparseyolo.recipe.modifiers.training import (
    EpochRangeModifier,
    LearningRateFunctionModifier,
    LearningRateModifier,
    LRModifier,
    SetLearningRateModifier,
    SetWeightDecayModifier,
)

__all__ = [
    "LOGGING_KEYS",
    "MODIFIERS",
    "REQUIRED",
    "Modifier",
    "register",
    "ConstantPruningModifier",
    "DistillationModifier",
    "GlobalMagnitudePruningModifier",
    "GMPruningModifier",
    "MagnitudePruningModifier",
    "PruningBase",
    "QuantizationModifier",
    "EpochRangeModifier",
    "LearningRateFunctionModifier",
    "LearningRateModifier",
    "LRModifier",
    "SetLearningRateModifier",
    "SetWeightDecayModifier",
    "StructuredPruningModifier",
    "LayerThinningModifier",
    "BatchNormL1Modifier",
]
