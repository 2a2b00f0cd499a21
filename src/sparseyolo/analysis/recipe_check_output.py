"""The text of a recipe dry run: the modifier table, the per-epoch schedule and the summary that
``sparseyolo recipe check`` prints for a :class:`~sparseyolo.analysis.recipe_check.RecipeCheck`."""

from __future__ import annotations

from collections.abc import Callable

from sparseyolo.analysis.recipe_check_describe import format_epoch
from sparseyolo.analysis.recipe_check_result import EpochRow, RecipeCheck


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _gflops(value: float) -> str:
    return f"{value / 1e9:.2f} GFLOPs" if value >= 1e8 else f"{value / 1e6:.2f} MFLOPs"


def _count(n: int, kind: str) -> str:
    """``3 params``, ``1 param``, ``1 param group``."""
    if n == 1:
        kind = " ".join(w[:-1] if w in ("params", "groups", "submodules") else w for w in kind.split())
    return f"{n} {kind}"


def _columns(rows: list[EpochRow], attr: str, names: list[str], label: str) -> list[tuple[str, Callable]]:
    """One column when every parameter group has the same value in every row, else one per group."""
    same = all(len(set(getattr(r, attr))) <= 1 for r in rows)
    if same:
        return [(label, lambda r: getattr(r, attr)[0] if getattr(r, attr) else None)]
    return [(f"{label} {n}", lambda r, i=i: getattr(r, attr)[i]) for i, n in enumerate(names)]


def schedule_table(result: RecipeCheck, all_epochs: bool = False) -> str:
    """The per-epoch table; runs of epochs where nothing changes share a row unless ``all_epochs``."""
    from sparseyolo.utils.tables import markdown_table

    cols: list[tuple[str, Callable]] = [("phase", lambda r: r.phase)]
    if result.sets_lr:
        cols += [
            (h, lambda r, f=f: _num(f(r), ".4g")) for h, f in _columns(result.rows, "lr", result.param_groups, "lr")
        ]
    if result.sets_weight_decay:
        cols += [
            (h, lambda r, f=f: _num(f(r), "g"))
            for h, f in _columns(result.rows, "weight_decay", result.param_groups, "wd")
        ]
    cols += [(g, lambda r, g=g: _num(r.targets.get(g), ".3f")) for g in result.groups]
    cols.append(("events", lambda r: "; ".join(r.events)))

    body: list[list[str]] = []
    start: EpochRow | None = None
    prev_key: tuple | None = None
    last = result.epochs

    def flush(first: EpochRow, end_epoch: int) -> None:
        label = str(first.epoch) if end_epoch == first.epoch else f"{first.epoch}-{end_epoch}"
        body.append([label] + [str(f(first)) for _, f in cols])

    pending_end = None
    for r in result.rows:
        cells = tuple(str(f(r)) for h, f in cols if h != "events")
        key = (cells, r.epoch == last)
        mergeable = not all_epochs and start is not None and key == prev_key and not r.events
        if mergeable:
            pending_end = r.epoch
            continue
        if start is not None:
            flush(start, pending_end)
        start, prev_key, pending_end = r, key, r.epoch
    if start is not None:
        flush(start, pending_end)
    if body and result.rows and result.rows[-1].epoch == last and last > 0:
        body[-1][0] = f"{body[-1][0]} (end)"
    return markdown_table(["epoch"] + [h for h, _ in cols], body, align="r" + "l" * len(cols))


def modifiers_table(result: RecipeCheck, shown_names: int = 3) -> str:
    from sparseyolo.utils.tables import markdown_table

    body = []
    for m in result.modifiers:
        epochs = format_epoch(m.start_epoch)
        if m.end_epoch is not None:
            epochs += f" - {format_epoch(m.end_epoch)}"
        matched = _count(m.matched, m.kind) if m.kind else ""
        if m.numel:
            matched += f" ({m.numel:,} weights)"
        names = ", ".join(m.names[:shown_names]) + (
            f", ... (+{len(m.names) - shown_names})" if len(m.names) > shown_names else ""
        )
        line = m.where.rsplit(":", 1)[-1]
        tag = f"{m.tag} [{m.group}]" if m.group else m.tag
        body.append([str(m.index), tag, line, epochs, matched, names, m.settings])
    return markdown_table(
        ["#", "modifier", "line", "epochs", "matched", "first names", "settings"], body, align="rlrllll"
    )


def format_check(result: RecipeCheck, all_epochs: bool = False) -> str:
    """The report ``sparseyolo recipe check`` prints."""
    lines = [f"recipe: {result.recipe}" + (f" with {result.recipe_args}" if result.recipe_args else "")]
    lines.append(f"model: {result.model} ({result.params:,} parameters)")
    spe = f"{result.steps_per_epoch} steps per epoch"
    if result.steps_per_epoch_assumed:
        spe += " (assumed; --steps-per-epoch sets the real count: batches per epoch / gradient accumulation)"
    how = f"every step ({result.total_steps:,})"
    if result.steps_per_epoch_run != result.steps_per_epoch:
        how = f"{result.steps_per_epoch_run} steps per epoch ({result.total_steps:,} steps)"
    lines.append(
        f"dry run: {result.epochs} epochs x {spe}; stepped {how}, without data, on a copy of the model; "
        f"magnitude masks {result.masks}; {result.seconds:.1f} s"
    )
    lines += ["", "modifiers:", modifiers_table(result), "", "schedule (state at the start of each epoch):"]
    lines.append(schedule_table(result, all_epochs))
    lines.append("")

    q = result.qat
    if q is None:
        lines.append("QAT: none")
    elif q["started_at"] is None:
        lines.append(f"QAT: starts at epoch {q['start_epoch']:g}, after the epochs stepped through")
    else:
        subs = "the whole model" if not q["submodules"] else f"{len(q['submodules'])} submodules"
        lines.append(
            f"QAT: starts at epoch {q['started_at']:g} ({subs}; {q['quantized_layers']} of {q['layers']} "
            f"conv/linear layers fake-quantized); BN statistics frozen at epoch "
            f"{format_epoch(q['freeze_bn_stats_epoch'])}, observers off at epoch "
            f"{format_epoch(q['disable_quantization_observer_epoch'])}"
        )
    if not result.thinning:
        structured = any("mask filter" in m.settings or "mask channel" in m.settings for m in result.modifiers)
        lines.append("thinning: not reached" if structured else "thinning: none (no filter / channel pruning)")
    for t in result.thinning:
        lines.append(
            f"thinning: at epoch {t['epoch']:g}, {t['channels_removed']} channels cut out of {t['groups']} "
            f"groups ({t['layers_changed']} layers changed)"
        )
    f = result.final
    groups = ", ".join(
        f"{g} {v['channels_removed']} of {v['channels']} channels removed"
        if v.get("channels")
        else f"{g} {_num(v['sparsity'], '.3f')}"
        for g, v in f["groups"].items()
    )
    lines.append(
        f"final sparsity: {f['sparsity']:.1%} of the conv/linear weights are zero "
        f"({f['zero_weights']:,} of {f['weights']:,}); {f['params_sparsity']:.1%} of all "
        f"{f['params']:,} parameters" + (f"; {groups}" if groups else "")
    )
    fl = result.flops
    img = f"{fl['img'][0]}x{fl['img'][1]}"
    text = f"FLOPs at {img}: {_gflops(fl['before'])} before"
    if fl["thinned"]:
        ratio = fl["before"] / fl["after"] if fl["after"] else float("inf")
        text += (
            f", {_gflops(fl['after'])} after thinning ({ratio:.2f}x fewer; parameters "
            f"{fl['params_before']:,} -> {fl['params_after']:,})"
        )
    else:
        text += f", {_gflops(fl['after'])} after (dense: no channels removed)"
    if fl["after_sparse"] < fl["after"] * (1 - 1e-6):
        ratio = fl["before"] / fl["after_sparse"] if fl["after_sparse"] else float("inf")
        text += (
            f"; {_gflops(fl['after_sparse'])} skipping the zeros ({ratio:.2f}x, at best, on a sparsity-aware engine)"
        )
    lines.append(text)
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
