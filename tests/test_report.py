"""Tests for ``sparseyolo report`` on fabricated run folders with real tiny ONNX files."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
import yaml
from helpers import LOGGED_COLUMNS, export_onnx, tiny_cnn

from sparseyolo.analysis.report import build_report, read_results_csv, read_run
from sparseyolo.analysis.report_output import pick_baseline, report_table
from sparseyolo.cli.main import main
from sparseyolo.utils.errors import SparseYoloError

KEYS = ["epoch", *LOGGED_COLUMNS]


def make_run(
    root: Path,
    name: str,
    maps: list[tuple[float, float]],
    sparsity: float,
    recipe: str | None,
    epochs: int,
    wall_s: float,
) -> Path:
    d = root / name
    (d / "weights").mkdir(parents=True)
    opt = d / "opt.yaml"
    opt.write_text(yaml.safe_dump({"weights": "x.pt", "recipe": recipe, "epochs": epochs, "img_size": 32}))
    with open(d / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(KEYS)
        for i, (m50, m) in enumerate(maps):
            w.writerow([i, 0.05, 0.02, 0.01, 0.5, 0.4, m50, m, 0.04, 0.02, 0.01, 0.01, 0.01, 0.01])
    export_onnx(tiny_cnn(ch=16, sparsity=sparsity), d / "weights" / "best.onnx")
    now = time.time()
    os.utime(opt, (now - wall_s, now - wall_s))
    os.utime(d / "results.csv", (now, now))
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dense = make_run(root, "exp", [(0.30, 0.15), (0.52, 0.31), (0.50, 0.30)], 0.0, None, 3, 3 * 3600 + 600)
    pruned = make_run(
        root,
        "exp2",
        [(0.40, 0.20), (float("nan"), float("nan")), (0.49, 0.29)],
        0.85,
        "recipes/yolov3-spp.pruned.md",
        5,
        125,
    )
    return dense, pruned


def test_read_results_csv_picks_best_fitness(runs):
    m50, m, n = read_results_csv(runs[0] / "results.csv")
    assert (m50, m, n) == (0.52, 0.31, 3)
    m50, m, n = read_results_csv(runs[1] / "results.csv")  # NaN row (no validation) skipped
    assert (m50, m, n) == (0.49, 0.29, 3)


def test_read_run(runs):
    r = read_run(runs[1])
    assert r.name == "exp2" and r.recipe == "recipes/yolov3-spp.pruned.md" and r.epochs == 5 and r.epochs_done == 3
    assert r.onnx == runs[1] / "weights" / "best.onnx" and r.weights is None
    assert r.wall_time_s == pytest.approx(125, abs=2)


def test_build_report_and_table(runs):
    out = build_report(list(runs), ["onnxruntime"], img=32, threads=1, time_s=0.1, warmup_s=0, progress=False)
    dense, pruned = out
    assert pruned.size_gzip < dense.size_gzip < dense.size_raw  # zeros compress
    assert dense.bench["onnxruntime"].status == "ok" and pruned.bench["onnxruntime"].images_per_s > 0
    table = report_table(out, ["onnxruntime"], pick_baseline(out, "first"))
    lines = table.splitlines()
    assert lines[0].startswith("| run") and "onnxruntime img/s" in lines[0]
    assert "| exp " in lines[2] and "1.00x" in lines[2] and "3h10m" in lines[2]
    assert "yolov3-spp.pruned.md" in lines[3] and "-3.0 pt" in lines[3] and "x smaller" in lines[3]
    assert "3/5" in lines[3] and "2m05s" in lines[3]


def test_cli_report_files(runs, tmp_path, capsys):
    md, js, png = tmp_path / "results.md", tmp_path / "r.json", tmp_path / "r.png"
    rc = main(
        [
            "report",
            str(runs[0]),
            str(runs[1]),
            "--img",
            "32",
            "--time",
            "0.1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--baseline",
            "exp2",
            "--out",
            str(md),
            "--json",
            str(js),
            "--plot",
            str(png),
            "--quiet",
        ]
    )
    assert rc == 0
    assert "Baseline: exp2" in md.read_text()
    doc = json.loads(js.read_text())
    assert doc["baseline"] == "exp2" and doc["runs"][1]["speedup"]["onnxruntime"] == pytest.approx(1.0)
    assert doc["runs"][0]["mAP50"] == 0.52
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_report_errors(runs, tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--time", "0.1"]) == 2
    assert "nope" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SparseYoloError, match="no weights/best.pt"):
        read_run(empty)
    assert main(["report", str(runs[0]), "--baseline", "exp9", "--time", "0.1"]) == 2
    assert "exp9" in capsys.readouterr().err
    bad = tmp_path / "bad"
    (bad / "weights").mkdir(parents=True)
    (bad / "weights" / "best.onnx").write_bytes(b"x")
    (bad / "results.csv").write_text("epoch,loss\n0,1\n")
    with pytest.raises(SparseYoloError, match="no mAP@0.5 column"):
        read_run(bad)


def test_read_run_takes_map_from_best_pt(tmp_path):
    """A pruning run's best-fitness CSV row can predate the end of pruning; best.pt's own metrics win."""
    from sparseyolo.models import build_model
    from sparseyolo.models.checkpoint import save_checkpoint

    d = make_run(tmp_path, "pruned", [(0.60, 0.40), (0.55, 0.33)], 0.5, "r.md", 2, 60)
    save_checkpoint(
        d / "weights" / "best.pt",
        model=build_model("yolov3-tiny", nc=3),
        epoch=1,
        metrics={"mAP50": 0.55, "mAP50-95": 0.33},
    )
    r = read_run(d)
    assert (r.map50, r.map50_95, r.map_source) == (0.55, 0.33, "best.pt")
    (d / "weights" / "best.pt").write_bytes(b"cut short")  # unreadable: fall back to results.csv
    r = read_run(d)
    assert (r.map50, r.map50_95, r.map_source) == (0.60, 0.40, "results.csv")


def test_qlinear_form_gets_its_own_row(runs, tmp_path):
    import shutil

    d = tmp_path / "pq"
    shutil.copytree(runs[1], d)
    shutil.copy(d / "weights" / "best.onnx", d / "weights" / "best.qlinear.onnx")
    out = build_report([runs[0], d], ["onnxruntime"], img=32, threads=1, time_s=0.1, warmup_s=0, progress=False)
    assert [r.name for r in out] == ["exp", "pq", "pq (qlinear)"]
    assert out[2].onnx.name == "best.qlinear.onnx" and out[2].bench["onnxruntime"].status == "ok"
    assert out[1].bench is not out[2].bench
