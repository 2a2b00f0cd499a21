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
  channel pruner ranks channels while another pruner zeroes weights, see
  :func:`~sparseyolo.analysis.recipe_check_masks.shared_structured`);
  with global ranking, the split between tensors needs real weights and is taken proportional;
* filter pruning runs the modifier's own channel pruner, with channel scores computed once and no
  element masks (``mask_type: channel`` ranked by ``l1`` / ``l2`` runs as in training, see
  :func:`~sparseyolo.analysis.recipe_check_masks.fast_is_exact`); the channels it removes are cut
  out of the model for real when the schedule thins it;
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparseyolo.analysis.recipe_check_describe import (
    describe,
    event_text,
    held_sparsity,
    line_of,
    matched,
    past_epoch_range,
    pruning_group_summary,
)
from sparseyolo.analysis.recipe_check_masks import FastMasks, fast_is_exact, no_op, shared_structured
from sparseyolo.analysis.recipe_check_result import CheckEvent, EpochRow, ModifierInfo, RecipeCheck
from sparseyolo.utils.errors import ConfigError, SparseYoloError

if TYPE_CHECKING:
    from torch import nn

    from sparseyolo.recipe import Recipe

DEFAULT_STEPS_PER_EPOCH = 100
MAX_STEPS = 100_000  # a longer schedule is stepped with fewer steps per epoch


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


def _zeros_at_end(
    model: nn.Module, fast: list[FastMasks], pruners: list[Any], exact_masks: bool
) -> tuple[dict[str, int], int]:
    """Zeros of every prunable weight at the end of the dry run, counted masks and channel masks not yet
    cut out included, and the zeros of all other parameters together."""
    import torch

    from sparseyolo.sparsity import prunable_param_names

    named = dict(model.named_parameters())
    fractions: dict[str, float] = {}
    for f in fast:
        for n, frac in f.zeros().items():
            fractions[n] = max(fractions.get(n, 0.0), frac)
    for m in pruners:  # filter / channel pruning not cut out yet: the zeros its masks would hold
        if getattr(m, "pruner", None) is not None and not exact_masks:
            for n, mask in m.pruner.param_masks().items():
                fractions[n] = max(fractions.get(n, 0.0), float((~mask).sum()) / max(mask.numel(), 1))

    def zero_count(n: str, p: torch.Tensor) -> int:
        return max(p.numel() - int(torch.count_nonzero(p.detach())), round(fractions.get(n, 0.0) * p.numel()))

    zeros = {n: zero_count(n, named[n]) for n in prunable_param_names(model)}
    return zeros, sum(zero_count(n, p) for n, p in named.items() if n not in zeros)


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
    notes += past_epoch_range(manager.modifiers)
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

    shared = shared_structured(manager.pruning_modifiers)
    if shared and not exact_masks:
        exact_masks = True
        notes.append(f"masks chosen by magnitude: {shared}")
    fast: list[FastMasks] = []
    for m in manager.pruning_modifiers:
        if exact_masks:
            continue
        if not hasattr(m, "target_at"):  # ConstantPruningModifier: its masks are the weights' zeros
            m.apply_masks = no_op
        elif fast_is_exact(m):
            fast.append(FastMasks(m))
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
    ordered = sorted(manager.modifiers, key=line_of)
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
        count, kind, names, numel = matched(m, group_names, model)
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
                settings=describe(m),
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
                    held[key] = held_sparsity(m)
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
                events=[event_text(e) for e in events[shown_events:]],
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

    zeros, other_zero = _zeros_at_end(model, fast, pruners, exact_masks)
    named = dict(model.named_parameters())
    weights_total = sum(named[n].numel() for n in zeros)
    weights_zero = sum(zeros.values())
    params_after = sum(p.numel() for p in model.parameters())
    final = {
        "phase": final_phase,
        "weights": weights_total,
        "zero_weights": weights_zero,
        "sparsity": weights_zero / weights_total if weights_total else 0.0,
        "params": params_after,
        "params_sparsity": (weights_zero + other_zero) / params_after if params_after else 0.0,
        "groups": {
            group_of[id(m)]: pruning_group_summary(m, named, zeros, channel_groups.get(id(m)), removed_by_group)
            for m in pruners
        },
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
