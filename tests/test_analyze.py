"""Tests for sparseyolo.analysis.layers / sensitivity and ``sparseyolo analyze``."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import yaml
from helpers import export_onnx, tiny_cnn
from onnx import TensorProto, helper, numpy_helper

from sparseyolo.analysis.layers import _ort_shapes, analyze_module, analyze_onnx
from sparseyolo.analysis.layers_output import analysis_table, save_analysis
from sparseyolo.analysis.sensitivity import (
    recipe_text,
    sensitivity_analysis,
    suggest_targets,
)
from sparseyolo.cli.main import main
from sparseyolo.sparsity.masks import magnitude_prune_
from sparseyolo.sparsity.params import prunable_param_names as prunable_params


def conv_flops(cout, cin, k, out_hw):
    return 2 * cout * cin * k * k * out_hw[0] * out_hw[1]


def test_module_analysis_counts_and_flops():
    m = tiny_cnn(ch=8, sparsity=0.75)
    a = analyze_module(m, img=(32, 32))
    assert [l.op for l in a.layers] == ["Conv2d", "Conv2d", "Conv2d", "Linear"]
    first, second, third, fc = a.layers
    assert first.name == "0.weight" and first.shape == [8, 3, 3, 3] and first.params == 8 * 27 + 8
    assert first.out_shape == [1, 8, 16, 16]
    assert first.flops == conv_flops(8, 3, 3, (16, 16))
    assert second.flops == conv_flops(16, 8, 3, (16, 16))
    assert third.flops == conv_flops(6, 16, 1, (16, 16))
    assert fc.flops == 2 * 4 * 6 * 16 * 16
    for l in a.layers:
        assert l.sparsity == pytest.approx(0.75, abs=0.01)
        assert l.sparse_flops == pytest.approx(l.flops * (1 - l.sparsity))
        assert not l.quantized
    t = a.totals()
    assert t["params"] == sum(p.numel() for p in m.parameters())
    assert t["flops_reduction"] == pytest.approx(4.0, rel=0.05)
    assert m.training is False  # tiny_cnn is eval; analysis must not flip it
    assert "total (4 layers" in analysis_table(a)


def test_onnx_matches_torch(tmp_path):
    m = tiny_cnn(ch=8, sparsity=0.6)
    path = export_onnx(m, tmp_path / "m.onnx")
    a_pt = analyze_module(m, img=(32, 32))
    a_onnx = analyze_onnx(path, img=(32, 32))
    assert [l.op for l in a_onnx.layers] == ["Conv", "Conv", "Conv", "Gemm"]
    for lp, lo in zip(a_pt.layers, a_onnx.layers, strict=True):
        assert lo.shape == lp.shape
        assert lo.zeros == lp.zeros
        assert lo.flops == lp.flops
        assert lo.params == lp.params
    assert a_onnx.totals()["params"] == a_pt.totals()["params"]


def _qdq_and_qlinear(tmp_path, sparsity=0.5):
    rng = np.random.default_rng(0)
    wq = rng.integers(-100, 100, size=(8, 3, 3, 3)).astype(np.int8)
    wq.flat[: int(sparsity * wq.size)] = 0
    inits = [
        numpy_helper.from_array(wq, "w_q"),
        numpy_helper.from_array(np.array(0.02, np.float32), "w_s"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "x_s"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "y_s"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zp"),
    ]
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, "h", "w"])
    qdq_nodes = [
        helper.make_node("QuantizeLinear", ["images", "x_s", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_f"]),
        helper.make_node("Conv", ["xf", "w_f"], ["out"], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(qdq_nodes, "qdq", [x], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    qdq = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(qdq))
    xu8 = helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, 32, 32])
    ql_nodes = [
        helper.make_node(
            "QLinearConv",
            ["images", "x_s", "x_zp", "w_q", "w_s", "w_zp", "y_s", "y_zp"],
            ["yq"],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("DequantizeLinear", ["yq", "y_s", "y_zp"], ["out"]),
    ]
    g2 = helper.make_graph(
        ql_nodes, "ql", [xu8], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits
    )
    ql = tmp_path / "qlinear.onnx"
    onnx.save(helper.make_model(g2, opset_imports=[helper.make_opsetid("", 13)]), str(ql))
    return qdq, ql, int(np.count_nonzero(wq == 0))


def test_onnx_quantized_forms(tmp_path):
    qdq, ql, zeros = _qdq_and_qlinear(tmp_path)
    for path, op in ((qdq, "Conv"), (ql, "QLinearConv")):
        a = analyze_onnx(path, img=(32, 32) if op == "Conv" else None)
        (layer,) = a.layers
        assert layer.op == op and layer.quantized and layer.name == "w_q"
        assert layer.zeros == zeros and layer.sparsity == pytest.approx(zeros / 216)
        assert layer.out_shape == [1, 8, 16, 16]
        assert layer.flops == conv_flops(8, 3, 3, (16, 16))
        assert a.totals()["params"] == 216  # scales and zero points are not parameters
    with pytest.raises(Exception, match=r"qlinear.onnx.*static shape"):
        analyze_onnx(ql, img=(64, 64))


def test_ort_shape_fallback(tmp_path):
    path = export_onnx(tiny_cnn(), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    conv_outs = [n.output[0] for n in model.graph.node if n.op_type == "Conv"]
    shapes = _ort_shapes(model, {"images": (1, 3, 32, 32)}, conv_outs, path)
    assert shapes[conv_outs[0]] == [1, 8, 16, 16] and shapes[conv_outs[-1]] == [1, 6, 16, 16]


def test_qat_layers_flagged():
    import sparseyolo.quantization as q

    m = tiny_cnn()
    q.prepare_qat(m, None, q.QATConfig())
    a = analyze_module(m, img=(32, 32))
    assert any(l.quantized for l in a.layers)


def test_save_analysis_and_plot(tmp_path):
    a = analyze_module(tiny_cnn(sparsity=0.5), img=(32, 32))
    files = save_analysis(a, tmp_path / "out")
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(files["json"].read_text())
    assert len(doc["layers"]) == 4 and doc["totals"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert files["csv"].read_text().splitlines()[0].startswith("name,op,shape")


def test_cli_analyze_onnx(tmp_path, capsys):
    path = export_onnx(tiny_cnn(sparsity=0.9), tmp_path / "s.onnx")
    out = tmp_path / "an"
    assert main(["analyze", str(path), "--img", "32", "--save-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 0 " in text and "90.0%" in text
    assert (out / "sparsity.png").exists() and (out / "analysis.json").exists()
    assert main(["analyze", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx" in capsys.readouterr().err
    assert main(["analyze", str(path), "--sensitivity"]) == 2
    assert "--sensitivity needs a PyTorch checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- sensitivity
def test_magnitude_prune_exact():
    w = torch.arange(1.0, 101.0).reshape(10, 10) * torch.tensor([1.0, -1.0]).repeat(50).reshape(10, 10)
    magnitude_prune_(w, 0.4)
    assert int((w == 0).sum()) == 40 and w.abs().max() == 100 and w[w != 0].abs().min() == 41


def _toy_setup():
    """A CNN and a score (negative MSE to the dense outputs) where layer '2' matters more than '4'."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)
    ).eval()
    with torch.no_grad():
        m[4].weight.mul_(0.01)  # tiny 1x1 head weights: pruning them barely moves the output
        m[4].weight[:, :1] = 1.0  # ... but 4 of 32 large ones carry the signal (pruned only at 95%)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = m(x)

    def score(model):
        with torch.no_grad():
            return -float(((model(x) - ref) ** 2).mean())

    return m, score


def test_sensitivity_restores_and_ranks():
    m, score = _toy_setup()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = sensitivity_analysis(m, score, levels=(0.4, 0.6, 0.75, 0.85, 0.95), progress=False)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert res.baseline == 0.0 and set(res.scores) == {"0.weight", "2.weight", "4.weight"}
    for name in res.scores:
        d = res.damage(name)
        assert (d >= 0).all() and d[-1] >= d[0]  # more pruning, more damage
    assert res.ranking()[-1] == "4.weight"
    assert res.damage("4.weight")[3] < 1e-5 < res.damage("4.weight")[4]
    targets = suggest_targets(res, tolerance=1e-5)  # baseline 0: absolute tolerance
    assert targets["4.weight"] == 0.85
    assert targets["0.weight"] == 0.4  # the first conv hurts badly even at 75%


def test_recipe_loads(tmp_path):
    targets = {
        "model.0.conv.weight": 0.4,
        "model.2.cv1.conv.weight": 0.85,
        "model.3.conv.weight": 0.75,
        "model.28.m.0.weight": 0.8,
    }
    text = recipe_text(targets, num_epochs=50, pruning_end_epoch=30)
    front = text.split("---")[1]

    class L(yaml.SafeLoader):
        pass

    L.add_multi_constructor("!", lambda loader, suffix, node: {"_type": suffix, **loader.construct_mapping(node)})
    doc = yaml.load(front, Loader=L)
    mods = doc["pruning_modifiers"]
    assert [m["_type"] for m in mods] == ["GMPruningModifier"] * 4
    got = {p: m["final_sparsity"] for m in mods for p in m["params"]}
    assert got == targets and doc["num_epochs"] == 50 and mods[0]["end_epoch"] == 30
    import sparseyolo.recipe as recipe_mod

    path = tmp_path / "recipe.md"
    path.write_text(text)
    recipe = recipe_mod.Recipe.load(str(path))
    assert len(recipe.modifiers) == 5  # EpochRange + one GMPruningModifier per target
    assert recipe.max_epochs == 50
    resolved = recipe.to_yaml()
    for t in ("0.4", "0.75", "0.8", "0.85"):
        assert f"final_sparsity: {t}" in resolved


def test_prunable_params_names():
    assert prunable_params(tiny_cnn()) == ["0.weight", "2.weight", "4.weight", "6.weight"]
    # sizes: 0: 8*3*3*3=216, 2: 16*8*9=1152, 4: 6*16=96, 6: 4*6*16*16=6144
    assert prunable_params(tiny_cnn(), min_numel=200) == ["0.weight", "2.weight", "6.weight"]
