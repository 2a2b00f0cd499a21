"""Tables, files and the sparsity bar chart for ``sparseyolo analyze``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sparseyolo.analysis.layers import ModelAnalysis
from sparseyolo.timing.output import markdown_table
from sparseyolo.utils.io import atomic_write_text
from sparseyolo.utils.plotting import save_figure


def human(n: float | None, unit: str = "") -> str:
    """12_345_678 -> '12.35M' (K, M, G, T)."""
    if n is None:
        return "?"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def analysis_table(a: ModelAnalysis) -> str:
    """Per-layer Markdown table with a totals row; a thinned model gets two more columns: output
    channels kept/original and the layer's FLOPs before thinning."""
    header = ["#", "layer", "op", "weight shape", "params", "sparsity", "FLOPs", "FLOPs sparse", "quant"]
    rows = [
        [
            i,
            l.name,
            l.op,
            "x".join(map(str, l.shape)),
            human(l.params),
            f"{l.sparsity:.1%}",
            human(l.flops),
            human(l.sparse_flops),
            "yes" if l.quantized else "no",
        ]
        for i, l in enumerate(a.layers)
    ]
    t = a.totals()
    rows.append(
        [
            "",
            f"total ({t['layers']} layers; model params {human(t['params'])})",
            "",
            "",
            human(t["layer_params"]),
            f"{t['sparsity']:.1%}",
            human(t["flops"]),
            human(t["sparse_flops"]),
            f"{t['quantized_layers']}/{t['layers']}",
        ]
    )
    align = "rllrrrrrr"
    th = a.thinning()
    if th is not None:
        header = _with_thinning(header, ("channels", "FLOPs unthinned"))
        cells = [(_channels(layer.channels), human(layer.original_flops)) for layer in a.layers]
        cells.append((_channels((th["channels_kept"], th["channels_original"])), human(th["flops_before"])))
        rows = [_with_thinning(row, extra) for row, extra in zip(rows, cells, strict=False)]
        align = "".join(_with_thinning(list(align), ("r", "r")))
    return markdown_table(header, rows, align=align)


def _with_thinning(cells: list, extra: tuple) -> list:
    """``cells`` of a table row with the thinning cells inserted: channels after the weight shape,
    the FLOPs before thinning before the FLOPs."""
    return cells[:4] + [extra[0]] + cells[4:6] + [extra[1]] + cells[6:]


def _channels(kept_original: tuple[int, int] | None) -> str:
    return "?" if kept_original is None else f"{kept_original[0]}/{kept_original[1]}"


def summary_line(a: ModelAnalysis) -> str:
    """One line of totals; a thinned model gets a second line (:func:`thinning_line`)."""
    t = a.totals()
    red = f", {t['flops_reduction']:.2f}x fewer FLOPs if all zeros were skipped" if t["flops_reduction"] else ""
    line = (
        f"{Path(a.source).name} at {a.img[0]}x{a.img[1]}: {human(t['params'])} parameters, "
        f"{t['sparsity']:.1%} of conv/linear weights are zero, {human(t['flops'])}FLOPs dense -> "
        f"{human(t['sparse_flops'])}FLOPs sparse{red}; {t['quantized_layers']}/{t['layers']} layers quantized"
    )
    thinned = thinning_line(a)
    return line if thinned is None else f"{line}\n{thinned}"


def thinning_line(a: ModelAnalysis) -> str | None:
    """``thinned: 5.45 -> 1.40 GFLOPs at 416x416 (3.88x fewer), 8,674,496 -> 2,174,968 parameters, ...``;
    None for a model that was not thinned."""
    th = a.thinning()
    if th is None:
        return None
    ratio = f" ({th['flops_ratio']:.2f}x fewer)" if th["flops_ratio"] else ""
    return (
        f"thinned: {_gflops(th['flops_before'])} -> {_gflops(th['flops_after'])} GFLOPs at {a.img[0]}x{a.img[1]}"
        f"{ratio}, {th['params_before']:,} -> {th['params_after']:,} parameters, "
        f"{th['channels_kept']:,}/{th['channels_original']:,} output channels kept "
        f"({th['layers_thinned']}/{len(a.layers)} layers thinned)"
    )


def _gflops(flops: float | None) -> str:
    return "?" if flops is None else f"{flops / 1e9:.2f}"


def layers_csv(a: ModelAnalysis) -> str:
    buf = io.StringIO()
    fields = ["name", "op", "shape", "params", "zeros", "sparsity", "out_shape", "flops", "sparse_flops", "quantized"]
    if a.thinning() is not None:
        fields += ["channels", "original_shape", "original_flops"]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for l in a.layers:
        row = l.to_dict()
        for key in ("shape", "out_shape", "original_shape"):
            if key in row:
                row[key] = "x".join(map(str, row[key])) if row[key] else ""
        if l.channels is not None:
            row["channels"] = _channels(l.channels)
        w.writerow(row)
    return buf.getvalue()


def plot_sparsity(a: ModelAnalysis, path: str | Path) -> Path:
    """Bar chart of per-layer sparsity (quantized layers hatched), one bar per layer in model order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(a.layers)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * n + 2), 4.5), dpi=120)
    xs = range(n)
    colors = ["tab:orange" if l.quantized else "tab:blue" for l in a.layers]
    ax.bar(xs, [l.sparsity * 100 for l in a.layers], color=colors, width=0.8)
    t = a.totals()
    line = ax.axhline(t["sparsity"] * 100, color="k", lw=0.8, ls="--", label=f"overall {t['sparsity']:.1%}")
    ax.set_ylim(0, 100)
    ax.set_ylabel("sparsity (% zero weights)")
    ax.set_xlabel("layer")
    step = max(1, n // 40)
    ax.set_xticks(list(xs)[::step])
    ax.set_xticklabels([_short(l.name) for l in a.layers][::step], rotation=90, fontsize=6)
    from matplotlib.patches import Patch

    handles = [line] + [
        Patch(color=c, label=lab)
        for c, lab, on in (
            ("tab:blue", "float", not all(l.quantized for l in a.layers)),
            ("tab:orange", "quantized", any(l.quantized for l in a.layers)),
        )
        if on
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_title(f"{Path(a.source).name}: per-layer sparsity")
    return save_figure(fig, path)


def _short(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name[-28:]


def save_analysis(a: ModelAnalysis, save_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """Write analysis.json, layers.csv, layers.md and (``plot``) sparsity.png into ``save_dir``."""
    d = Path(save_dir)
    files = {
        "json": atomic_write_text(d / "analysis.json", json.dumps(a.to_dict(), indent=2)),
        "csv": atomic_write_text(d / "layers.csv", layers_csv(a)),
        "markdown": atomic_write_text(d / "layers.md", analysis_table(a) + "\n\n" + summary_line(a) + "\n"),
    }
    if plot:
        files["plot"] = plot_sparsity(a, d / "sparsity.png")
    return files
