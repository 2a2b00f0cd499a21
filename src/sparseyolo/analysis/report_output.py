"""Markdown table, JSON and the mAP-vs-speed-up plot for ``sparseyolo report``."""

from __future__ import annotations

from pathlib import Path

from sparseyolo.analysis.report import RunInfo
from sparseyolo.benchmark.output import markdown_table
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.plotting import save_figure


def pick_baseline(runs: list[RunInfo], spec: str = "first") -> RunInfo:
    """``first`` | ``last`` | a run name | a 0-based index."""
    if spec == "first":
        return runs[0]
    if spec == "last":
        return runs[-1]
    for r in runs:
        if spec in (r.name, str(r.dir), str(r.dir).rstrip("/")):
            return r
    if spec.isdigit() and int(spec) < len(runs):
        return runs[int(spec)]
    raise SparseYoloError(f"--baseline {spec!r} matches no run ({', '.join(r.name for r in runs)})")


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MB"


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    h, rem = divmod(int(round(s)), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def speedup(run: RunInfo, base: RunInfo, engine: str) -> float | None:
    r, b = run.bench.get(engine), base.bench.get(engine)
    if r is None or b is None or not r.images_per_s or not b.images_per_s:
        return None
    return r.images_per_s / b.images_per_s


def report_table(runs: list[RunInfo], engines: list[str], base: RunInfo) -> str:
    """The results table: one row per run, ratios (x) to ``base`` for size and per-engine speed."""
    header = ["run", "recipe", "mAP@0.5", "vs base", "size (gzip)", "vs base"]
    header += [f"{e} img/s" for e in engines] + ["epochs", "wall time"]
    rows = []
    for r in runs:
        d_map = "" if r.map50 is None or base.map50 is None else f"{100 * (r.map50 - base.map50):+.1f} pt"
        size_x = "" if not r.size_gzip or not base.size_gzip else f"{base.size_gzip / r.size_gzip:.2f}x smaller"
        row = [
            r.name,
            Path(r.recipe).name if r.recipe else "-",
            "?" if r.map50 is None else f"{r.map50:.3f}",
            d_map,
            _mb(r.size_gzip),
            size_x,
        ]
        for e in engines:
            res = r.bench.get(e)
            if res is None or res.status != "ok":
                row.append(res.status if res is not None else "-")
            else:
                x = speedup(r, base, e)
                row.append(f"{res.images_per_s:.1f}" + (f" ({x:.2f}x)" if x is not None else ""))
        epochs = (
            "?"
            if r.epochs_done is None
            else (f"{r.epochs_done}" if r.epochs in (None, r.epochs_done) else f"{r.epochs_done}/{r.epochs}")
        )
        rows.append(row + [epochs, _duration(r.wall_time_s)])
    return markdown_table(header, rows, align="ll" + "r" * (len(header) - 2))


def report_notes(runs: list[RunInfo], engines: list[str], base: RunInfo) -> str:
    lines = [
        f"Baseline: {base.name}. Speed-ups are images/s ratios to the baseline on the same engine; "
        "all models and engines were benchmarked interleaved in one process.",
        "mAP from "
        + ", ".join(sorted({r.map_source or "n/a" for r in runs}))
        + "; size = gzip -9 of the ONNX file; wall time from opt.yaml to the last results.csv write.",
    ]
    missing = {res.engine: res.message for r in runs for res in r.bench.values() if res.status != "ok"}
    lines += [f"{e}: {m}" for e, m in missing.items()]
    sample = next((res for r in runs for res in r.bench.values() if res.status == "ok"), None)
    if sample is not None:
        lines.append(f"Input {sample.input_shapes}, threads {sample.threads or 'default'}.")
    return "\n".join(lines)


def report_json(runs: list[RunInfo], engines: list[str], base: RunInfo) -> dict:
    return {
        "baseline": base.name,
        "engines": engines,
        "runs": [
            {
                "name": r.name,
                "dir": str(r.dir),
                "onnx": str(r.onnx),
                "recipe": r.recipe,
                "mAP50": r.map50,
                "mAP50-95": r.map50_95,
                "map_source": r.map_source,
                "size_raw": r.size_raw,
                "size_gzip": r.size_gzip,
                "epochs": r.epochs,
                "epochs_done": r.epochs_done,
                "wall_time_s": r.wall_time_s,
                "bench": {e: res.to_dict() for e, res in r.bench.items()},
                "speedup": {e: speedup(r, base, e) for e in engines},
            }
            for r in runs
        ],
    }


def plot_report(runs: list[RunInfo], engines: list[str], base: RunInfo, path: str | Path) -> Path:
    """mAP@0.5 (y) against speed-up vs. the baseline (x), one marker style per engine, runs labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    markers = "osD^v<>"
    rightmost: dict[str, tuple[float, float]] = {}  # each run is labelled once, at its fastest engine
    for i, e in enumerate(engines):
        pts = [(speedup(r, base, e), r.map50, r.name) for r in runs]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], ls="none", label=e)
        for x, y, name in pts:
            if name not in rightmost or x > rightmost[name][0]:
                rightmost[name] = (x, y)
    xs, ys = [x for x, _ in rightmost.values()], [y for _, y in rightmost.values()]
    x_tol = 0.05 * ((max(xs) - min(xs)) or 1.0) if xs else 0.0
    y_tol = 0.05 * ((max(ys) - min(ys)) or 1.0) if ys else 0.0
    placed: list[tuple[float, float]] = []
    for name, (x, y) in rightmost.items():
        # stack labels whose points nearly coincide instead of printing them over each other
        near = sum(abs(x - px) <= x_tol and abs(y - py) <= y_tol for px, py in placed)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4 + 9 * near), fontsize=7)
        placed.append((x, y))
    ax.margins(x=0.3, y=0.1)  # room for the run labels right of the fastest points
    ax.axvline(1.0, color="grey", lw=0.6)
    ax.set_xlabel(f"speed-up vs. {base.name} (images/s ratio, same engine)")
    ax.set_ylabel("mAP@0.5")
    ax.set_title("accuracy vs. speed")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
