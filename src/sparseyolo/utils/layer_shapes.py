"""Output shapes and FLOPs of a torch model's weight layers (conv / linear), from one forward pass.

Shared by ``DetectionModel.flops`` and ``analyze`` so that both count the same layers the same way,
including quantization-aware Conv+BN blocks, which convolve with their folded ``conv.weight``
themselves and never call the conv module (a hook on the conv alone would miss them).
torch is imported where it is used: the ONNX analysis needs only :func:`layer_flops`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


def is_weight_layer(m: nn.Module) -> bool:
    """A conv or linear layer that owns its weight as a parameter."""
    import torch.nn as nn

    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and isinstance(
        getattr(m, "weight", None), nn.Parameter
    )


def conv_block(name: str, modules: dict[str, nn.Module]) -> nn.Module | None:
    """The block whose ``conv`` is the layer ``name`` (a QAT Conv+BN block convolves with it itself),
    or None."""
    parent = modules.get(name.rpartition(".")[0]) if "." in name else None
    return parent if parent is not None and getattr(parent, "conv", None) is modules.get(name) else None


def weight_layer_output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """``{layer name: output shape}`` for every weight layer that ``model(x)`` runs, in eval mode
    without gradients (the training mode is restored). Exceptions of the forward pass propagate."""
    import torch

    modules = dict(model.named_modules())
    shapes: dict[str, list[int]] = {}

    def hook_for(name: str, overwrite: bool):
        def hook(_module, _inputs, output):
            if hasattr(output, "shape") and (overwrite or name not in shapes):
                shapes[name] = list(output.shape)

        return hook

    hooks = []
    for name, m in modules.items():
        if not is_weight_layer(m):
            continue
        hooks.append(m.register_forward_hook(hook_for(name, overwrite=True)))
        # a QAT block's output has its conv's shape (BN and the activation keep it)
        block = conv_block(name, modules)
        if block is not None:
            hooks.append(block.register_forward_hook(hook_for(name, overwrite=False)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def layer_flops(weight_shape: list[int], out_shape: list[int] | None, conv: bool) -> float | None:
    """2 * MACs per image: a conv does numel(W) MACs per output position, a linear numel(W) per row."""
    if out_shape is None:
        return None
    numel = math.prod(weight_shape)
    positions = math.prod(out_shape[2:]) if conv else math.prod(out_shape[1:-1])
    return 2.0 * numel * positions
