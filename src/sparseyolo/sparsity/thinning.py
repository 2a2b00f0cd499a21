"""Physical thinning: cut pruned channel groups out of a model, its optimizer and its masks.

A :class:`ThinningPlan` is data: for every affected tensor (parameter or buffer, by its dotted
name) the dimension and the indices to keep, and for every affected module its new sizes. The
same plan thins the model, an optimizer's state (momentum, Adam moments), pruning masks and any
copy of the model with the same names (an EMA), so they all stay consistent.

:func:`layer_widths` / :func:`resize_layers` record and rebuild the layer sizes of a thinned
model, so a checkpoint can be loaded into a freshly built (full-width) model of the same config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparseyolo.sparsity.channel_graph import ChannelGraph
from sparseyolo.utils.errors import SparseYoloError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._NormBase,)


@dataclass
class ThinningPlan:
    """Which indices each tensor keeps after thinning.

    ``tensors``: ``{"model.2.conv.weight": {0: LongTensor, 1: LongTensor}}`` (dim -> kept indices);
    ``modules``: ``{"model.2.conv": {"out_channels": 24, "in_channels": 12}}``;
    ``removed``: channels removed per group index.
    """

    tensors: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    modules: dict[str, dict[str, int]] = field(default_factory=dict)
    removed: dict[int, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.tensors)

    def slice(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (shaped like the tensor called ``name`` before thinning) with only the kept indices."""
        for dim, idx in self.tensors.get(name, {}).items():
            tensor = tensor.index_select(dim, idx.to(tensor.device))
        return tensor


def _module_tensors(module: nn.Module, dims: dict[str, torch.Tensor], name: str) -> tuple[dict, dict]:
    """Tensor slices and attribute updates for one module given kept indices per role."""
    out, inp = dims.get("out"), dims.get("in")
    tensors: dict[str, dict[int, torch.Tensor]] = {}
    attrs: dict[str, int] = {}

    def keep(attr: str, dim: int, idx: torch.Tensor | None) -> None:
        if idx is not None and getattr(module, attr, None) is not None:
            tensors.setdefault(f"{name}.{attr}" if name else attr, {})[dim] = idx

    if isinstance(module, _CONV) and "depthwise" in dims:
        idx = dims["depthwise"]
        keep("weight", 0, idx)
        keep("bias", 0, idx)
        attrs.update(out_channels=len(idx), in_channels=len(idx), groups=len(idx))
    elif isinstance(module, (*_CONV, nn.Linear)):
        keep("weight", 0, out)
        keep("bias", 0, out)
        keep("weight", 1, inp)
        out_attr, in_attr = (
            ("out_channels", "in_channels") if isinstance(module, _CONV) else ("out_features", "in_features")
        )
        if out is not None:
            attrs[out_attr] = len(out)
        if inp is not None:
            attrs[in_attr] = len(inp)
    elif isinstance(module, _NORM):
        idx = dims["norm"]
        for attr in ("weight", "bias", "running_mean", "running_var"):
            keep(attr, 0, idx)
        attrs["num_features"] = len(idx)
    else:
        raise SparseYoloError(
            f"cannot thin {name} ({type(module).__name__}): only conv, linear and "
            "batch-norm layers can lose channels"
        )
    return tensors, attrs


def plan_thinning(model: nn.Module, graph: ChannelGraph, keep: dict[int, torch.Tensor]) -> ThinningPlan:
    """The plan that removes, from each group ``g``, the channels where ``keep[g]`` is False."""
    modules = dict(model.named_modules())
    # per (module, role): a keep vector over the module's channels on that side
    flags: dict[tuple[str, str], torch.Tensor] = {}
    plan = ThinningPlan()
    for gi, mask in keep.items():
        group = graph.groups[gi]
        mask = mask.to(torch.bool).cpu()
        if bool(mask.all()):
            continue
        if group.fixed:
            raise SparseYoloError(f"{group.describe()} cannot be thinned: its channels reach {group.fixed}")
        if not bool(mask.any()):
            raise SparseYoloError(f"{group.describe()} would lose all its channels")
        plan.removed[gi] = int((~mask).sum())
        for s in group.slices:
            module = modules[s.module]
            size = _channels(module, s.role)
            vec = flags.setdefault((s.module, s.role), torch.ones(size, dtype=torch.bool))
            vec[s.offset : s.offset + s.length] &= mask[s.start : s.start + s.length]
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for (name, role), vec in flags.items():
        by_module.setdefault(name, {})[role] = vec.nonzero().flatten()
    for name, dims in by_module.items():
        tensors, attrs = _module_tensors(modules[name], dims, name)
        plan.tensors.update(tensors)
        plan.modules[name] = attrs
    return plan


def _channels(module: nn.Module, role: str) -> int:
    if role in ("out", "depthwise"):
        return module.weight.shape[0]
    if role == "in":
        return module.weight.shape[1]
    return module.num_features


@torch.no_grad()
def apply_thinning(model: nn.Module, plan: ThinningPlan) -> dict[int, nn.Parameter]:
    """Thin ``model`` in place. Returns ``{id(old parameter): new parameter}`` for optimizers."""
    modules = dict(model.named_modules())
    replaced: dict[int, nn.Parameter] = {}
    for tname in plan.tensors:
        mod_name, _, attr = tname.rpartition(".")
        module = modules[mod_name]
        old = getattr(module, attr)
        new = plan.slice(tname, old.detach()).clone()
        if isinstance(old, nn.Parameter):
            param = nn.Parameter(new, requires_grad=old.requires_grad)
            setattr(module, attr, param)
            replaced[id(old)] = param
        else:
            module._buffers[attr] = new
    for mod_name, attrs in plan.modules.items():
        for key, value in attrs.items():
            setattr(modules[mod_name], key, value)
    return replaced


@torch.no_grad()
def thin_optimizer(
    optimizer: torch.optim.Optimizer, model: nn.Module, plan: ThinningPlan, replaced: dict[int, nn.Parameter]
) -> None:
    """Point ``optimizer`` at the thinned parameters and slice their state the same way."""
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            new = replaced.get(id(p))
            if new is None:
                params.append(p)
                continue
            state = optimizer.state.pop(p, None)
            if state:
                name = names[id(new)]
                optimizer.state[new] = {
                    k: plan.slice(name, v) if torch.is_tensor(v) and v.shape == p.shape else v for k, v in state.items()
                }
            params.append(new)
        group["params"] = params


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """Sizes of every conv / linear (``[in, out]``) and norm (``[n]``) layer, by module name."""
    widths: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, _CONV):
            widths[name] = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.Linear):
            widths[name] = [m.in_features, m.out_features]
        elif isinstance(m, _NORM):
            widths[name] = [m.num_features]
    return widths


def resize_layers(model: nn.Module, widths: dict[str, Any], where: str = "widths") -> list[str]:
    """Rebuild the layers whose recorded size differs (fresh weights; load a state dict next).

    Returns the names of the rebuilt modules. A name that is not a layer of ``model`` is an error.
    """
    modules = dict(model.named_modules())
    changed = []
    for name, size in widths.items():
        m = modules.get(name)
        if m is None or not isinstance(size, (list, tuple)) or not all(isinstance(v, int) and v > 0 for v in size):
            raise SparseYoloError(f"{where}: {name!r}: {size!r} does not describe a layer of this model")
        new = _resized(m, list(size), f"{where}: {name}")
        if new is not m:
            parent_name, _, attr = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, attr, new)
            changed.append(name)
    return changed


def _resized(m: nn.Module, size: list[int], where: str) -> nn.Module:
    p = next(m.parameters(), None)
    factory = {"device": p.device, "dtype": p.dtype} if p is not None else {}
    if isinstance(m, _CONV) and len(size) == 2:
        cin, cout = size
        if [m.in_channels, m.out_channels] == size:
            return m
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        if m.groups > 1 and not (depthwise and cin == cout):
            raise SparseYoloError(f"{where}: grouped convolution cannot change size")
        return type(m)(
            cin,
            cout,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            cin if depthwise else 1,
            m.bias is not None,
            m.padding_mode,
            **factory,
        )
    if isinstance(m, nn.Linear) and len(size) == 2:
        if [m.in_features, m.out_features] == size:
            return m
        return nn.Linear(size[0], size[1], m.bias is not None, **factory)
    if isinstance(m, _NORM) and len(size) == 1:
        if m.num_features == size[0]:
            return m
        return type(m)(size[0], m.eps, m.momentum, m.affine, m.track_running_stats, **factory)
    raise SparseYoloError(f"{where}: {size} does not fit a {type(m).__name__}")
