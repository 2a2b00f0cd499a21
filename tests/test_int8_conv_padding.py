"""The int8 export pads a 3-channel conv input to 4 channels (ONNX Runtime's int8 kernels run it faster)
and computes exactly what the unpadded graph computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import randomize_bn, session
from torch import nn

from sparseyolo.exporters import convert_to_qlinear, export_onnx
from sparseyolo.exporters import graph as G
from sparseyolo.quantization import QATConfig, freeze_bn_stats, prepare_qat


class Block(nn.Sequential):
    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.LeakyReLU(0.1)


def qat_net(stem_out: int, **config) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(Block(3, stem_out), Block(stem_out, 16))
    randomize_bn(net, seed=3, bias_halfwidth=0.5)
    prepare_qat(net, None, QATConfig(**config))
    net.train()
    for _ in range(3):  # observers and BatchNorm statistics see data
        net(torch.rand(4, 3, 64, 64))
    freeze_bn_stats(net)
    return net.eval()


def export_unpadded(net: nn.Module, path, monkeypatch, **kwargs):
    with monkeypatch.context() as m:
        m.setattr(G, "pad_int8_conv_inputs", lambda model, *a, **k: 0)
        return export_onnx(net, path, img_size=64, **kwargs)


def first_conv_weight(proto) -> np.ndarray:
    g = G.Graph(proto)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    return g.const(g.producer[conv.input[1]].input[0])


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_the_image_conv_gets_a_zero_fourth_channel_and_the_same_outputs(tmp_path, monkeypatch, per_channel):
    net = qat_net(16, per_channel=per_channel)
    plain = export_unpadded(net, tmp_path / "plain.onnx", monkeypatch)
    padded = export_onnx(net, tmp_path / "padded.onnx", img_size=64)
    proto = onnx.load(padded)
    w = first_conv_weight(proto)
    assert w.shape == (16, 4, 3, 3) and w.dtype == np.int8 and not w[:, 3].any()
    pad = next(n for n in proto.graph.node if n.op_type == "Pad")
    assert G.Graph(proto).producer[pad.input[0]].op_type == "QuantizeLinear"  # the pad runs on uint8
    assert first_conv_weight(onnx.load(plain)).shape == (16, 3, 3, 3)
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    got, ref = (session(f).run(None, {"images": x})[0] for f in (padded, plain))
    np.testing.assert_array_equal(got, ref)


def test_a_thin_image_conv_is_left_as_it_is(tmp_path):
    """With 8 output channels padding made ONNX Runtime no faster (pad_int8_conv_inputs)."""
    proto = onnx.load(export_onnx(qat_net(8), tmp_path / "thin.onnx", img_size=64))
    assert first_conv_weight(proto).shape == (8, 3, 3, 3)
    assert "Pad" not in {n.op_type for n in proto.graph.node}


def test_uint8_input_and_qlinear_forms_pad_the_pixels_themselves(tmp_path, monkeypatch):
    net = qat_net(16)
    plain = export_unpadded(net, tmp_path / "plain.onnx", monkeypatch, uint8_input=True)
    padded = export_onnx(net, tmp_path / "padded.onnx", img_size=64, uint8_input=True)
    proto = onnx.load(padded)
    pad = next(n for n in proto.graph.node if n.op_type == "Pad")
    assert pad.input[0] == proto.graph.input[0].name == "images"
    pixels = np.random.default_rng(1).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    ref = session(plain).run(None, {"images": pixels})[0]
    np.testing.assert_array_equal(session(padded).run(None, {"images": pixels})[0], ref)
    qlinear, _ = convert_to_qlinear(proto)
    ops = [n.op_type for n in qlinear.graph.node]
    assert ops[:2] == ["Pad", "QLinearConv"]
    path = tmp_path / "padded.qlinear.onnx"
    onnx.save(qlinear, path)
    np.testing.assert_array_equal(session(path).run(None, {"images": pixels})[0], ref)
