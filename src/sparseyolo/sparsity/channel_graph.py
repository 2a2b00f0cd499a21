"""Channel dependency groups, derived from one traced forward pass of any ``nn.Module``.

Removing output channel ``c`` of a convolution also removes entry ``c`` of the BatchNorm after it
and input channel ``c`` of every layer that reads it, through activations, pooling, upsampling,
padding, concatenation (at an offset) and residual adds (all operands of an add share one channel
set). :func:`trace_channel_groups` records every tensor operation of a forward pass with a
``TorchFunctionMode`` (the real ops, on the real module, so Python control flow in ``forward`` is
no obstacle), follows each tensor's channels back to the layers that produced them, and merges the
producers that an add ties together. The result is a list of :class:`ChannelGroup`: sets of
channels that must be removed together, with every place (:class:`ChannelSlice`) they live in.

A group is *fixed* (its channels cannot be removed) when its channels reach the model's output,
the model's input, or an operation that mixes or reshapes channels (``view``, a grouped
convolution, an activation with ``f(0) != 0``, adding a constant, ...); ``fixed`` says why.
Channels of a pruned group are zero in the masked model, so every operation treated as
pass-through here must map zero channels to zero channels: that is what makes thinning exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparseyolo.sparsity.channel_tracer import ChannelTracer, Source, flatten
from sparseyolo.utils.errors import SparseYoloError


@dataclass
class ChannelSlice:
    """Where ``length`` channels of a group, starting at group channel ``start``, live in one module.

    ``role``: ``out`` (a conv / linear layer's output channels: ``weight[i]``, ``bias[i]``),
    ``in`` (its input channels: ``weight[:, i]``), ``norm`` (a normalisation layer's per-channel
    parameters and statistics) or ``depthwise`` (a depthwise conv: ``weight[i]`` and ``groups``).
    ``offset`` is the module index of group channel ``start``.
    """

    module: str
    role: str
    offset: int
    start: int
    length: int


@dataclass
class ChannelGroup:
    """Channels that must be removed together (one index space of ``size`` channels)."""

    index: int
    size: int
    slices: list[ChannelSlice] = field(default_factory=list)
    fixed: str | None = None

    @property
    def producers(self) -> list[str]:
        """Modules whose output channels this group is (in trace order)."""
        return [s.module for s in self.slices if s.role == "out"]

    def modules(self, role: str) -> list[str]:
        return [s.module for s in self.slices if s.role == role]

    def describe(self) -> str:
        names = self.producers
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        return f"channel group {self.index} ({self.size} channels, produced by {shown or 'the model input'})"


@dataclass
class ChannelGraph:
    """The groups of a model, with look-ups by module name."""

    groups: list[ChannelGroup]
    output_group: dict[str, int]  # producer module -> group index
    input_groups: dict[str, list[int]]  # consumer module -> groups its input channels come from

    def group_of_output(self, module: str) -> ChannelGroup | None:
        i = self.output_group.get(module)
        return None if i is None else self.groups[i]

    def groups_of_input(self, module: str) -> list[ChannelGroup]:
        return [self.groups[i] for i in self.input_groups.get(module, [])]


def example_input(model: nn.Module, size: int = 64) -> torch.Tensor:
    """A zero input for the first conv / linear layer of ``model`` (``(1, C, size, size)`` for a conv)."""
    p = next(model.parameters(), None)
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            shape = (1, module.in_channels) + (size,) * (module.weight.dim() - 2)
            return torch.zeros(shape, device=p.device if p is not None else None)
        if isinstance(module, nn.Linear):
            return torch.zeros(1, module.in_features, device=p.device if p is not None else None)
    raise SparseYoloError(
        "structured pruning: the model has no conv or linear layer to infer an input from; "
        "pass example_inputs to manager.attach()"
    )


@torch.no_grad()
def trace_channel_groups(model: nn.Module, example_inputs: Any = None) -> ChannelGraph:
    """Run ``model`` once on ``example_inputs`` (a tensor or tuple; inferred when None) in eval mode
    and return its channel groups. The model's parameters and buffers are not changed."""
    if example_inputs is None:
        example_inputs = example_input(model)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    tracer = ChannelTracer(model)
    for x in flatten(inputs):
        if isinstance(x, torch.Tensor):
            tracer.track(
                x,
                [
                    (
                        tracer.new_source(x.shape[1] if x.dim() > 1 else 1, "the model input"),
                        0,
                        x.shape[1] if x.dim() > 1 else 1,
                    )
                ],
            )
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: tracer.module_stack.append(n)))
        # a forward hook's return value would replace the output: drop pop()'s
        handles.append(module.register_forward_hook(lambda m, a, o: (tracer.module_stack.pop(), None)[1]))
    was_training = model.training
    model.eval()
    try:
        with tracer:
            outputs = model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for t in flatten(outputs):
        tracer.fix(tracer.segs(t), "the model output")
    return _build_graph(tracer)


def _build_graph(tracer: ChannelTracer) -> ChannelGraph:
    by_root: dict[int, list[Source]] = {}
    for src in tracer.sources:
        by_root.setdefault(id(src.root()), []).append(src)
    groups: list[ChannelGroup] = []
    output_group: dict[str, int] = {}
    input_groups: dict[str, list[int]] = {}
    for members in by_root.values():
        root = members[0].root()
        group = ChannelGroup(len(groups), root.size, fixed=root.fixed)
        seen = set()
        for src in members:
            for s in src.slices:
                key = s[:4]  # module, role, offset, start
                if key not in seen:  # a module called twice on the same tensor adds its slice once
                    seen.add(key)
                    group.slices.append(ChannelSlice(*s))
        if not group.slices:
            continue
        groups.append(group)
        for s in group.slices:
            if s.role == "out":
                output_group[s.module] = group.index
            elif s.role == "in" and group.index not in input_groups.setdefault(s.module, []):
                input_groups[s.module].append(group.index)
    return ChannelGraph(groups, output_group, input_groups)
