"""Markdown table, JSON and the mAP-vs-speed-up plot for ``sparseyolo report``."""

from __future__ import annotations

from pathlib import Path

from sparseyolo.analysis.report import RunInfo
from sparseyolo.timing.output import markdown_table
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.plotting import save_figure
from sparseyolo.utils.system import engines_line, machine_line, system_info


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
    versions = engines_line(_engine_versions(runs, engines))
    lines.append(f"Machine: {machine_line()}" + (f"; {versions}" if versions else "") + ".")
    return "\n".join(lines)


def _engine_versions(runs: list[RunInfo], engines: list[str]) -> dict[str, str]:
    """engine -> version the benchmark ran (DeepSparse may run in its own venv), else the one installed."""
    from sparseyolo.utils.system import installed_engine_versions

    measured = {res.engine: res.engine_version for r in runs for res in r.bench.values() if res.engine_version}
    installed = installed_engine_versions()
    return {e: measured.get(e) or installed.get(e, "") for e in engines if measured.get(e) or installed.get(e)}


def report_json(runs: list[RunInfo], engines: list[str], base: RunInfo) -> dict:
    return {
        "baseline": base.name,
        "engines": engines,
        "system": system_info(_engine_versions(runs, engines)),
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
    ax.margins(x=0.3, y=0.1)  # room for the run labels right of the fastest points
    ax.axvline(1.0, color="grey", lw=0.6)
    ax.set_xlabel(f"speed-up vs. {base.name} (images/s ratio, same engine)")
    ax.set_ylabel("mAP@0.5")
    fig.suptitle("accuracy vs. speed", fontsize=11)
    versions = engines_line(_engine_versions(runs, engines))
    ax.set_title(machine_line() + (f"\n{versions}" if versions else ""), fontsize=7, color="dimgrey")
    ax.grid(alpha=0.3)
    # labels go last, on the final layout: their places are measured in pixels of the saved figure
    fig.tight_layout()
    place_labels(ax, [(name, x, y) for name, (x, y) in rightmost.items()], fontsize=7)
    if ax.lines:
        ax.legend(fontsize=8)  # "best" location, which also avoids the placed labels
    return save_figure(fig, path)


def place_labels(ax, labels: list[tuple[str, float, float]], fontsize: float = 7) -> list:
    """Annotate each ``(text, x, y)`` data point so that no two labels overlap, and return the annotations.

    Greedy placement in display pixels, measured with the figure's renderer: each label (in the order
    given) takes the cheapest free slot right (else left) of its point, stepping a label height up or
    down at a time, preferring slots that cover no marker and stay inside the axes. A label that had
    to move away from its point gets a thin leader line to it. Call it after the layout is final
    (``tight_layout``): the labels are kept out of later layout passes so the figure does not shift.
    """
    fig = ax.figure
    ax.set_xlim(ax.get_xlim())  # freeze autoscaling: pixel positions must not move after placement
    ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    pad = 1.0 * px_per_pt
    to_px = ax.transData.transform
    marker_boxes = []
    for line in ax.lines:  # the plotted points are obstacles too (not the reference lines)
        if line.get_linestyle() in ("None", "none", "", " ") and line.get_marker() not in (None, "None", ""):
            r = (line.get_markersize() / 2 + 1) * px_per_pt
            xy = to_px(line.get_xydata())
            marker_boxes += [(px - r, py - r, px + r, py + r) for px, py in xy]
    axbox = ax.get_window_extent(renderer).extents
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for text, x, y in labels:
        probe = ax.text(0, 0, text, fontsize=fontsize)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        w, h = bb.width, bb.height
        px, py = to_px((x, y))
        best = None
        for k in _steps(40):
            for side in (1, -1):
                gap = (4 if k == 0 else 10) * px_per_pt  # a leader line needs a little room
                x0 = px + gap if side > 0 else px - gap - w
                y0 = py + pad + k * (h + pad)  # k = 0: just above-right of the point, as before
                box = (x0, y0, x0 + w, y0 + h)
                if any(_overlap(box, b) for b in placed):
                    continue
                cost = abs(k) + (side < 0) * 0.5
                cost += 3 * sum(_overlap(box, b) for b in marker_boxes)
                inside = axbox[0] <= box[0] and box[2] <= axbox[2] and axbox[1] <= box[1] and box[3] <= axbox[3]
                cost += 0 if inside else 50
                if best is None or cost < best[0]:
                    best = (cost, k, side, box)
            if best is not None and k <= 0 and best[0] < abs(k) + 1:
                break  # both sides of this step tried: nothing further away can be cheaper
        if best is None:  # every slot within 40 steps taken (a crowd of labels): above them all
            y0 = max(b[3] for b in placed) + pad
            best = (0, 1, 1, (px + 10 * px_per_pt, y0, px + 10 * px_per_pt + w, y0 + h))
        _, k, side, box = best
        # a leader line leaves the label's left (right) middle, so the lines of stacked labels do not
        # cross the labels between them and their points
        leader = {"arrowstyle": "-", "lw": 0.5, "color": "grey", "shrinkA": 0, "shrinkB": 2}
        ann = ax.annotate(
            text,
            (x, y),
            textcoords="offset points",
            xytext=(((box[0] if side > 0 else box[2]) - px) / px_per_pt, (box[1] - py) / px_per_pt),
            ha="left" if side > 0 else "right",
            va="bottom",
            fontsize=fontsize,
            arrowprops=None if k == 0 else leader | {"relpos": (0.0 if side > 0 else 1.0, 0.5)},
        )
        ann.set_in_layout(False)
        placed.append(box)
        out.append(ann)
    return out


def _steps(n: int):
    """0, 1, -1, 2, -2, ... up to ``n``."""
    yield 0
    for i in range(1, n + 1):
        yield i
        yield -i


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
