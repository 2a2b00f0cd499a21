"""``sparseyolo analyze`` / ``report`` on real sparseyolo checkpoints (YOLOv3-tiny built from its YAML)."""

from __future__ import annotations

import json

import pytest
import torch

from sparseyolo.analysis.layers import analyze_module, analyze_onnx
from sparseyolo.analysis.report import build_report
from sparseyolo.cli.main import main
from sparseyolo.models import build_model
from sparseyolo.models.checkpoint import save_checkpoint
from sparseyolo.runtime.loading import load_torch_model
from sparseyolo.sparsity.masks import magnitude_prune_

PRUNED = {"model.2.conv.weight": 0.5, "model.4.conv.weight": 0.8}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("yolov3-tiny", nc=3)
    params = dict(model.named_parameters())
    for name, s in PRUNED.items():
        magnitude_prune_(params[name].data, s)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, model=model, epoch=3)
    return path


def test_analyze_checkpoint_cli(ckpt, tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["analyze", str(ckpt), "--img", "64", "--save-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model.0.conv.weight" in text and "model.20.m.0.weight" in text
    doc = json.loads((out / "analysis.json").read_text())
    by_name = {l["name"]: l for l in doc["layers"]}
    for name, s in PRUNED.items():
        assert by_name[name]["sparsity"] == pytest.approx(s, abs=1e-3)
    assert by_name["model.0.conv.weight"]["out_shape"] == [1, 16, 64, 64]
    assert (out / "sparsity.png").stat().st_size > 1000


def test_checkpoint_and_its_onnx_agree(ckpt, tmp_path):
    import sparseyolo.exporters.onnx as export

    model, _ = load_torch_model(ckpt)
    a_pt = analyze_module(model, (64, 64))
    onnx_path = export.export_onnx(model, tmp_path / "m.onnx", img_size=(64, 64))
    a_onnx = analyze_onnx(onnx_path)
    assert [l.name for l in a_onnx.layers] == [l.name for l in a_pt.layers]  # initializer names follow torch
    assert [l.flops for l in a_onnx.layers] == [l.flops for l in a_pt.layers]
    assert a_onnx.totals()["zeros"] == a_pt.totals()["zeros"]


def test_qat_checkpoint_layers_quantized(tmp_path):
    from sparseyolo.quantization import QATConfig, prepare_qat

    model = build_model("yolov3-tiny", nc=3)
    prepare_qat(model, None, QATConfig())
    path = tmp_path / "qat.pt"
    save_checkpoint(path, model=model, recipe_state={"qat": {"submodules": None, "config": {}}})
    qmodel, _ = load_torch_model(path, use_ema=False)
    a = analyze_module(qmodel, (64, 64))
    assert all(l.quantized for l in a.layers), [l.name for l in a.layers if not l.quantized]
    # QAT blocks convolve with the folded weight themselves: FLOPs must still be counted, and equal
    # the float model's (QAT changes numerics, not shapes)
    dense = analyze_module(build_model("yolov3-tiny", nc=3), (64, 64))
    assert all(l.flops is not None for l in a.layers), [l.name for l in a.layers if l.flops is None]
    assert [l.flops for l in a.layers] == [l.flops for l in dense.layers]


def test_report_exports_missing_onnx_and_revalidates(ckpt, tmp_path):
    from sparseyolo.data.synthetic import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes", n_train=1, n_val=2, img_size=64)
    run = tmp_path / "exp"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "best.pt").write_bytes(ckpt.read_bytes())
    (run / "results.csv").write_text("epoch,metrics/mAP_0.5,metrics/mAP_0.5:0.95\n0,0.1,0.05\n")
    (runs,) = build_report(
        [run], ["onnxruntime"], img=64, threads=1, time_s=0.05, warmup_s=0, progress=False, data=str(data)
    )
    assert runs.map_source == "onnx" and 0.0 <= runs.map50 <= 1.0 and runs.map50 != 0.1  # re-validated
    assert runs.onnx == run / "weights" / "best.onnx" and runs.onnx.exists()
    assert runs.bench["onnxruntime"].status == "ok"
    assert runs.bench["onnxruntime"].input_shapes["images"] == [1, 3, 64, 64]


def test_sensitivity_cli_writes_loadable_recipe(ckpt, tmp_path, capsys):
    from sparseyolo.data.synthetic import make_shapes_dataset
    from sparseyolo.recipe import Recipe

    data = make_shapes_dataset(tmp_path / "shapes", n_train=1, n_val=4, img_size=64)
    out = tmp_path / "sens"
    rc = main(
        [
            "analyze",
            str(ckpt),
            "--img",
            "64",
            "--save-dir",
            str(out),
            "--no-plot",
            "--sensitivity",
            "--data",
            str(data),
            "--sens-images",
            "4",
            "--batch-size",
            "4",
            "--sens-levels",
            "0.5",
            "0.9",
            "--sens-min-params",
            "1000000",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "sensitivity.json").read_text())
    names = {l["name"] for l in doc["layers"]}
    assert names and all(n.startswith("model.") for n in names) and len(doc["layers"][0]["scores"]) == 2
    recipe = Recipe.load(str(out / "recipe.md"))
    model = build_model("yolov3-tiny", nc=3)
    params = dict(model.named_parameters())
    yaml_text = recipe.to_yaml()
    assert all(n in params for n in names) and all(n in yaml_text for n in names)
    assert (out / "sensitivity.png").exists()
    # weights are untouched by the analysis: the checkpoint's pruned layers keep their sparsity
    model2, _ = load_torch_model(ckpt)
    w = dict(model2.named_parameters())["model.4.conv.weight"]
    assert float((w == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)
