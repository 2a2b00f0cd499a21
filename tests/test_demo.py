"""``sparseyolo demo``: the whole pipeline end to end (smoke sizes by default, full size marked slow)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparseyolo.cli.main import main
from sparseyolo.demo import DemoStageError, demo_config, run_demo
from sparseyolo.demo.pipeline import MARKER, prepare_out
from sparseyolo.demo.settings import pruned_quantized_recipe_args, pruned_recipe_args
from sparseyolo.utils.errors import ConfigError

ROWS = ["baseline", "pruned", "pruned_quantized", "pruned_quantized (qlinear)"]


def _conv_weight_sparsity(path: Path) -> float:
    """Zeros among the 4-D initializers (conv weights; int8 for QDQ / QLinear) of an ONNX file."""
    model = onnx.load(str(path))
    zeros = total = 0
    for init in model.graph.initializer:
        if len(init.dims) == 4:
            w = numpy_helper.to_array(init)
            zeros += int((w == 0).sum())
            total += w.size
    return zeros / total


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
    for i, stage in enumerate(["data", "baseline", "pruned", "pruned_quantized", "export", "report"], 1):
        assert f"[{i}/6] {stage}: done in" in printed
    # the report table: one row per run plus the QLinearConv form of the QAT run, with numbers
    report_md = (out / "report.md").read_text()
    rows = _table_rows(report_md)
    assert [r[0] for r in rows] == ROWS
    assert rows[1][1] == "yolov3-tiny.pruned" and rows[2][1] == "yolov3-tiny.pruned_quantized"
    for r in rows:
        assert 0.0 <= float(r[2]) <= 1.0                          # mAP@0.5 of the exported ONNX
        assert float(r[6].split()[0]) > 0, r                      # img/s measured, not "error"
    assert report_md.split("\n\n")[0] in printed
    # the exported files: pruned ones are actually sparse, the baseline is dense, QAT is int8
    w = {name: out / "runs" / name / "weights" for name in ROWS[:3]}
    assert _conv_weight_sparsity(w["baseline"] / "best.onnx") < 0.05
    assert _conv_weight_sparsity(w["pruned"] / "best.onnx") > 0.7
    assert _conv_weight_sparsity(w["pruned_quantized"] / "best.qlinear.onnx") > 0.7
    ops = {n.op_type for n in onnx.load(str(w["pruned_quantized"] / "best.qlinear.onnx")).graph.node}
    assert "QLinearConv" in ops
    report = json.loads((out / "report.json").read_text())
    sizes = {r["name"]: r["size_gzip"] for r in report["runs"]}
    assert sizes["pruned_quantized"] < sizes["pruned"] < sizes["baseline"]
    assert {r["map_source"] for r in report["runs"]} == {"onnx"}
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

    def broken_export(run_dir, img):
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


@pytest.mark.parametrize("epochs", [2, 3, 4, 8, 12])
def test_recipe_schedules_fit_the_epochs(epochs):
    p = pruned_recipe_args(epochs)
    assert p["num_epochs"] == epochs and 1 <= p["pruning_end_epoch"] < epochs
    q = pruned_quantized_recipe_args(epochs)
    assert 1 <= q["pruning_end_epoch"] <= q["quantization_start_epoch"] < epochs
    if epochs >= 4:  # a recovery phase between pruning and QAT
        assert q["pruning_end_epoch"] < q["quantization_start_epoch"]


def test_bad_settings_name_the_flag():
    with pytest.raises(ConfigError, match="--img must be a multiple of 32"):
        demo_config(img=100)
    with pytest.raises(ConfigError, match="--sparse-epochs"):
        demo_config(sparse_epochs=1)
    with pytest.raises(ConfigError, match="--width"):
        demo_config(width=0)


@pytest.mark.slow
def test_full_demo_keeps_accuracy(tmp_path):
    """The real demo: the dense baseline learns the shapes; the sparse models keep most of it."""
    result = run_demo(demo_config(out=str(tmp_path / "demo")))
    maps = {r.name: r.map50 for r in result.runs}
    assert maps["baseline"] > 0.3
    assert maps["pruned"] > 0.6 * maps["baseline"]
    assert maps["pruned_quantized"] > 0.5 * maps["baseline"]
    assert np.isclose(maps["pruned_quantized (qlinear)"], maps["pruned_quantized"], atol=0.05)


# --- the recipe-overhead fix (manager re-zeroes weights at epoch boundaries, not every step) --------------
def test_recipe_overhead_bench_smoke(tmp_path):
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "bench" / "recipe_overhead.py"
    spec = importlib.util.spec_from_file_location("recipe_overhead", bench)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "o.json"
    assert mod.main(["--cfg", "yolov3-tiny", "--img", "64", "--batch", "1", "--iters", "1", "--repeats", "1",
                     "--warmup", "0", "--mask-updates", "1", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["ratio"] > 0 and res["steps_between_mask_updates"] == pytest.approx(129.5)
    assert res["ms_per_step"]["B_recipe_amortised"] >= res["ms_per_step"]["B_recipe"]
