"""QAT configuration: which bits, which ranges, which modules (validated eagerly)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from sparseyolo.utils.errors import ConfigError

# The only fuse steps: a recipe or checkpoint names one of these, never a method of the model (a file
# must not choose which code runs when it is loaded).
FUSE_MODES = ("conv_bn_relus", "no_fuse")


@dataclass
class QATConfig:
    """Quantization-aware training settings (the keys of SparseML's ``QuantizationModifier``).

    - ``weight_bits`` / ``activation_bits``: 2..8. Weights are signed symmetric (zero point 0, so
      pruned zeros stay exactly zero); activations unsigned asymmetric unless ``tensorrt``.
    - ``reduce_range``: use one bit less (7-bit) for weights and activations, for hardware that
      accumulates in 16 bits.
    - ``per_channel``: one weight scale per output channel instead of one per tensor.
    - ``quantize_conv_activations`` / ``quantize_linear_activations``: also fake-quantize the inputs
      and outputs of convolutions / linear layers (weights are always quantized).
    - ``exclude_module_types``: class names that stay float (e.g. ``["LeakyReLU", "Upsample"]``).
    - ``custom_quantizable_module_types``: extra class names whose outputs get an activation quantizer.
    - ``exclude_batchnorm``: with ``fuse="no_fuse"``, no quantizer after a standalone BatchNorm.
    - ``tensorrt``: symmetric int8 activations and per-channel weights (TensorRT's scheme).
    - ``fuse``: ``"conv_bn_relus"`` folds Conv+BN(+act) for training, ``"no_fuse"`` quantizes the
      conv alone; nothing else is accepted (SparseML also allowed the name of a model method, which
      would let a recipe or checkpoint call any method of the model).
    """

    weight_bits: int = 8
    activation_bits: int = 8
    reduce_range: bool = False
    per_channel: bool = False
    quantize_conv_activations: bool = True
    quantize_linear_activations: bool = True
    exclude_module_types: tuple[str, ...] = ()
    custom_quantizable_module_types: tuple[str, ...] = ()
    exclude_batchnorm: bool = True
    tensorrt: bool = False
    fuse: str = "conv_bn_relus"
    averaging_constant: float = 0.01
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("weight_bits", "activation_bits"):
            bits = getattr(self, name)
            if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
                raise ConfigError(f"QATConfig: {name} must be an integer in 2..8, got {bits!r}")
        if not 0.0 < float(self.averaging_constant) <= 1.0:
            raise ConfigError(f"QATConfig: averaging_constant must be in (0, 1], got {self.averaging_constant!r}")
        check_fuse(self.fuse, "QATConfig: fuse")
        self.exclude_module_types = _names("exclude_module_types", self.exclude_module_types)
        self.custom_quantizable_module_types = _names(
            "custom_quantizable_module_types", self.custom_quantizable_module_types
        )
        if self.tensorrt:
            self.per_channel = True

    @property
    def symmetric_activations(self) -> bool:
        return bool(self.tensorrt)

    def weight_range(self) -> tuple[int, int]:
        """Integer range of weights, e.g. (-128, 127); one bit less with ``reduce_range``."""
        bits = self.weight_bits - (1 if self.reduce_range else 0)
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def activation_range(self) -> tuple[int, int]:
        """Integer range of activations: (0, 255) asymmetric uint8, (-128, 127) with ``tensorrt``."""
        bits = self.activation_bits - (1 if self.reduce_range else 0)
        if self.symmetric_activations:
            return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return 0, 2**bits - 1

    def excluded(self, module_type: str) -> bool:
        return module_type in self.exclude_module_types

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "QuantizationModifier") -> QATConfig:
        """Build from recipe keys; unknown keys raise a ConfigError naming the key."""
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown quantization key(s) {unknown}; known: {sorted(known)}")
        if "fuse" in values:
            check_fuse(values["fuse"], f"{where}: fuse")
        return cls(**values)


def check_fuse(value: object, where: str) -> str:
    """``value`` if it is one of :data:`FUSE_MODES`, else a :class:`ConfigError` starting with ``where``."""
    if not isinstance(value, str) or value not in FUSE_MODES:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ConfigError(
            f"{where} must be one of {', '.join(repr(m) for m in FUSE_MODES)}, got {shown} "
            f"(naming a model method is not supported)"
        )
    return value


def _names(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigError(f"QATConfig: {key} must be a list of class names, got {value!r}") from None
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"QATConfig: {key} must hold class names (strings), got {item!r}")
    return items
