"""A dry run of a recipe on a model: what ``sparseyolo train --recipe`` would do, without data.

:func:`check_recipe` loads the recipe as ``train`` does, attaches a real
:class:`~sparseyolo.recipe.RecipeManager` to a private copy of the model with a throwaway SGD
optimizer (``train``'s three parameter groups: norm weights, weights, biases) and steps it through
the whole schedule. Every check ``train`` makes (keys, expressions, parameter names, mask shapes,
channel groups, thinning before QAT, QAT submodules, optimizer parameter groups) runs, and fails with
the same one-line :class:`~sparseyolo.utils.errors.ConfigError`. It returns a :class:`RecipeCheck`:
the modifiers and what they matched, one row per epoch (learning rate and weight decay per parameter
group, target sparsity per pruning modifier, phase), the events (pruning start / end, thinning, QAT),
the final sparsity and the FLOPs before and after.

Nothing trains, so the dry run leaves out what costs seconds per update on YOLOv3-SPP and cannot
change its outcome:

* magnitude masks (unstructured, blocks, N:M) are counted, not chosen by sorting every weight: the
  pruned counts are the ones the magnitude pruner reaches (``round(target * units)``, monotone,
  N:M caps), so sparsity, schedule and FLOPs are the same, only which weights is not decided
  (``exact_masks=True`` runs the modifiers' own magnitude code; so does a recipe in which a filter /
  channel pruner ranks channels while another pruner zeroes weights, see :func:`_shared_structured`);
  with global ranking, the split between tensors needs real weights and is taken proportional;
* filter pruning runs the modifier's own channel pruner, with channel scores computed once and no
  element masks (``mask_type: channel`` ranked by ``l1`` / ``l2`` runs as in training, see
  :func:`_fast_is_exact`); the channels it removes are cut out of the model for real when the
  schedule thins it;
* masks are not re-applied to the weights after every step (nothing changes the weights).

The manager is stepped after every optimizer step, ``steps_per_epoch`` per epoch (default
:data:`DEFAULT_STEPS_PER_EPOCH`); a schedule longer than :data:`MAX_STEPS` steps is stepped with
fewer steps per epoch, which the result notes. FLOPs of a YOLO model come from one forward pass at
64 px scaled by area, as ``DetectionModel.flops`` measures them; other models run on a ``meta``
device copy (shapes only).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparseyolo.utils.errors import ConfigError, SparseYoloError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sparseyolo.recipe import Recipe, RecipeManager

DEFAULT_STEPS_PER_EPOCH = 100
MAX_STEPS = 100_000  # a longer schedule is stepped with fewer steps per epoch


# ------------------------------------------------------------------------------------------ results
@dataclass
class ModifierInfo:
    """One modifier of the recipe and what it matched on the model."""

    index: int  # 1-based, in recipe order
    tag: str
    where: str  # file:line
    start_epoch: float | None
    end_epoch: float | None
    group: str | None  # "P1", "P2", ... for pruning modifiers (the columns of the schedule)
    matched: int  # how many params / parameter groups / submodules / layers it acts on
    kind: str  # what ``matched`` counts
    names: list[str] = field(default_factory=list)
    numel: int | None = None  # elements of the matched parameters
    settings: str = ""  # one line: the schedule and values that matter


@dataclass
class EpochRow:
    """The state the manager leaves for epoch ``epoch`` (after its first step's update); the last row
    (``epoch == epochs``) is the state at the end of training."""

    epoch: int
    phase: str  # training | pruning | pruned | qat (a thinned model counts as pruned)
    manager_phase: str  # RecipeManager.phase as is
    lr: list[float | None]  # per optimizer parameter group; None: not set by the recipe
    weight_decay: list[float | None]
    targets: dict[str, float | None]  # pruning group -> target sparsity applied at the last update
    events: list[str] = field(default_factory=list)  # what happened during this epoch


@dataclass
class CheckEvent:
    epoch: float
    step: int
    event: str  # pruning_start | pruning_end | thinned | qat_start | bn_frozen | observers_disabled
    detail: str = ""


@dataclass
class RecipeCheck:
    """The outcome of :func:`check_recipe` (``to_dict()`` is what ``--json`` writes)."""

    recipe: str
    recipe_args: dict[str, Any]
    model: str
    params: int
    recipe_epochs: int  # what train runs (the recipe's largest epoch, rounded up)
    epochs: int  # how many the dry run stepped through
    steps_per_epoch: int
    steps_per_epoch_assumed: bool
    steps_per_epoch_run: int  # fewer than steps_per_epoch when epochs * steps_per_epoch > max_steps
    total_steps: int  # steps run: epochs * steps_per_epoch_run
    masks: str  # how magnitude masks were made: "counted", "by magnitude" or "counted; P2 by magnitude"
    img: tuple[int, int]
    param_groups: list[str]
    modifiers: list[ModifierInfo]
    rows: list[EpochRow]
    events: list[CheckEvent]
    qat: dict[str, Any] | None
    thinning: list[dict[str, Any]]
    final: dict[str, Any]
    flops: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def groups(self) -> list[str]:
        return [m.group for m in self.modifiers if m.group]

    @property
    def sets_lr(self) -> bool:
        return any(v is not None for r in self.rows for v in r.lr)

    @property
    def sets_weight_decay(self) -> bool:
        return any(v is not None for r in self.rows for v in r.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["img"] = list(self.img)
        return d


# ------------------------------------------------------------------------------- fast mask updates
class _FastMasks:
    """Stand-in for one pruning modifier's mask update in a dry run (see the module docstring).

    Unstructured / block / N:M: counts of pruned units per parameter, exactly as the magnitude
    pruner's ``round(target * units)`` with its monotone and N:M rules, without touching a weight.
    Filter (and channel by ``bn_gamma``): the modifier's own
    :class:`~sparseyolo.sparsity.channel_pruner.ChannelPruner` with its scores cached, and no element
    masks (thinning reads the pruner's channel keep-masks); a removed channel's scores are never read
    again, so masking it would change nothing.
    """

    def __init__(self, mod: Any):
        self.mod = mod
        self.units: dict[str, int] = {}
        self.unit_size: dict[str, int] = {}
        self.cap: dict[str, int] = {}  # N:M: the most units that may be pruned
        self.pruned: dict[str, int] = {}
        self.numel: dict[str, int] = {}

    def install(self) -> None:
        self.mod._update_masks = self.update  # an instance attribute: only this dry run's modifier
        self.mod.apply_masks = _no_op

    def update(self, manager: RecipeManager, epoch: float) -> None:
        m = self.mod
        if m.thinned:
            return
        if m.pruner is not None:
            pruner = m.pruner
            if "scores" not in vars(pruner):  # cache its channel scores: the weights do not change
                cache: dict[int, Any] = {}
                original = pruner.scores

                def scores(gi: int, cache=cache, original=original):
                    if gi not in cache:
                        cache[gi] = original(gi)
                    return cache[gi]

                pruner.scores = scores
            targets = {n: m.target_at(n, epoch) for n in m.final_by_param}
            glob = targets[next(iter(targets))] if m.global_sparsity and targets else None
            pruner.update(targets, glob)
        else:
            self._count(m, epoch)
        m.last_update = epoch

    def _init_param(self, name: str, p: torch.Tensor, mask: torch.Tensor, fresh: bool) -> None:
        """Units of ``name`` and how many are pruned: none for a fresh masker (all-True masks), else
        those its masks hold (``init_sparsity: __FROM_PARAM__``); after thinning, the same fraction."""
        from sparseyolo.sparsity.masks import to_groups

        kind = self.mod.mask
        size = 1 if kind.kind == "nm" else kind.block[0] * kind.block[1]
        units = p.numel() // size
        cap = p.numel() // kind.m * (kind.m - kind.n) if kind.kind == "nm" else units
        if name in self.units:  # the model was thinned: keep the pruned fraction
            pruned = min(round(self.pruned[name] / max(self.units[name], 1) * units), cap)
        elif fresh:
            pruned = 0
        else:
            gone = ~mask if size == 1 else (~to_groups(mask, kind.block)).all(dim=1)
            pruned = int(gone.sum())
        self.numel[name], self.unit_size[name], self.units[name], self.cap[name] = p.numel(), size, units, cap
        self.pruned[name] = pruned

    def _count(self, m: Any, epoch: float) -> None:
        names = list(m.masker.params)
        fresh = m.masker.version == 0  # no mask was ever set: all True
        for n in names:
            if n not in self.units or self.numel[n] != m.masker.params[n].numel():  # new, or thinned
                self._init_param(n, m.masker.params[n], m.masker.masks[n], fresh)
        if m.global_sparsity and names:
            total = sum(self.units[n] for n in names)
            k = round(m.target_at(names[0], epoch) * total)
            k = min(k, sum(self.cap[n] for n in names))
            k = max(k, sum(self.pruned[n] for n in names))
            for n, v in zip(names, _allocate(k, names, self.units, self.pruned, self.cap), strict=True):
                self.pruned[n] = v
            return
        for n in names:
            k = min(round(m.target_at(n, epoch) * self.units[n]), self.cap[n])
            self.pruned[n] = max(k, self.pruned[n])

    def zeros(self) -> dict[str, float]:
        """Pruned fraction of each parameter's elements."""
        return {n: self.pruned[n] * self.unit_size[n] / max(self.numel[n], 1) for n in self.pruned}


def _no_op() -> None:
    """Masks are not re-applied in a dry run: nothing changes the weights between mask updates."""


def _allocate(k: int, names: list[str], units: dict, pruned: dict, cap: dict) -> list[int]:
    """Split ``k`` pruned units over tensors for global ranking: each keeps what it has pruned, the
    rest goes in proportion to what each can still lose (the real split needs real weights; the
    total is exact)."""
    want = {n: pruned[n] for n in names}
    left = k - sum(want.values())
    room = {n: cap[n] - want[n] for n in names}
    total_room = sum(room.values())
    if left <= 0 or total_room <= 0:
        return [want[n] for n in names]
    for n in names:
        want[n] += min(room[n], left * room[n] // total_room)
    left = k - sum(want.values())
    for n in sorted(names, key=lambda n: want[n] - cap[n]):  # the remainder, to the roomiest first
        if left <= 0:
            break
        if want[n] < cap[n]:
            want[n] += 1
            left -= 1
    return [want[n] for n in names]


# ----------------------------------------------------------------------------------------- helpers
def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device (shapes only; no weight is copied)."""
    import torch
    from torch import nn

    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def _flops(model: nn.Module, img: tuple[int, int]) -> dict[str, Any]:
    """Per conv / linear weight: dense FLOPs at ``img``, shape and size, from ``analyze_module`` (which
    also sees the convs of QAT Conv+BN blocks, whose forward never calls the conv module).

    A YOLO :class:`~sparseyolo.models.yolo.DetectionModel` is measured as its ``flops()`` is: one
    forward pass at a small size, each conv scaled by area (exact at multiples of the largest stride,
    which ``train`` rounds ``--img`` to). Any other model runs at ``img`` on a ``meta``-device copy.
    """
    from sparseyolo.analysis.layers import analyze_module
    from sparseyolo.models.yolo import STRIDE_PROBE, DetectionModel

    if isinstance(model, DetectionModel):
        probe, scale = (STRIDE_PROBE, STRIDE_PROBE), img[0] * img[1] / (STRIDE_PROBE * STRIDE_PROBE)
    else:
        model, probe, scale = _meta_copy(model), img, 1.0
    analysis = analyze_module(model, probe, source="dry run")
    return {
        layer.name: {
            "flops": None if layer.flops is None else layer.flops * scale,
            "shape": layer.shape,
            "numel": layer.weight_numel,
        }
        for layer in analysis.layers
    }


def _quantized_layers(model: nn.Module) -> int:
    return sum(getattr(m, "weight_fake_quant", None) is not None for m in model.modules())


def _line_of(mod: Any) -> int:
    tail = str(mod.where).rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 10**9


def _past_epoch_range(modifiers: list[Any]) -> list[str]:
    """A note per modifier that runs past every ``EpochRangeModifier``'s end: the training length is the
    largest epoch any modifier names (as in SparseML), so such a recipe trains longer than it declares."""
    ranges = [m.end_epoch for m in modifiers if m.tag == "EpochRangeModifier" and m.end_epoch > 0]
    if not ranges:
        return []
    declared = max(ranges)
    return [
        f"{m.where}: {m.tag} ends at epoch {format_epoch(m.last_epoch)}, after the EpochRangeModifier's end "
        f"{format_epoch(declared)}: training runs {format_epoch(m.last_epoch)} epochs, as SparseML's would"
        for m in sorted(modifiers, key=_line_of)
        if m.tag != "EpochRangeModifier" and m.last_epoch > declared + 1e-9
    ]


def format_epoch(e: float | None) -> str:
    return "-" if e is None or e < 0 else f"{e:g}"


def _fast_is_exact(m: Any) -> bool:
    """Whether :class:`_FastMasks` gives ``m``'s outcome. Not for ``mask_type: channel`` ranked by
    ``l1`` / ``l2``: a channel is scored by the columns of the layer that reads it, and that layer's
    rows are zeroed when its own output channels go, so the scores change with the masks."""
    return getattr(m, "structure", None) != "channel" or m.importance == "bn_gamma"


def _shared_structured(mods: list[Any]) -> str:
    """Why masks must be chosen by magnitude, or "": a filter / channel pruner ranks channels by the
    weights, so when another magnitude pruner zeroes weights before its last update, the choice of
    one depends on the other's zeros (the dry run's position-chosen masks zero nothing)."""
    structured = [m for m in mods if getattr(m, "structure", None)]
    magnitude = [m for m in mods if hasattr(m, "target_at")]
    for s in structured:
        for o in magnitude:
            if o is not s and o.start_epoch < s.end_epoch:
                return f"!{o.tag} ({o.where}) zeroes weights while !{s.tag} ({s.where}) still ranks channels"
    return ""


def _describe(m: Any) -> str:
    """One line of the settings that matter for ``m``."""
    tag = m.tag
    if hasattr(m, "target_at"):  # magnitude / structured pruning
        init = m.init_sparsity if isinstance(m.init_sparsity, str) else f"{m.init_sparsity:g}"
        finals = sorted({f"{v:g}" for v in (m.final_by_param or {}).values()}) or [str(m.final_sparsity)]
        kind = m.structure or m.mask.to_recipe()
        text = f"{init} -> {'/'.join(finals)} ({m.inter_func}), every {m.update_frequency:g} epochs, mask {kind}"
        if m.structure:
            text += f", round_to {m.round_to}, importance {m.importance}"
        if m.global_sparsity:
            text += ", global"
        if not m.leave_enabled:
            text += ", leave_enabled false"
        return text
    if tag == "ConstantPruningModifier":
        return "holds the zeros the weights have at start_epoch"
    if tag == "SetLearningRateModifier":
        return f"lr {m.learning_rate:g}"
    if tag == "LearningRateFunctionModifier":
        return f"{m.lr_func} {m.init_lr:g} -> {m.final_lr:g}"
    if tag == "LearningRateModifier":
        kw = ", ".join(f"{k} {v}" for k, v in m.lr_kwargs.items())
        return f"{m.lr_class}({kw}) from {m.init_lr:g}"
    if tag == "SetWeightDecayModifier":
        return f"weight_decay {m.weight_decay:g}"
    if tag == "QuantizationModifier":
        return (
            f"fuse {m.model_fuse_fn_name or 'conv_bn_relus'}, weights {m.weight_bits} bit, activations "
            f"{m.activation_bits} bit; BN stats frozen at {format_epoch(m.freeze_bn_stats_epoch)}, "
            f"observers off at {format_epoch(m.disable_quantization_observer_epoch)}"
        )
    if tag == "LayerThinningModifier":
        return f"thins at epochs {', '.join(f'{e:g}' for e in m.epochs)}, strict {str(m.strict).lower()}"
    if tag == "BatchNormL1Modifier":
        return f"penalty {m.penalty:g}"
    if tag == "EpochRangeModifier":
        return "training length"
    if tag == "DistillationModifier":
        return f"hardness {m.hardness:g}, temperature {m.temperature:g}"
    return ""


def _matched(m: Any, group_names: list[str], model: nn.Module) -> tuple[int, str, list[str], int | None]:
    """(count, what is counted, names, elements) of what ``m`` acts on, right after attach."""
    named = dict(model.named_parameters())

    def params(names: list[str]) -> tuple[int, str, list[str], int]:
        return len(names), "params", names, sum(named[n].numel() for n in names if n in named)

    if hasattr(m, "final_by_param"):  # magnitude / structured pruning
        return params(list(m.final_by_param))
    if m.tag == "ConstantPruningModifier":
        return params(list(m.masker.params) if m.masker is not None else [])
    if m.tag == "BatchNormL1Modifier":
        return params(list(m.names))
    if m.tag in ("SetLearningRateModifier", "LearningRateFunctionModifier", "SetWeightDecayModifier"):
        idx = m.param_groups if m.param_groups else list(range(len(group_names)))
        return len(idx), "param groups", [group_names[i] if i < len(group_names) else str(i) for i in idx], None
    if m.tag == "LearningRateModifier":
        return len(group_names), "param groups", list(group_names), None
    if m.tag == "QuantizationModifier":
        if m.submodules:
            return len(m.submodules), "submodules", list(m.submodules), None
        return 1, "submodules", ["(the whole model)"], None
    if m.tag == "LayerThinningModifier":
        deps = m.param_group_dependency_map or {}
        names = [n.strip() for k, v in deps.items() for n in [*str(k).split(","), *v]]
        return len(names), "params checked", names, None
    return 0, "", [], None


def _held_sparsity(m: Any) -> float:
    """Fraction of zeros a ConstantPruningModifier holds over its parameters."""
    masks = m.masker.masks
    total = sum(mask.numel() for mask in masks.values())
    return sum(int((~mask).sum()) for mask in masks.values()) / total if total else 0.0


_EVENT_TEXT = {
    "pruning_start": "pruning starts",
    "pruning_end": "pruning ends",
    "thinned": "thinned",
    "qat_start": "QAT starts",
    "bn_frozen": "BN statistics frozen",
    "observers_disabled": "QAT observers off",
}


def _event_text(e: CheckEvent) -> str:
    text = _EVENT_TEXT.get(e.event, e.event)
    if abs(e.epoch - round(e.epoch)) > 1e-6:
        text += f" at {e.epoch:.3g}"
    return f"{text}: {e.detail}" if e.detail else text


# ------------------------------------------------------------------------------------------- check
def load_check_model(cfg: str | None = None, weights: str | None = None) -> tuple[nn.Module, str]:
    """The model ``train`` would start from: ``weights`` (checkpoint, Darknet ``.weights``, URL or
    ``zoo:`` stub; a thinned checkpoint comes back at its own widths) or ``cfg`` (name or YAML)."""
    from sparseyolo.models import build_model, load_model

    if weights:
        model, _ = load_model(weights, cfg=cfg or None)
        return model, str(weights)
    if not cfg:
        raise ConfigError("give the model: --cfg (yolov3, yolov3-spp, yolov3-tiny or a model YAML) or --weights")
    return build_model(cfg), str(cfg)


def check_recipe(
    recipe: str | Path | Recipe,
    model: nn.Module,
    recipe_args: Mapping[str, Any] | str | None = None,
    steps_per_epoch: int | None = None,
    epochs: int | None = None,
    img: tuple[int, int] = (640, 640),
    exact_masks: bool = False,
    max_steps: int = MAX_STEPS,
    model_label: str = "model",
    copy_model: bool = True,
) -> RecipeCheck:
    """Dry-run ``recipe`` on ``model`` (see the module docstring); raises the ConfigError ``train``
    would raise for a broken recipe.

    ``recipe``: a path, YAML text, ``zoo:`` stub or built-in name (what :meth:`Recipe.load` takes), or
    a loaded :class:`Recipe` (then without ``recipe_args``). ``model`` is deep-copied first unless
    ``copy_model=False`` (then it is pruned, thinned and quantized in place). ``steps_per_epoch``:
    optimizer steps per epoch (default :data:`DEFAULT_STEPS_PER_EPOCH`, reported as assumed).
    ``epochs``: how many epochs to step through (default: the recipe's own length, which ``train``
    runs). A schedule of more than ``max_steps`` steps is stepped with fewer steps per epoch (and says
    so). ``exact_masks``: choose masks with the modifiers' own magnitude code.
    """
    import torch

    from sparseyolo.engine.optim import param_groups
    from sparseyolo.recipe import Recipe
    from sparseyolo.sparsity import prunable_param_names

    t0 = time.perf_counter()
    if isinstance(recipe, Recipe):
        if recipe_args:
            raise ConfigError("recipe args apply when a recipe is loaded: pass its path or text with them")
        loaded = recipe
    else:
        loaded = Recipe.load(recipe, recipe_args)
    assumed = steps_per_epoch is None
    spe = DEFAULT_STEPS_PER_EPOCH if steps_per_epoch is None else steps_per_epoch
    if isinstance(spe, bool) or not isinstance(spe, int) or spe < 1:
        raise ConfigError(f"steps per epoch must be a positive integer, got {steps_per_epoch!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    if copy_model:
        model = copy.deepcopy(model)
    model.train()
    notes: list[str] = []
    img = (int(img[0]), int(img[1]))
    stride = getattr(model, "stride", None)
    if stride is not None:  # a YOLO model: train rounds --img up to a multiple of the largest stride
        top = max(int(stride.max()), 32)
        rounded = tuple(max(math.ceil(v / top) * top, top) for v in img)
        if rounded != img:
            notes.append(f"FLOPs at {rounded[0]}x{rounded[1]}: --img rounded up to a multiple of {top}, as train does")
            img = rounded
    params_before = sum(p.numel() for p in model.parameters())
    before_flops = _flops(model, img)

    manager = loaded.manager()
    recipe_epochs = int(manager.max_epochs)
    notes += _past_epoch_range(manager.modifiers)
    n_epochs = recipe_epochs if epochs is None else epochs
    if n_epochs != recipe_epochs:
        notes.append(f"train runs the recipe's {recipe_epochs} epochs; this dry run stepped through {n_epochs}")
    spe_given = spe
    if n_epochs * spe > max_steps:  # a step costs tens of microseconds: keep the dry run to seconds
        spe = max(1, max_steps // max(n_epochs, 1))
        notes.append(
            f"stepped with {spe} steps per epoch instead of {spe_given} ({n_epochs * spe_given:,} steps in "
            "all): updates at fractional epochs move to the nearest of the coarser steps"
        )
    total = n_epochs * spe

    shared = _shared_structured(manager.pruning_modifiers)
    if shared and not exact_masks:
        exact_masks = True
        notes.append(f"masks chosen by magnitude: {shared}")
    fast: list[_FastMasks] = []
    for m in manager.pruning_modifiers:
        if exact_masks:
            continue
        if not hasattr(m, "target_at"):  # ConstantPruningModifier: its masks are the weights' zeros
            m.apply_masks = _no_op
        elif _fast_is_exact(m):
            fast.append(_FastMasks(m))
            fast[-1].install()
    manager.reapply_masks_every_step = False  # nothing writes to the weights between updates

    # train's optimizer layout (engine.optim.build_optimizer): norm weights, weights, biases
    norm, weights, biases = param_groups(model)
    optimizer = torch.optim.SGD([{"params": norm, "name": "norm"}], lr=0.0)
    optimizer.add_param_group({"params": weights, "name": "weight"})
    optimizer.add_param_group({"params": biases, "name": "bias"})
    group_names = [g["name"] for g in optimizer.param_groups]

    events: list[CheckEvent] = []
    thinning: list[dict[str, Any]] = []
    removed_by_group: dict[int, int] = {}
    after: dict[str, Any] = {}

    def record(event: str) -> Callable[..., None]:
        def callback(**info: Any) -> None:
            detail = ""
            if event == "thinned":
                plan = info["plan"]
                removed = int(sum(plan.removed.values()))
                removed_by_group.update({gi: removed_by_group.get(gi, 0) + n for gi, n in plan.removed.items()})
                thinning.append(
                    {
                        "epoch": manager.epoch,
                        "step": manager.global_step,
                        "channels_removed": removed,
                        "groups": len(plan.removed),
                        "layers_changed": len(plan.modules),
                        "layers": {name: dict(attrs) for name, attrs in plan.modules.items()},
                    }
                )
                detail = f"{removed} channels cut out of {len(plan.removed)} groups ({len(plan.modules)} layers)"
                after["flops"] = _flops(manager.model, img)  # the manager refuses thinning after QAT starts
            elif event == "qat_start":
                detail = f"{_quantized_layers(manager.model)} layers fake-quantized"
            events.append(CheckEvent(manager.epoch, manager.global_step, event, detail))

        return callback

    for event in ("pruning_start", "pruning_end", "thinned", "qat_start"):
        manager.subscribe(event, record(event))
    qmods = [m for m in manager.modifiers if m.tag == "QuantizationModifier"]
    qat_flags = {id(q): [False, False] for q in qmods}

    def poll_qat() -> None:  # QAT's later switches are no manager events
        for q in qmods:
            for j, (attr, event) in enumerate(
                (("bn_frozen", "bn_frozen"), ("observers_disabled", "observers_disabled"))
            ):
                if getattr(q, attr, False) and not qat_flags[id(q)][j]:
                    qat_flags[id(q)][j] = True
                    events.append(CheckEvent(manager.epoch, manager.global_step, event))

    probe = torch.zeros(1, int(getattr(model, "yaml", {}).get("ch", 3)), 64, 64)  # what train traces with
    manager.attach(model, optimizer, steps_per_epoch=spe, example_inputs=probe)

    # what each modifier matched, in recipe order
    ordered = sorted(manager.modifiers, key=_line_of)
    pruners = [m for m in ordered if m in manager.pruning_modifiers]
    group_of = {id(m): f"P{i}" for i, m in enumerate(pruners, 1)}
    fast_ids = {id(f.mod) for f in fast}
    by_magnitude = [group_of[id(m)] for m in pruners if hasattr(m, "target_at") and id(m) not in fast_ids]
    if not by_magnitude:
        masks = "counted (pruned counts as magnitude pruning reaches them; which weights is not decided)"
    elif not fast_ids:
        masks = "chosen by magnitude, as in training"
    else:
        masks = f"counted, {', '.join(by_magnitude)} chosen by magnitude, as in training"
    infos: list[ModifierInfo] = []
    channel_groups = {  # filter / channel pruning: channels of the groups each modifier prunes
        id(m): {gi: t.group.size for gi, t in m.pruner.targets.items()}
        for m in pruners
        if getattr(m, "pruner", None) is not None
    }
    for i, m in enumerate(ordered, 1):
        count, kind, names, numel = _matched(m, group_names, model)
        infos.append(
            ModifierInfo(
                index=i,
                tag=m.tag,
                where=m.where,
                start_epoch=None if m.start_epoch < 0 else m.start_epoch,
                end_epoch=None if m.end_epoch < 0 else m.end_epoch,
                group=group_of.get(id(m)),
                matched=count,
                kind=kind,
                names=names,
                numel=numel,
                settings=_describe(m),
            )
        )
        skipped = getattr(getattr(m, "pruner", None), "skipped", None)
        if skipped:
            notes.append(
                f"{group_of[id(m)]} leaves {len(skipped)} of its params whole: {', '.join(skipped[:3])}"
                + (", ..." if len(skipped) > 3 else "")
            )

    rows: list[EpochRow] = []
    shown_events = 0
    held: dict[tuple[int, int], float] = {}

    def add_row(epoch: int) -> None:
        nonlocal shown_events
        phase = manager.phase
        thinned = any(getattr(m, "thinned", False) for m in pruners)
        targets: dict[str, float | None] = {}
        for m in pruners:
            value = None
            if hasattr(m, "target_at"):
                if m.last_update is not None and m.final_by_param:
                    value = m.target_at(next(iter(m.final_by_param)), m.last_update)
            elif m.masks_active():  # ConstantPruningModifier: its masks change only when it starts
                key = (id(m), m.masker.version)
                if key not in held:
                    held[key] = _held_sparsity(m)
                value = held[key]
            targets[group_of[id(m)]] = value
        groups = optimizer.param_groups
        rows.append(
            EpochRow(
                epoch=epoch,
                phase="pruned" if phase == "training" and thinned else phase,
                manager_phase=phase,
                lr=[g["lr"] if v is not None else None for g, v in zip(groups, manager.applied_lr, strict=False)],
                weight_decay=[
                    g["weight_decay"] if v is not None else None
                    for g, v in zip(groups, manager.applied_wd, strict=False)
                ],
                targets=targets,
                events=[_event_text(e) for e in events[shown_events:]],
            )
        )
        shown_events = len(events)

    poll_qat()
    add_row(0)
    for step in range(1, total + 1):
        try:
            manager.step()
        except SparseYoloError as err:  # train would stop here, mid-run: say where
            raise type(err)(f"{err} (at epoch {manager.epoch:g} of the schedule)") from None
        poll_qat()
        if step % spe == 0:
            add_row(step // spe)
    final_phase = manager.phase
    manager.finalize()

    # zeros of every conv / linear weight at the end
    named = dict(model.named_parameters())
    fractions: dict[str, float] = {}
    for f in fast:
        for n, frac in f.zeros().items():
            fractions[n] = max(fractions.get(n, 0.0), frac)
    for m in pruners:  # filter / channel pruning not cut out yet: the zeros its masks would hold
        if getattr(m, "pruner", None) is not None and not exact_masks:
            for n, mask in m.pruner.param_masks().items():
                fractions[n] = max(fractions.get(n, 0.0), float((~mask).sum()) / max(mask.numel(), 1))
    zeros: dict[str, int] = {}
    for n in prunable_param_names(model):
        p = named[n].detach()
        zeros[n] = max(p.numel() - int(torch.count_nonzero(p)), round(fractions.get(n, 0.0) * p.numel()))
    weights_total = sum(named[n].numel() for n in zeros)
    weights_zero = sum(zeros.values())
    params_after = sum(p.numel() for p in model.parameters())
    other_zero = sum(
        max(p.numel() - int(torch.count_nonzero(p.detach())), round(fractions.get(n, 0.0) * p.numel()))
        for n, p in named.items()
        if n not in zeros
    )
    by_group: dict[str, Any] = {}
    for m in pruners:
        if hasattr(m, "final_by_param"):
            names, target = [n for n in m.final_by_param if n in named], max(m.final_by_param.values(), default=None)
        else:
            names, target = [n for n in (m.masker.params if m.masker else {}) if n in named], None
        numel = sum(named[n].numel() for n in names)
        entry: dict[str, Any] = {
            "sparsity": sum(zeros.get(n, 0) for n in names) / numel if numel else None,
            "final_target": target,
        }
        if id(m) in channel_groups:  # its target is a fraction of channels
            sizes = channel_groups[id(m)]
            if getattr(m, "pruner", None) is not None:  # not cut out (yet)
                gone = sum(int((~m.pruner.keep[gi]).sum()) for gi in sizes)
            else:
                gone = sum(min(removed_by_group.get(gi, 0), n) for gi, n in sizes.items())
            entry.update(
                sparsity=None,
                channels=sum(sizes.values()),
                channels_removed=gone,
                channel_sparsity=gone / sum(sizes.values()) if sizes else None,
            )
        by_group[group_of[id(m)]] = entry
    final = {
        "phase": final_phase,
        "weights": weights_total,
        "zero_weights": weights_zero,
        "sparsity": weights_zero / weights_total if weights_total else 0.0,
        "params": params_after,
        "params_sparsity": (weights_zero + other_zero) / params_after if params_after else 0.0,
        "groups": by_group,
    }

    after_flops = after.get("flops", before_flops)

    def total_flops(table: dict[str, Any], sparse: bool = False) -> float:
        out = 0.0
        for n, v in table.items():
            density = 1.0 - (zeros.get(n, 0) / v["numel"] if sparse and v["numel"] else 0.0)
            out += (v["flops"] or 0.0) * density
        return out

    flops = {
        "img": list(img),
        "before": total_flops(before_flops),
        "after": total_flops(after_flops),
        "after_sparse": total_flops(after_flops, sparse=True),
        "thinned": bool(thinning),
        "params_before": params_before,
        "params_after": params_after,
    }

    qat = None
    if qmods:
        q = min(qmods, key=lambda m: m.start_epoch)
        started = next((e for e in events if e.event == "qat_start"), None)
        qat = {
            "start_epoch": max(q.start_epoch, 0.0),
            "started_at": started.epoch if started else None,
            "submodules": list(q.submodules) if q.submodules else None,
            "quantized_layers": _quantized_layers(model) if started else None,
            "layers": len(zeros),
            "freeze_bn_stats_epoch": q.freeze_bn_stats_epoch,
            "disable_quantization_observer_epoch": q.disable_quantization_observer_epoch,
        }
    if not manager.has_lr_modifiers:
        notes.append("the recipe sets no learning rate: train's --hyp schedule (lr0, lrf, warm-up) applies")
    if any(m.tag == "DistillationModifier" for m in manager.modifiers):
        notes.append("distillation: train's teacher is --teacher, else --weights; the dry run used a copy of the model")
    return RecipeCheck(
        recipe=loaded.source,
        recipe_args=dict(loaded.args),
        model=model_label,
        params=params_before,
        recipe_epochs=recipe_epochs,
        epochs=n_epochs,
        steps_per_epoch=spe_given,
        steps_per_epoch_assumed=assumed,
        steps_per_epoch_run=spe,
        total_steps=total,
        masks=masks,
        img=(int(img[0]), int(img[1])),
        param_groups=group_names,
        modifiers=infos,
        rows=rows,
        events=events,
        qat=qat,
        thinning=thinning,
        final=final,
        flops=flops,
        notes=notes,
        seconds=time.perf_counter() - t0,
    )
