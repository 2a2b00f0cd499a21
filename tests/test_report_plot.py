"""The ``sparseyolo report`` plot: run labels never overlap, even where points coincide."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sparseyolo.analysis import report_output
from sparseyolo.analysis.report import RunInfo
from sparseyolo.analysis.report_output import plot_report, report_json, report_notes
from sparseyolo.timing.runner import BenchResult

pytest.importorskip("matplotlib")


def _run(name: str, map50: float, ips: dict[str, float]) -> RunInfo:
    bench = {
        e: BenchResult(model=f"{name}.onnx", engine=e, engine_version="1.0", images_per_s=v, input_shapes={})
        for e, v in ips.items()
    }
    return RunInfo(name=name, dir=Path(name), map50=map50, bench=bench)


def _crowded_runs() -> list[RunInfo]:
    """The case of issue #13: pruned_quantized and its qlinear export land on (nearly) the same point,
    plus three runs on exactly the same point and a pair that nearly coincide elsewhere."""
    return [
        _run("dense", 0.520, {"onnxruntime": 100.0, "openvino": 120.0}),
        _run("pruned", 0.515, {"onnxruntime": 180.0, "openvino": 260.0}),
        _run("pruned_quantized", 0.500, {"onnxruntime": 300.0, "openvino": 410.0}),
        _run("pruned_quantized (qlinear)", 0.5001, {"onnxruntime": 301.0, "openvino": 411.0}),
        _run("same_a", 0.450, {"onnxruntime": 200.0}),
        _run("same_b", 0.450, {"onnxruntime": 200.0}),
        _run("same_c", 0.450, {"onnxruntime": 200.0}),
        _run("a much longer run name, to be sure", 0.4502, {"onnxruntime": 201.0}),
    ]


def _boxes(ax, renderer) -> dict[str, tuple[float, float, float, float]]:
    """Text extents (pixels) of the run labels; Text.get_window_extent leaves out a leader line."""
    from matplotlib.text import Annotation, Text

    return {
        t.get_text(): tuple(Text.get_window_extent(t, renderer).extents) for t in ax.texts if isinstance(t, Annotation)
    }


def _intersect(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.fixture
def saved_figure(monkeypatch):
    """The figure plot_report saves, with the label and legend extents measured by the renderer that
    drew the saved file (a draw_event handler runs at the end of savefig's draw)."""
    saved = []
    real_save = report_output.save_figure

    def keep(fig, path, dpi=None):
        def on_draw(event):
            ax = fig.axes[0]
            legend = ax.get_legend()
            saved.append(
                {
                    "fig": fig,
                    "labels": _boxes(ax, event.renderer),
                    "legend": legend.get_window_extent(event.renderer).extents if legend else None,
                    "size": (fig.bbox.width, fig.bbox.height),
                }
            )

        fig.canvas.mpl_connect("draw_event", on_draw)
        return real_save(fig, path, dpi)

    monkeypatch.setattr(report_output, "save_figure", keep)
    return saved


def test_labels_do_not_overlap(tmp_path, saved_figure):
    runs = _crowded_runs()
    engines = ["onnxruntime", "openvino"]
    out = plot_report(runs, engines, runs[0], tmp_path / "report.png")
    assert out.exists() and out.stat().st_size > 0
    drawn = saved_figure[-1]  # the last draw is the one written to the PNG
    ax = drawn["fig"].axes[0]
    boxes = drawn["labels"]
    assert set(boxes) == {r.name for r in runs}  # every run labelled once
    names = sorted(boxes)
    clashes = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if _intersect(boxes[a], boxes[b])]
    assert not clashes, f"overlapping labels: {clashes}"
    lb = drawn["legend"]
    assert lb is not None
    assert not [n for n in names if _intersect(boxes[n], lb)], "a label is under the legend"
    fig_box = (0, 0, *drawn["size"])
    for n in names:  # inside the saved image, not cut off
        b = boxes[n]
        assert fig_box[0] <= b[0] and b[2] <= fig_box[2] and fig_box[1] <= b[1] and b[3] <= fig_box[3], n
    # the subtitle says what machine the speeds were measured on
    assert "cores" in ax.get_title() and "onnxruntime 1.0" in ax.get_title()


def test_displaced_labels_get_leader_lines(tmp_path, saved_figure):
    runs = [_run(f"run{i}", 0.5, {"onnxruntime": 150.0}) for i in range(4)]
    plot_report([_run("base", 0.4, {"onnxruntime": 100.0}), *runs], ["onnxruntime"], runs[0], tmp_path / "p.png")
    ax = saved_figure[-1]["fig"].axes[0]
    anns = {t.get_text(): t for t in ax.texts if t.get_text().startswith("run")}
    beside = [n for n, t in anns.items() if t.arrow_patch is None]
    # of four labels on one point, at most two sit right next to it (right and left of it); the
    # others moved away and each has a leader line to the point
    assert 1 <= len(beside) <= 2 and len(anns) == 4
    boxes = saved_figure[-1]["labels"]
    names = sorted(anns)
    assert not [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if _intersect(boxes[a], boxes[b])]


def test_notes_and_json_record_the_machine():
    runs = _crowded_runs()[:2]
    notes = report_notes(runs, ["onnxruntime"], runs[0])
    line = next(ln for ln in notes.splitlines() if ln.startswith("Machine: "))
    assert re.search(r"\(\d+ cores?; ", line) and "onnxruntime 1.0" in line
    doc = report_json(runs, ["onnxruntime"], runs[0])
    json.dumps(doc)  # JSON-able
    system = doc["system"]
    assert system["engines"]["onnxruntime"] == "1.0"
    assert {"processor", "cpu_count", "isa_flags", "int8_isa", "machine"} <= set(system)


def test_place_labels_crowd_never_overlaps():
    """More labels on one point than the 40 steps up and down hold: the rest stack above them all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparseyolo.analysis.report_output import place_labels

    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.plot([1.0, 2.0], [0.5, 0.6], "o", ls="none")
    anns = place_labels(ax, [(f"label {i}", 1.0, 0.5) for i in range(170)] + [("other", 2.0, 0.6)])
    fig.canvas.draw()
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, renderer).extents for a in anns]
    plt.close(fig)
    assert len(boxes) == 171
    assert not [(i, j) for i in range(len(boxes)) for j in range(i) if _intersect(boxes[i], boxes[j])]
