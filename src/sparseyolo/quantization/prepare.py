"""``prepare_qat``: turn a float model into a fake-quantized one, in place.

Model-agnostic: a block with ``conv`` (Conv2d) and ``bn`` (BatchNorm2d) attributes, and optionally
``act``, is a fusable unit; plain Conv2d / Linear layers are quantized alone. Only the named
submodules are touched (the rest, e.g. a detection head, stays float).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from sparseyolo.quantization.config import QATConfig, check_fuse
from sparseyolo.quantization.fake_quant import (
    ActivationQuantizer,
    WeightQuantizer,
    new_forward_pass,
    propagate_tag,
    quantize_input,
    tag_of,
)
from sparseyolo.quantization.modules import (
    QAT_MODULE_TYPES,
    QATConv2d,
    QATConvBnAct,
    QATLinear,
    activation_quantizer,
)
from sparseyolo.utils.errors import ConfigError
from sparseyolo.utils.logging import LOGGER

_PASS_HOOK = "_sparseyolo_qat_pass_hook"
_TAG_HOOK = "_sparseyolo_qat_tag_hook"
_OUT_HOOK = "_sparseyolo_qat_out_hook"
_BLOCK_HOOK = "_sparseyolo_qat_block_hook"


def prepare_qat(
    model: nn.Module, submodules: Sequence[str] | None = None, config: QATConfig | None = None
) -> nn.Module:
    """Insert fake-quantization into ``model`` (in place) and return it.

    ``submodules``: names from ``model.named_modules()`` (e.g. ``["model.0", "model.1"]``) to
    quantize; None quantizes the whole model. The original ``nn.Parameter`` objects and parameter
    names are kept, so optimizers and pruning masks built before stay valid. Call it before moving
    the model to another device or after: new buffers follow each layer's weights.
    """
    cfg = config or QATConfig()
    check_fuse(cfg.fuse, "QATConfig: fuse")  # again: the field may have been changed after validation
    roots = _resolve_submodules(model, submodules)
    fold = cfg.fuse != "no_fuse"
    seen: set[int] = set()
    counts = {"conv_bn": 0, "conv": 0, "linear": 0, "outputs": 0}
    for root in roots:
        for module in _walk(root, seen, cfg):
            _prepare_module(module, cfg, fold, seen, counts, is_root=module is model)
    if not getattr(model, _PASS_HOOK, False):
        model.register_forward_pre_hook(new_forward_pass)
        setattr(model, _PASS_HOOK, True)
    LOGGER.info(
        f"QAT: {counts['conv_bn']} conv+bn blocks, {counts['conv']} convs, {counts['linear']} linear "
        f"layers and {counts['outputs']} extra outputs fake-quantized "
        f"(w{cfg.weight_bits}{'/per-channel' if cfg.per_channel else ''}, a{cfg.activation_bits}"
        f"{', reduce_range' if cfg.reduce_range else ''}{', tensorrt' if cfg.tensorrt else ''})"
    )
    return model


def _resolve_submodules(model: nn.Module, submodules: Sequence[str] | None) -> list[nn.Module]:
    if submodules is None:
        return [model]
    if isinstance(submodules, str):
        submodules = [submodules]
    named = dict(model.named_modules())
    roots = []
    for name in submodules:
        name = str(name).strip()
        if name in ("", "__ALL__"):
            roots.append(model)
            continue
        if name not in named:
            close = difflib.get_close_matches(name, list(named), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise ConfigError(f"QuantizationModifier: submodule {name!r} not found in {type(model).__name__}{hint}")
        roots.append(named[name])
    return roots


def _walk(root: nn.Module, seen: set[int], cfg: QATConfig) -> Iterator[nn.Module]:
    """Modules under ``root`` (parents first), skipping excluded types and their children."""
    stack = [root]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if cfg.excluded(type(module).__name__):
            continue
        yield module
        stack.extend(reversed([m for m in module.children() if id(m) not in seen]))


def _is_conv_unit(module: nn.Module) -> bool:
    return (
        type(getattr(module, "conv", None)) is nn.Conv2d
        and isinstance(getattr(module, "bn", None), nn.BatchNorm2d)
        and not isinstance(module, QAT_MODULE_TYPES)
    )


def _prepare_module(
    module: nn.Module, cfg: QATConfig, fold: bool, seen: set[int], counts: dict, is_root: bool = False
) -> None:
    if isinstance(module, (*QAT_MODULE_TYPES, ActivationQuantizer, WeightQuantizer)):
        seen.update(id(m) for m in module.modules())  # prepared already (prepare_qat is idempotent)
    elif fold and _is_conv_unit(module) and not cfg.excluded(type(module.conv).__name__):
        module.__class__ = QATConvBnAct
        module._qat_init(cfg, cfg.quantize_conv_activations)
        # the block's own children are handled by the block
        seen.update(id(m) for m in module.modules())
        counts["conv_bn"] += 1
    elif type(module) is nn.Conv2d:
        module.__class__ = QATConv2d
        module._qat_init(cfg, cfg.quantize_conv_activations)
        seen.update(id(m) for m in module.modules())
        counts["conv"] += 1
    elif type(module) is nn.Linear:
        module.__class__ = QATLinear
        module._qat_init(cfg, cfg.quantize_linear_activations)
        seen.update(id(m) for m in module.modules())
        counts["linear"] += 1
    elif _preserves_grid(module):
        if not getattr(module, _TAG_HOOK, False):
            module.register_forward_hook(propagate_tag)
            setattr(module, _TAG_HOOK, True)
    elif type(module).__name__ in cfg.custom_quantizable_module_types or (
        isinstance(module, nn.BatchNorm2d) and not cfg.exclude_batchnorm
    ):
        _add_output_quantizer(module, cfg)
        counts["outputs"] += 1
    elif (
        not is_root
        and cfg.quantize_conv_activations
        and next(module.children(), None) is not None
        and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
    ):
        # containers iterate over their children: adding a quantizer child would change them
        _add_block_input_quantizer(module, cfg)


def _preserves_grid(module: nn.Module) -> bool:
    """Ops whose outputs are values of their input (or 0.0), so they stay on its integer grid."""
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        return True
    if isinstance(module, nn.Upsample):
        return module.mode == "nearest"
    if isinstance(module, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
        return float(module.value) == 0.0
    return False


def _quantize_output(module: nn.Module, inputs: tuple, output: object) -> object:
    return module.out_quant(output) if isinstance(output, torch.Tensor) else output


def _add_output_quantizer(module: nn.Module, cfg: QATConfig) -> None:
    if getattr(module, _OUT_HOOK, False):
        return
    if hasattr(module, "out_quant"):
        raise ConfigError(
            f"QAT: cannot add an output quantizer to {type(module).__name__}: it already has an "
            f"attribute 'out_quant'"
        )
    module.out_quant = activation_quantizer(cfg, _device_of(module))
    module.register_forward_hook(_quantize_output)
    setattr(module, _OUT_HOOK, True)


def _device_of(module: nn.Module) -> torch.device | None:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return None


def _quantize_block_input(module: nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], torch.Tensor):
        return (quantize_input(args[0], module.block_input_quant), *args[1:])
    return None


def _quantize_block_output(module: nn.Module, args: tuple, output: object) -> object:
    if isinstance(output, torch.Tensor) and tag_of(output) is None:
        return module.block_output_quant(output)
    return None


def _add_block_input_quantizer(module: nn.Module, cfg: QATConfig) -> None:
    """A block (e.g. a residual Bottleneck) quantizes a tensor input or output that is not on a grid
    (an add's or a concat's result) once, at its boundary: every consumer then sees the same
    quantized tensor (one Q/DQ in the graph), so adds and concats convert to QLinearAdd/Concat."""
    if getattr(module, _BLOCK_HOOK, False):
        return
    if hasattr(module, "block_input_quant") or hasattr(module, "block_output_quant"):
        raise ConfigError(
            f"QAT: {type(module).__name__} already has a 'block_input_quant' or " f"'block_output_quant' attribute"
        )
    module.block_input_quant = activation_quantizer(cfg, _device_of(module))
    module.block_output_quant = activation_quantizer(cfg, _device_of(module))
    module.register_forward_pre_hook(_quantize_block_input)
    module.register_forward_hook(_quantize_block_output)
    setattr(module, _BLOCK_HOOK, True)


def _quantizers(model: nn.Module) -> Iterable[nn.Module]:
    return (m for m in model.modules() if isinstance(m, (ActivationQuantizer, WeightQuantizer)))


def freeze_bn_stats(model: nn.Module) -> int:
    """Stop updating BN statistics in folded QAT blocks (they then use running statistics).

    Returns the number of blocks frozen.
    """
    n = 0
    for m in model.modules():
        if isinstance(m, QATConvBnAct):
            m.bn_frozen.fill_(1)
            n += 1
    return n


def _set_observers(model: nn.Module, enabled: bool) -> int:
    n = 0
    for q in _quantizers(model):
        q.observer_enabled.fill_(int(enabled))
        n += 1
    return n


def disable_observers(model: nn.Module) -> int:
    """Freeze every quantizer's range/scale (fake quantization stays on). Returns the count."""
    return _set_observers(model, False)


def enable_observers(model: nn.Module) -> int:
    """Undo :func:`disable_observers`. Returns the count."""
    return _set_observers(model, True)


@contextlib.contextmanager
def quantizers_bypassed(model: nn.Module) -> Iterator[int]:
    """Run ``model`` as its float self: fake quantization and observers off inside the block, the
    previous flags restored after. Yields the number of quantizers switched.

    For evaluating a model whose QAT structure was applied but never trained (a recipe's QAT starts
    at an epoch boundary, just before that epoch's validation): without this, the activation
    observers would take their first ranges from a validation batch.
    """
    saved = [(q, q.fake_quant_enabled.clone(), q.observer_enabled.clone()) for q in _quantizers(model)]
    try:
        for q, _, _ in saved:
            q.fake_quant_enabled.fill_(0)
            q.observer_enabled.fill_(0)
        yield len(saved)
    finally:
        for q, fake_quant, observer in saved:
            q.fake_quant_enabled.copy_(fake_quant)
            q.observer_enabled.copy_(observer)


def is_qat_model(model: nn.Module) -> bool:
    """True if ``model`` holds any fake-quantized layer or quantizer."""
    return any(isinstance(m, (*QAT_MODULE_TYPES, ActivationQuantizer, WeightQuantizer)) for m in model.modules())


def uninitialized_quantizers(model: nn.Module) -> list[str]:
    """Names of activation quantizers that have never observed data (their scale is meaningless)."""
    return [name for name, m in model.named_modules() if isinstance(m, ActivationQuantizer) and not m.initialized]


def qat_report(model: nn.Module) -> list[dict]:
    """One row per fake-quantized layer: name, type, weight bits/granularity/scale range, and the
    scale / zero point of its output quantizer, plus whether BN statistics and observers are frozen."""
    import math

    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, QAT_MODULE_TYPES):
            continue
        wq = m.weight_fake_quant
        out = getattr(m, "out_quant", None) or getattr(m, "conv_out_quant", None)
        rows.append(
            {
                "name": name,
                "type": type(m).__name__,
                "weight_bits": int(math.log2(wq.quant_max - wq.quant_min + 1)),
                "per_channel": wq.per_channel,
                "weight_scale_min": float(wq.scale.min()),
                "weight_scale_max": float(wq.scale.max()),
                "out_scale": float(out.scale) if out is not None else None,
                "out_zero_point": int(out.zero_point) if out is not None else None,
                "bn_frozen": bool(m.bn_frozen) if isinstance(m, QATConvBnAct) else None,
                "observing": bool(wq.observer_enabled),
            }
        )
    return rows
