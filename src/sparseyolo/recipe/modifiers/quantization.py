"""``QuantizationModifier``: quantization-aware training from ``start_epoch`` on.

Keys (SparseML's): ``start_epoch``, ``end_epoch`` (must stay -1: QAT cannot be undone),
``submodules`` (module names to quantize; all when omitted), ``model_fuse_fn_name``
(``conv_bn_relus`` default or ``no_fuse``; SparseML's third form, the name of a model method to call,
is refused: a recipe must not choose which code runs),
``freeze_bn_stats_epoch``, ``disable_quantization_observer_epoch`` (-1/absent = never),
``quantize_conv_activations``, ``quantize_linear_activations``, ``activation_bits``,
``weight_bits``, ``reduce_range``, ``exclude_module_types``, ``custom_quantizable_module_types``,
``exclude_batchnorm``, ``tensorrt``; and one of ours, ``per_channel`` (one weight scale per output
channel; SparseML's modifier had it only through ``tensorrt``). The work is done by
:mod:`sparseyolo.quantization`.
"""

from __future__ import annotations

import difflib
from types import ModuleType
from typing import TYPE_CHECKING, Any

import sparseyolo.quantization as _quantization
from sparseyolo.quantization.config import FUSE_MODES
from sparseyolo.recipe.modifiers.base import EPS, Modifier, register
from sparseyolo.utils.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from sparseyolo.recipe.manager import RecipeManager


def quantization_api() -> ModuleType:
    """:mod:`sparseyolo.quantization` (a plain import: a build without it fails at import, loudly)."""
    return _quantization


@register
class QuantizationModifier(Modifier):
    tag = "QuantizationModifier"
    ORDER = 40
    FIELDS = {
        "start_epoch": -1.0,
        "end_epoch": -1.0,
        "submodules": None,
        "model_fuse_fn_name": None,
        "freeze_bn_stats_epoch": None,
        "disable_quantization_observer_epoch": None,
        "quantize_conv_activations": True,
        "quantize_linear_activations": True,
        "activation_bits": 8,
        "weight_bits": 8,
        "reduce_range": False,
        "exclude_module_types": None,
        "custom_quantizable_module_types": None,
        "exclude_batchnorm": True,
        "tensorrt": False,
        "per_channel": False,
    }
    EPOCH_KEYS = ("start_epoch", "end_epoch", "freeze_bn_stats_epoch", "disable_quantization_observer_epoch")
    BOOLS = (
        "quantize_conv_activations",
        "quantize_linear_activations",
        "reduce_range",
        "exclude_batchnorm",
        "tensorrt",
        "per_channel",
    )

    def validate(self) -> None:
        super().validate()
        if self.end_epoch >= 0:
            raise self.error("end_epoch must be -1 (quantization-aware training cannot be turned off)")
        for key in self.BOOLS:
            if not isinstance(getattr(self, key), bool):
                raise self.error(f"{key} must be true or false, got {getattr(self, key)!r}")
        for key in ("activation_bits", "weight_bits"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
                raise self.error(f"{key} must be an integer in [2, 8], got {v!r}")
        for key in ("freeze_bn_stats_epoch", "disable_quantization_observer_epoch"):
            v = getattr(self, key)
            if v is not None:
                v = self._number(key, v)
                setattr(self, key, None if v < 0 else v)
        if self.submodules is not None and (
            not isinstance(self.submodules, list) or not all(isinstance(s, str) for s in self.submodules)
        ):
            raise self.error(f"submodules must be a list of module names, got {self.submodules!r}")
        for key in ("exclude_module_types", "custom_quantizable_module_types"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, list) or not all(isinstance(s, str) for s in v)):
                raise self.error(f"{key} must be a list of module type names, got {v!r}")
        if self.model_fuse_fn_name is not None and self.model_fuse_fn_name not in FUSE_MODES:
            shown = repr(self.model_fuse_fn_name)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ConfigError(
                f"{self.where_key('model_fuse_fn_name')}: !{self.tag}: model_fuse_fn_name must be "
                f"one of {', '.join(repr(m) for m in FUSE_MODES)}, got {shown} (naming a model "
                f"method is not supported)"
            )
        self.bn_frozen = False
        self.observers_disabled = False

    @property
    def last_epoch(self) -> float:
        return max(
            self.start_epoch, self.freeze_bn_stats_epoch or 0.0, self.disable_quantization_observer_epoch or 0.0, 0.0
        )

    def config_dict(self) -> dict[str, Any]:
        """Keyword arguments for ``QATConfig`` (JSON-able; stored in the manager state)."""
        return {
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "reduce_range": self.reduce_range,
            "quantize_conv_activations": self.quantize_conv_activations,
            "quantize_linear_activations": self.quantize_linear_activations,
            "exclude_module_types": tuple(self.exclude_module_types or ()),
            "custom_quantizable_module_types": tuple(self.custom_quantizable_module_types or ()),
            "exclude_batchnorm": self.exclude_batchnorm,
            "tensorrt": self.tensorrt,
            "per_channel": self.per_channel,  # (QATConfig turns it on for tensorrt)
            "fuse": self.model_fuse_fn_name or "conv_bn_relus",
        }

    def on_attach(self, manager: RecipeManager) -> None:
        if self.submodules:
            names = [n for n, _ in manager.model.named_modules() if n]
            known = set(names)
            for sub in self.submodules:
                if sub not in known:
                    close = difflib.get_close_matches(sub, names, n=5, cutoff=0.5)
                    hint = f"; closest modules: {', '.join(close)}" if close else ""
                    raise ConfigError(
                        f"{self.where_key('submodules')}: !{self.tag}: submodules entry {sub!r} matches no "
                        f"module of the model{hint}"
                    )

    def on_start(self, manager: RecipeManager, epoch: float) -> None:
        api = quantization_api()
        if not api.is_qat_model(manager.model):
            config = self.config_dict()
            api.prepare_qat(manager.model, submodules=self.submodules, config=api.QATConfig(**config))
        manager.record_qat(self.submodules, self.config_dict())

    def on_update(self, manager: RecipeManager, epoch: float) -> None:
        api = None
        if self.freeze_bn_stats_epoch is not None and not self.bn_frozen and epoch + EPS >= self.freeze_bn_stats_epoch:
            api = api or quantization_api()
            api.freeze_bn_stats(manager.model)
            self.bn_frozen = True
        if (
            self.disable_quantization_observer_epoch is not None
            and not self.observers_disabled
            and epoch + EPS >= self.disable_quantization_observer_epoch
        ):
            api = api or quantization_api()
            api.disable_observers(manager.model)
            self.observers_disabled = True

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(bn_frozen=self.bn_frozen, observers_disabled=self.observers_disabled)
        return state

    def load_state_dict(self, state: dict[str, Any], manager: RecipeManager) -> None:
        super().load_state_dict(state, manager)
        if self.started:
            self.on_start(manager, manager.epoch)  # rebuilds the QAT structure if not there yet
            api = quantization_api()
            if state.get("bn_frozen"):
                api.freeze_bn_stats(manager.model)
            if state.get("observers_disabled"):
                api.disable_observers(manager.model)
        self.bn_frozen = bool(state.get("bn_frozen"))
        self.observers_disabled = bool(state.get("observers_disabled"))


def restore_qat_structure(model: nn.Module, recipe_state: dict[str, Any] | None) -> bool:
    """Re-apply the QAT structure recorded in a manager state (before loading QAT weights).

    Used by checkpoint loading: ``recipe_state["qat"] = {"submodules": [...], "config": {...}}``.
    Returns True when the model is (now) quantization-aware, False when the state has no QAT.
    """
    qat = (recipe_state or {}).get("qat")
    if not qat:
        return False
    api = quantization_api()
    if not api.is_qat_model(model):
        api.prepare_qat(model, submodules=qat.get("submodules"), config=api.QATConfig(**qat.get("config", {})))
    return True
