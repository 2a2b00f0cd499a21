"""``sparseyolo demo``: the whole pipeline end to end (smoke sizes by default, full size marked slow).

The demo must apply the channel pruned + quantized recipe: the exported model has half the filters,
about a quarter of the FLOPs, int8 weights, and is benchmarked at a larger size than it trains at."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from sparseyolo.cli.main import main
from sparseyolo.demo import DemoStageError, demo_config, run_demo
from sparseyolo.demo.pipeline import MARKER, prepare_out
from sparseyolo.demo.settings import CHANNEL_RECIPE, CHANNEL_SPARSITY, channel_recipe_args, round_to_for_width
from sparseyolo.recipe import Recipe
from sparseyolo.sparsity.channel_pruner import kept_channels
from sparseyolo.utils.errors import ConfigError

CPQ = "channel_pruned_quantized"
ROWS = ["baseline", CPQ, f"{CPQ} (qlinear)"]
STAGES = ["data", "baseline", CPQ, "export", "report"]


def _conv_filters(path: Path) -> dict[str, int]:
    """Output channels of every conv weight (4-D initializer; int8 for QDQ / QLinear) of an ONNX file,
    by initializer name, Detect output convs (``model.20``) left out."""
    model = onnx.load(str(path))
    return {
        init.name: int(init.dims[0])
        for init in model.graph.initializer
        if len(init.dims) == 4 and "model.20" not in init.name
    }


def _input_hw(path: Path) -> list[int]:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [dims[2].dim_value, dims[3].dim_value]


def _flops(path: Path) -> float:
    from sparseyolo.analysis.layers import analyze_onnx

    return float(analyze_onnx(path, img=tuple(_input_hw(path))).totals()["flops"])


def _table_rows(table: str) -> list[list[str]]:
    lines = [ln for ln in table.splitlines() if ln.startswith("|")][2:]  # skip header and rule
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory):
    """One ``sparseyolo demo --fast`` run shared by the tests below: (out folder, printed text)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", "--fast", "--out", str(out), "--threads", "1"])
    assert rc == 0, buf.getvalue()[-2000:]
    return out, buf.getvalue()


def _copy(out: Path, dst: Path) -> Path:
    shutil.copytree(out, dst)  # copy2 keeps modification times: read_run's wall time stays valid
    return dst


def test_fast_demo_end_to_end(fast_demo):
    out, printed = fast_demo
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/{len(STAGES)}] {stage}: done in" in printed
    # the report table: the baseline, the channel pruned + int8 run and its QLinearConv form, with numbers
    report_md = (out / "report.md").read_text()
    rows = _table_rows(report_md)
    assert [r[0] for r in rows] == ROWS
    assert rows[0][1] == "-" and rows[1][1] == rows[2][1] == CHANNEL_RECIPE
    for r in rows:
        assert 0.0 <= float(r[2]) <= 1.0  # mAP@0.5 of the exported ONNX
        assert float(r[6].split()[0]) > 0, r  # img/s measured, not "error"
    assert report_md.split("\n\n")[0] in printed
    cfg = demo_config(fast=True)
    assert cfg.bench_img > cfg.img
    w = {name: out / "runs" / name / "weights" for name in ROWS[:2]}
    big, small = f"best-{cfg.bench_img}.onnx", "best.onnx"
    # exported twice: at the training size (mAP) and at the larger benchmark size (speed)
    for name in ROWS[:2]:
        assert _input_hw(w[name] / small) == [cfg.img] * 2 and _input_hw(w[name] / big) == [cfg.bench_img] * 2
    # the channel recipe was applied: every prunable conv but the first (the narrowest, kept whole) lost
    # the recipe's share of its filters, in multiples of round_to ...
    base, cpq = _conv_filters(w["baseline"] / big), _conv_filters(w[CPQ] / big)
    assert len(base) == len(cpq) == 11
    r = round_to_for_width(cfg.width)
    first, *rest = sorted(base.values())
    assert sorted(cpq.values()) == sorted([first] + [kept_channels(c, CHANNEL_SPARSITY, r) for c in rest])
    assert all(c % r == 0 for c in cpq.values())
    # ... so under half the FLOPs (0.35 at the demo's width, 0.44 at the fast one's, where the whole first
    # conv weighs more), int8 (QDQ and QLinearConv), not merely zeros in a dense model
    assert _flops(w[CPQ] / big) < 0.5 * _flops(w["baseline"] / big)
    assert _flops(w[CPQ] / big.replace(".onnx", ".qlinear.onnx")) < 0.5 * _flops(w["baseline"] / big)
    ops = {n.op_type for n in onnx.load(str(w[CPQ] / big.replace(".onnx", ".qlinear.onnx"))).graph.node}
    assert "QLinearConv" in ops
    qdq_ops = {n.op_type for n in onnx.load(str(w[CPQ] / big)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= qdq_ops
    report = json.loads((out / "report.json").read_text())
    by_name = {r["name"]: r for r in report["runs"]}
    assert by_name[CPQ]["size_gzip"] < by_name["baseline"]["size_gzip"] / 4
    assert {r["map_source"] for r in report["runs"]} == {"onnx"}
    # the table's speed figures are the benchmark-size files, benchmarked at that size
    for r in report["runs"]:
        assert Path(r["onnx"]).name.startswith(f"best-{cfg.bench_img}")
        assert r["bench"]["onnxruntime"]["input_shapes"]["images"] == [1, 3, cfg.bench_img, cfg.bench_img]
    assert (out / "report.png").stat().st_size > 0
    assert (out / MARKER).exists()


def test_keep_reuses_finished_runs_and_refuses_other_settings(fast_demo, tmp_path):
    out = _copy(fast_demo[0], tmp_path / "demo")
    best = out / "runs" / "baseline" / "weights" / "best.pt"
    stamp = best.stat().st_mtime_ns
    again = run_demo(demo_config(fast=True, out=str(out), threads=1, keep=True))
    assert best.stat().st_mtime_ns == stamp  # not retrained
    assert [r.name for r in again.runs] == ROWS
    with pytest.raises(ConfigError, match="different settings .*epochs"):
        prepare_out(demo_config(fast=True, out=str(out), epochs=3, keep=True))
    # without --keep the old demo is replaced: nothing of it is left before the new run starts
    prepare_out(demo_config(fast=True, out=str(out)))
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_out_folder_not_made_by_the_demo_is_never_deleted(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not empty and was not made by 'sparseyolo demo'"):
        prepare_out(demo_config(fast=True, out=str(out)))
    assert (out / "thesis.tex").read_text() == "precious"
    assert main(["demo", "--fast", "--out", str(out)]) == 2


def test_failing_stage_is_named(fast_demo, tmp_path, monkeypatch, capsys):
    import sparseyolo.demo.pipeline as pipeline

    def broken_export(run_dir, img, bench_img):
        raise RuntimeError("simulated exporter crash")

    out = _copy(fast_demo[0], tmp_path / "demo")
    monkeypatch.setattr(pipeline, "export_run", broken_export)
    with pytest.raises(DemoStageError, match="stage 'export' failed: RuntimeError: simulated exporter crash"):
        run_demo(demo_config(fast=True, out=str(out), threads=1, keep=True))
    assert "RuntimeError" in (out / "demo-error.log").read_text()
    # through the CLI: one line naming the stage, exit code 2, no traceback
    assert main(["demo", "--fast", "--out", str(out), "--threads", "1", "--keep"]) == 2
    err = capsys.readouterr().err
    assert "sparseyolo demo: error: stage 'export' failed" in err and "Traceback" not in err


@pytest.mark.parametrize("epochs", [3, 4, 8, 12])
def test_recipe_schedule_fits_the_epochs(epochs):
    """prune -> thin -> recover -> QAT within the demo's epochs, and the shipped recipe accepts the args."""
    a = channel_recipe_args(epochs, 0.5)
    q_start = a["num_epochs"] - a["quantization_epochs"]
    assert a["num_epochs"] == epochs and 1 <= a["pruning_end_epoch"] < q_start < epochs
    manager = Recipe.load(CHANNEL_RECIPE, args=a).manager()
    (pruning,) = manager.pruning_modifiers
    (quant,) = [m for m in manager.modifiers if m.tag == "QuantizationModifier"]
    assert pruning.end_epoch == a["pruning_end_epoch"] and quant.start_epoch == q_start
    assert manager.max_epochs == epochs
    # the narrow demo model keeps the stem conv (and the Detect head) in float; the full-width recipe does not
    assert quant.submodules[0] == "model.1" and quant.submodules[-1] == "model.19"


def test_round_to_follows_the_width():
    # YOLOv3-tiny's first conv has 16 filters at full width and never fewer than 8
    assert [round_to_for_width(w) for w in (1.0, 0.75, 0.5, 0.25)] == [8, 8, 4, 4]


def test_bad_settings_name_the_flag():
    with pytest.raises(ConfigError, match="--img must be a multiple of 32"):
        demo_config(img=100)
    with pytest.raises(ConfigError, match="--sparse-epochs must be >= 3"):
        demo_config(sparse_epochs=2)
    with pytest.raises(ConfigError, match="--width"):
        demo_config(width=0)


@pytest.mark.slow
def test_full_demo_keeps_accuracy(tmp_path):
    """The real demo: the dense baseline learns the shapes; the channel pruned int8 model keeps most of it."""
    result = run_demo(demo_config(out=str(tmp_path / "demo")))
    maps = {r.name: r.map50 for r in result.runs}
    assert maps["baseline"] > 0.3
    assert maps[CPQ] > 0.6 * maps["baseline"]
    assert np.isclose(maps[f"{CPQ} (qlinear)"], maps[CPQ], atol=0.05)


# --- the recipe-overhead fix (manager re-zeroes weights at epoch boundaries, not every step) --------------
def test_recipe_overhead_bench_smoke(tmp_path):
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "bench" / "recipe_overhead.py"
    spec = importlib.util.spec_from_file_location("recipe_overhead", bench)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "o.json"
    assert (
        mod.main(
            [
                "--cfg",
                "yolov3-tiny",
                "--img",
                "64",
                "--batch",
                "1",
                "--iters",
                "1",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--mask-updates",
                "1",
                "--steps-per-epoch",
                "8",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    # the recipe updates masks every 0.5 epochs: one update per 4 of the 8 steps of an epoch
    assert res["ratio"] > 0 and res["steps_between_mask_updates"] == pytest.approx(4.0)
    # the amortised figures add exactly one mask update spread over the steps between updates. With
    # 4 steps that share is far above the JSON's rounding (0.01 ms), so a missing, doubled or
    # wrongly divided mask-update cost fails here; over the default 129.5 steps it would not.
    ms = res["ms_per_step"]
    share = res["mask_update_ms"] / res["steps_between_mask_updates"]
    assert share > 0.1, res
    for steady in ("B_recipe", "C_epoch_boundary"):
        assert ms[f"{steady}_amortised"] - ms[steady] == pytest.approx(share, abs=0.011), steady
    assert res["ratio"] == pytest.approx(ms["B_recipe_amortised"] / ms["A_plain"], rel=0.01, abs=1e-3)
