"""The tracer behind :func:`sparseyolo.sparsity.channel_graph.trace_channel_groups`.

A ``TorchFunctionMode`` that sees every tensor operation of one forward pass and records, for each
tensor, which sources (layer outputs, the model input) its channels come from, in channel order.
Which ops pass channels through unchanged, which tie operands together (adds) and which mix them
(and so fix a group) is decided here, op by op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sparseyolo.utils.errors import SparseYoloError

# per-channel ops that map a zero channel to a zero channel and never mix channels
_PASS_THROUGH = frozenset(
    {
        "relu",
        "relu_",
        "leaky_relu",
        "leaky_relu_",
        "silu",
        "silu_",
        "hardswish",
        "hardswish_",
        "relu6",
        "gelu",
        "elu",
        "elu_",
        "mish",
        "tanh",
        "tanh_",
        "hardtanh",
        "hardtanh_",
        "dropout",
        "dropout2d",
        "feature_dropout",
        "alpha_dropout",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_max_pool2d",
        "interpolate",
        "upsample",
        "upsample_nearest",
        "upsample_bilinear",
        "contiguous",
        "clone",
        "to",
        "float",
        "double",
        "half",
        "bfloat16",
        "detach",
        "max_pool2d_with_indices",
        "_max_pool2d",
    }
)
_ADD_LIKE = frozenset({"add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__isub__"})
_MUL_LIKE = frozenset({"mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "__truediv__", "div_"})
_CONVS = frozenset({"conv1d", "conv2d", "conv3d"})
_RESHAPES = frozenset({"flatten", "view", "reshape", "squeeze"})
_IGNORED = frozenset({"__get__", "dim", "size", "numel", "__len__", "is_floating_point", "requires_grad_"})
# elementwise ops that turn a parameter into its fake-quantized stand-in (QAT weights)
_PARAM_ALIASES = frozenset(
    {
        "fake_quantize_per_tensor_affine",
        "fake_quantize_per_channel_affine",
        "_fake_quantize_learnable_per_tensor_affine",
        "mul",
        "__mul__",
        "contiguous",
    }
)


class Source:
    """A set of channels produced once (a layer output, the model input); sources an add ties
    together share a root (union-find). ``slices``: (module, role, offset, start, length) tuples."""

    __slots__ = ("size", "slices", "fixed", "parent")

    def __init__(self, size: int, fixed: str | None = None):
        self.size, self.slices, self.fixed, self.parent = size, [], fixed, self

    def root(self) -> Source:
        node = self
        while node.parent is not node:
            node.parent = node.parent.parent
            node = node.parent
        return node


Segments = list[tuple[Source, int, int]]  # (source, first source channel, length) in channel order


class ChannelTracer(TorchFunctionMode):
    """Records, for every tensor of one forward pass, which sources its channels come from."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.params: dict[int, tuple[str, str]] = {}
        for mod_name, module in model.named_modules():
            for attr, p in list(module._parameters.items()) + list(module._buffers.items()):
                if p is not None:
                    self.params.setdefault(id(p), (mod_name, attr))
        self.segments: dict[int, Segments] = {}
        self.keep: list[Any] = []  # hold every traced tensor: ids must not be reused mid-trace
        self.sources: list[Source] = []
        self.module_stack: list[str] = []
        self.conv_calls: dict[str, tuple[Segments | None, Source]] = {}  # module -> (input, output) of its first call

    # -- helpers --------------------------------------------------------------------------------
    def new_source(self, size: int, fixed: str | None = None) -> Source:
        src = Source(size, fixed)
        self.sources.append(src)
        return src

    def track(self, tensor: Any, segs: Segments) -> None:
        if isinstance(tensor, torch.Tensor):
            self.keep.append(tensor)
            self.segments[id(tensor)] = segs

    def segs(self, value: Any) -> Segments | None:
        return self.segments.get(id(value)) if isinstance(value, torch.Tensor) else None

    def where(self) -> str:
        return f" in {self.module_stack[-1]}" if self.module_stack and self.module_stack[-1] else ""

    def fix(self, segs: Segments | None, reason: str) -> None:
        for src, _, _ in segs or []:
            root = src.root()
            if root.fixed is None:
                root.fixed = reason

    def add_slices(self, segs: Segments, module: str, role: str) -> None:
        offset = 0
        for src, start, length in segs:
            src.slices.append((module, role, offset, start, length))
            offset += length

    def union(self, a: Segments, b: Segments, what: str) -> bool:
        """Tie two operands channel by channel; False (and both fixed) when they do not align."""

        def whole(segs: Segments) -> bool:
            return all(start == 0 and length == src.size for src, start, length in segs)

        if len(a) != len(b) or not (whole(a) and whole(b)) or any(x[2] != y[2] for x, y in zip(a, b, strict=False)):
            self.fix(a + b, f"{what}{self.where()} combines channel ranges that do not align")
            return False
        for (sa, _, _), (sb, _, _) in zip(a, b, strict=False):
            ra, rb = sa.root(), sb.root()
            if ra is not rb:
                rb.parent = ra
                ra.fixed = ra.fixed or rb.fixed
        return True

    # -- the op handler ----------------------------------------------------------------------------
    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name in _IGNORED:
            return out
        tensors = [a for a in flatten((args, kwargs)) if isinstance(a, torch.Tensor)]
        tracked = [t for t in tensors if id(t) in self.segments]
        if name in _PARAM_ALIASES and args and id(args[0]) in self.params and isinstance(out, torch.Tensor):
            self.params[id(out)] = self.params[id(args[0])]
            self.keep.append(out)
        if name in _CONVS:
            self._conv(args, kwargs, out)
        elif name == "linear":
            self._linear(args, kwargs, out)
        elif not tracked:
            return out
        elif name in ("batch_norm", "instance_norm"):
            self._norm(args, kwargs, out)
        elif name in _PASS_THROUGH:
            # max_pool with indices returns (values, indices): the values carry the channels
            self.track(out[0] if isinstance(out, tuple) else out, self.segments[id(tracked[0])])
        elif name == "pad":
            pad = args[1] if len(args) > 1 else kwargs.get("pad")
            ok = isinstance(pad, (list, tuple)) and len(pad) <= 2 * (args[0].dim() - 2) and _zero_value(args, kwargs)
            self._pass_or_fix(ok, args[0], out, "pad over channels or with a non-zero value")
        elif name == "cat":
            self._cat(args, kwargs, out)
        elif name in _ADD_LIKE or name in _MUL_LIKE:
            self._binary(name, args, out)
        elif name in _RESHAPES:
            # (N, C, 1, 1) -> (N, C) keeps the channel order: a classifier head after global pooling
            x = args[0]
            ok = (
                isinstance(out, torch.Tensor)
                and x.dim() >= 2
                and out.dim() == 2
                and out.shape[1] == x.shape[1]
                and x[0, 0].numel() == 1
            )
            self._pass_or_fix(ok, x, out, f"{name}()")
        else:
            for t in tracked:
                self.fix(self.segments[id(t)], f"{name}(){self.where()} mixes or reshapes channels")
        return out

    def _pass_or_fix(self, ok: bool, x: torch.Tensor, out: Any, what: str) -> None:
        if ok:
            self.track(out, self.segs(x))
        else:
            self.fix(self.segs(x), f"{what}{self.where()}")

    def _module_of(self, param: Any, what: str) -> str:
        hit = self.params.get(id(param)) if isinstance(param, torch.Tensor) else None
        if hit is None:
            raise SparseYoloError(
                f"channel trace: a {what}{self.where()} uses a weight that is not a parameter "
                "of the model; structured pruning needs layers that own their weights"
            )
        return hit[0]

    def _conv(self, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
        module = self._module_of(weight, "convolution")
        segs = self.segs(x)
        if groups == 1:
            self.track(out, [(self._layer_output(module, segs, out.shape[1]), 0, out.shape[1])])
        elif groups == x.shape[1] == out.shape[1] and segs is not None:
            self.add_slices(segs, module, "depthwise")
            self.track(out, segs)
        else:
            reason = f"grouped convolution {module} ({groups} groups)"
            self.fix(segs, reason)
            self.track(out, [(self.new_source(out.shape[1], reason), 0, out.shape[1])])

    def _layer_output(self, module: str, segs: Segments | None, size: int) -> Source:
        """The output source of a conv / linear layer; a layer called again (shared weights) ties its
        inputs together and gives the same output channels."""
        if module in self.conv_calls:
            first_in, src = self.conv_calls[module]
            if segs is not None and first_in is not None:
                self.union(first_in, segs, f"layer {module} called twice")
            return src
        if segs is not None:
            self.add_slices(segs, module, "in")
        src = self.new_source(size)
        src.slices.append((module, "out", 0, 0, size))
        self.conv_calls[module] = (segs, src)
        return src

    def _layer_input(self, module: str, segs: Segments) -> None:
        if module not in self.conv_calls:
            self.add_slices(segs, module, "in")

    def _linear(self, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        module = self._module_of(weight, "linear layer")
        segs = self.segs(x)
        if segs is not None and x.dim() == 2:
            self._layer_input(module, segs)
        elif segs is not None:
            self.fix(segs, f"linear layer {module} on a {x.dim()}-D input")
        if out.dim() == 2:
            self.track(out, [(self._layer_output(module, None, out.shape[1]), 0, out.shape[1])])

    def _norm(self, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        x = args[0]
        refs = [a for a in list(args[1:5]) + [kwargs.get(k) for k in ("running_mean", "weight")] if a is not None]
        module = next((self.params[id(a)][0] for a in refs if id(a) in self.params), None)
        segs = self.segs(x)
        if module is None:
            self.fix(segs, f"normalisation{self.where()} without parameters of the model")
            return
        self.add_slices(segs, module, "norm")
        self.track(out, segs)

    def _cat(self, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        parts = list(args[0])
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        segs = [self.segs(p) for p in parts]
        if dim % out.dim() == 1 and all(s is not None for s in segs):
            self.track(out, [s for part in segs for s in part])
            return
        if dim % out.dim() == 1:  # some operands untracked (e.g. made inside forward): keep alignment
            merged: Segments = []
            for p, s in zip(parts, segs, strict=False):
                merged += (
                    s
                    if s is not None
                    else [
                        (
                            self.new_source(p.shape[1], f"cat{self.where()} operand " "made inside forward"),
                            0,
                            p.shape[1],
                        )
                    ]
                )
            self.track(out, merged)
            return
        for s in segs:
            self.fix(s, f"cat over dim {dim}{self.where()}")

    def _binary(self, name: str, args: tuple, out: Any) -> None:
        a, b = args[0], args[1] if len(args) > 1 else None
        sa, sb = self.segs(a), self.segs(b)
        is_mul = name in _MUL_LIKE
        if sa is not None and sb is not None and a.shape == b.shape:
            if self.union(sa, sb, name):
                self.track(out, sa)
            return
        scalar = b if sa is not None else a
        x_segs = sa if sa is not None else sb
        # x * s keeps zeros; x / s too (s on the right); x + s does not
        zero_safe = (
            is_mul
            and (isinstance(scalar, (int, float)) or (isinstance(scalar, torch.Tensor) and scalar.numel() == 1))
            and not (name in ("div", "__truediv__", "div_") and sa is None)
        )
        if zero_safe:
            self.track(out, x_segs)
        else:
            self.fix(x_segs, f"{name}(){self.where()} with a constant or broadcast operand")


def _zero_value(args: tuple, kwargs: dict) -> bool:
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value", 0.0)
    return mode == "constant" and not value


def flatten(obj: Any) -> Iterable[Any]:
    if isinstance(obj, (list, tuple)):
        for x in obj:
            yield from flatten(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from flatten(x)
    else:
        yield obj
