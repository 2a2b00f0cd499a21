"""``sparseyolo analyze`` of a thinned checkpoint: kept/original channels per layer and the FLOPs and
parameters before and after thinning (table, summary, analysis.json, layers.csv)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import thinned_model

from sparseyolo.analysis.layers import analyze_module
from sparseyolo.cli.main import main
from sparseyolo.models import build_model
from sparseyolo.models.checkpoint import save_checkpoint

IMG = 416


@pytest.fixture(scope="module")
def thinned(tmp_path_factory):
    """(thinned yolov3-tiny, its full-width build, checkpoint path) with random weights."""
    model = thinned_model("yolov3-tiny")
    assert model.yaml["widths"]
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "thinned.pt", model=model, names=model.names, epoch=0)
    return model.eval(), build_model("yolov3-tiny", nc=3).eval(), path


def convs(model) -> dict[str, torch.nn.Conv2d]:
    return {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run_analyze(path, save_dir, capsys) -> str:
    assert main(["analyze", str(path), "--img", str(IMG), "--save-dir", str(save_dir), "--no-plot"]) == 0
    return capsys.readouterr().out


def table_rows(out: str) -> dict[str, dict[str, str]]:
    """The per-layer Markdown table as ``{layer: {column: cell}}``."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=False)) for line in lines[2:]]
    return {r["layer"]: r for r in rows}


def test_table_and_summary_show_channels_and_flops(thinned, tmp_path, capsys):
    model, full, path = thinned
    out = run_analyze(path, tmp_path / "an", capsys)
    rows = table_rows(out)
    kept, original = convs(model), convs(full)
    for name, conv in kept.items():
        assert rows[name]["channels"] == f"{conv.out_channels}/{original[name].out_channels}", name
    assert rows["model.0.conv.weight"]["channels"] == "8/16"
    assert rows["model.20.m.0.weight"]["channels"] == "24/24"  # the detection convs follow nc
    total = next(r for k, r in rows.items() if k.startswith("total"))
    assert total["channels"] == (
        f"{sum(c.out_channels for c in kept.values())}/" f"{sum(c.out_channels for c in original.values())}"
    )
    before, after = full.flops(IMG), model.flops(IMG)
    assert before / after > 3
    expected = (
        f"thinned: {before:.2f} -> {after:.2f} GFLOPs at {IMG}x{IMG} ({before / after:.2f}x fewer), "
        f"{params(full):,} -> {params(model):,} parameters"
    )
    assert expected in out


def test_json_and_csv_carry_before_and_after(thinned, tmp_path, capsys):
    model, full, path = thinned
    run_analyze(path, tmp_path / "an", capsys)
    data = json.loads((tmp_path / "an" / "analysis.json").read_text())
    th = data["thinning"]
    assert th["flops_before"] == pytest.approx(full.flops(IMG) * 1e9, rel=1e-9)
    assert th["flops_after"] == pytest.approx(model.flops(IMG) * 1e9, rel=1e-9)
    assert th["flops_after"] == pytest.approx(data["totals"]["flops"])
    assert th["flops_ratio"] == pytest.approx(full.flops(IMG) / model.flops(IMG), rel=1e-9)
    assert (th["params_before"], th["params_after"]) == (params(full), params(model))
    assert th["layers_thinned"] == len(data["layers"])  # every conv lost inputs or outputs
    original = convs(full)
    for layer in data["layers"]:
        conv = original[layer["name"]]
        assert layer["original_shape"] == list(conv.weight.shape)
        assert layer["channels"] == [layer["shape"][0], conv.out_channels]
        assert layer["original_flops"] > layer["flops"] or layer["channels"][0] == layer["channels"][1]
    with open(tmp_path / "an" / "layers.csv") as f:
        first = next(csv.DictReader(f))
    assert first["name"] == "model.0.conv.weight" and first["channels"] == "8/16"
    assert first["original_shape"] == "16x3x3x3"


def test_only_thinned_models_get_the_thinning_figures(thinned, tmp_path, capsys):
    model, full, path = thinned
    a = analyze_module(model, (IMG, IMG))
    assert a.thinning()["flops_before"] == pytest.approx(full.flops(IMG) * 1e9, rel=1e-9)
    assert [layer.channels for layer in a.layers][:2] == [(8, 16), (16, 32)]
    plain = save_checkpoint(tmp_path / "plain.pt", model=full, names=full.names, epoch=0)
    out = run_analyze(plain, tmp_path / "plain", capsys)
    assert "thinned:" not in out and "channels" not in table_rows(out)["model.0.conv.weight"]
    data = json.loads((tmp_path / "plain" / "analysis.json").read_text())
    assert "thinning" not in data and "original_shape" not in data["layers"][0]
    assert analyze_module(full, (IMG, IMG)).thinning() is None
