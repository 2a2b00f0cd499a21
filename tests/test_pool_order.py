"""The QDQ export runs each MaxPool before the activation in front of it (``exporters/pool_order.py``):
the outputs stay bit-identical, and ONNX Runtime no longer moves a quantizer in front of a float first
conv's MaxPool."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import randomize_bn
from onnx import TensorProto, helper
from test_int8_conv_padding import Block
from test_ort_session import profiled_quantizers
from torch import nn

import sparseyolo.exporters.onnx as onnx_export
from sparseyolo.exporters import convert_to_qlinear, export_onnx
from sparseyolo.exporters.pool_order import pool_before_activation
from sparseyolo.quantization import QATConfig, freeze_bn_stats, prepare_qat
from sparseyolo.runtime.sessions import ort_session

X = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)


def pooled_net(quantized: list[str] | None) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(Block(3, 16), nn.MaxPool2d(2), Block(16, 16), nn.MaxPool2d(2), Block(16, 8))
    randomize_bn(net, seed=3, bias_halfwidth=0.5)
    prepare_qat(net, quantized, QATConfig(weight_bits=8))
    net.train()
    for _ in range(3):  # observers and BatchNorm statistics see data
        net(torch.rand(4, 3, 64, 64))
    freeze_bn_stats(net)
    return net.eval()


def export_pair(net: nn.Module, tmp_path, monkeypatch):
    """The export as shipped, and the same export with every MaxPool left where the trace put it."""
    moved = export_onnx(net, tmp_path / "moved.onnx", img_size=64)
    with monkeypatch.context() as m:
        m.setattr(onnx_export, "pool_before_activation", lambda model: 0)
        plain = export_onnx(net, tmp_path / "plain.onnx", img_size=64)
    return moved, plain


def op_order(path) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node if n.op_type in ("MaxPool", "LeakyRelu", "Conv")]


def outputs(path, optimize: bool = True) -> np.ndarray:
    return ort_session(path, 1, optimize=optimize).run(None, {"images": X})[0]


@pytest.mark.parametrize("optimize", [False, True], ids=["onnx_ops", "ort_kernels"])
def test_int8_maxpools_run_before_the_activation_with_identical_outputs(tmp_path, monkeypatch, optimize):
    moved, plain = export_pair(pooled_net(None), tmp_path, monkeypatch)
    assert op_order(plain) == ["Conv", "LeakyRelu", "MaxPool"] * 2 + ["Conv", "LeakyRelu"]
    assert op_order(moved) == ["Conv", "MaxPool", "LeakyRelu"] * 2 + ["Conv", "LeakyRelu"]
    np.testing.assert_array_equal(outputs(moved, optimize), outputs(plain, optimize))


@pytest.mark.parametrize("ops", [("Conv",), ("Conv", "LeakyRelu", "MaxPool")], ids=["conv", "conv_act_pool"])
def test_the_qlinear_forms_of_the_moved_graph_compute_the_same(tmp_path, monkeypatch, ops):
    moved, plain = export_pair(pooled_net(None), tmp_path, monkeypatch)
    for name in ("moved", "plain"):
        proto, _ = convert_to_qlinear(onnx.load(tmp_path / f"{name}.onnx"), ops)
        onnx.save(proto, tmp_path / f"{name}.qlinear.onnx")
    np.testing.assert_array_equal(outputs(tmp_path / "moved.qlinear.onnx"), outputs(tmp_path / "plain.qlinear.onnx"))


def test_a_float_first_conv_keeps_its_maxpool_in_float_on_onnx_runtime(tmp_path, monkeypatch):
    """QAT of every layer but the first: its MaxPool moves before its float LeakyReLU, which stops ONNX
    Runtime's QDQ propagation from running that MaxPool in uint8 (the unmoved file shows that it would)."""
    moved, plain = export_pair(pooled_net(["2", "3", "4"]), tmp_path, monkeypatch)
    ops = [n.op_type for n in onnx.load(moved).graph.node]
    assert ops[:4] == ["Conv", "MaxPool", "LeakyRelu", "QuantizeLinear"]
    for optimize in (False, True):
        np.testing.assert_array_equal(outputs(moved, optimize), outputs(plain, optimize))
    assert profiled_quantizers(plain, tmp_path, ()) == ["/0/act/LeakyRelu_output_0_q"]  # before the MaxPool
    assert profiled_quantizers(moved, tmp_path, ()) == ["/2/input_quant/QuantizeLinear"]  # after it


def test_float_exports_keep_the_activation_before_the_maxpool(tmp_path):
    """In FP32 ONNX Runtime fuses the activation into the conv: the order stays as traced."""
    torch.manual_seed(0)
    net = nn.Sequential(Block(3, 16), nn.MaxPool2d(2), Block(16, 8)).eval()
    assert op_order(export_onnx(net, tmp_path / "fp32.onnx", img_size=64)) == [
        "Conv",
        "LeakyRelu",
        "MaxPool",
        "Conv",
        "LeakyRelu",
    ]


def tiny_graph(act: onnx.NodeProto, quantized: bool = True, act_is_output: bool = False) -> onnx.ModelProto:
    """x -> act -> MaxPool (-> Q -> DQ) -> y."""
    nodes = [act, helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
    inits = []
    out = "p"
    if quantized:
        inits = [
            helper.make_tensor("s", TensorProto.FLOAT, [], [0.05]),
            helper.make_tensor("z", TensorProto.UINT8, [], [100]),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["p", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ]
        out = "y"
    outs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 2, 4, 4])]
    if act_is_output:
        outs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2, 8, 8]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])], outs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize(
    "act, attrs, form, moves",
    [
        ("LeakyRelu", {"alpha": 0.1}, {}, 1),
        ("Relu", {}, {}, 1),
        ("LeakyRelu", {"alpha": -0.5}, {}, 0),  # decreasing for x < 0
        ("Sigmoid", {}, {}, 0),  # monotone, but not in the list
        ("Relu", {}, {"quantized": False}, 0),  # no quantizer after the pool: a float region
        ("Relu", {}, {"act_is_output": True}, 0),  # the activation's output is read elsewhere
    ],
    ids=["leaky", "relu", "negative_alpha", "sigmoid", "float_output", "activation_read"],
)
def test_which_maxpools_move(tmp_path, act, attrs, form, moves):
    model = tiny_graph(helper.make_node(act, ["x"], ["a"], **attrs), **form)
    x = np.random.default_rng(1).normal(0, 3, (1, 2, 8, 8)).astype(np.float32)
    onnx.save(model, tmp_path / "before.onnx")
    assert pool_before_activation(model) == moves
    assert model.graph.node[0].op_type == ("MaxPool" if moves else act)
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "after.onnx")
    before, after = (ort_session(tmp_path / f, 1).run(None, {"x": x}) for f in ("before.onnx", "after.onnx"))
    for got, want in zip(after, before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_float_first_conv_takes_uint8_pixels_through_one_dequantize(tmp_path):
    """``--uint8-input`` with the first conv in float: pixels / 255 in one DequantizeLinear, same outputs."""
    net = pooled_net(["2", "3", "4"])
    floats = export_onnx(net, tmp_path / "float_input.onnx", img_size=64)
    pixels = export_onnx(net, tmp_path / "uint8_input.onnx", img_size=64, uint8_input=True)
    proto = onnx.load(pixels)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert [n.op_type for n in proto.graph.node][:2] == ["DequantizeLinear", "Conv"]
    u8 = np.random.default_rng(2).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    got = ort_session(pixels, 1).run(None, {"images": u8})[0]
    want = ort_session(floats, 1).run(None, {"images": u8.astype(np.float32) * np.float32(1 / 255)})[0]
    np.testing.assert_array_equal(got, want)  # DequantizeLinear computes (x - 0) * scale in float32 too
