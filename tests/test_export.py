"""ONNX export: FP32 / QDQ / QLinear parity with PyTorch through ONNX Runtime, sparsity, metadata."""

from __future__ import annotations

import collections
import copy
import gzip
import json

import numpy as np
import onnx
import pytest
import torch
from conftest import INT8_EXACT_ON_ORT
from helpers import prune, session
from helpers import randomize_bn as base_randomize_bn
from torch import nn

from sparseyolo.exporters import (
    convert_to_qlinear,
    export_onnx,
    export_qlinear,
    file_size,
    fold_batchnorm,
    gzip_size,
    size_table,
)
from sparseyolo.exporters.graph import MAX_IR_VERSION
from sparseyolo.quantization import QATConfig, freeze_bn_stats, prepare_qat
from sparseyolo.utils.errors import SparseYoloError


def meta(proto) -> dict:
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


class Block(nn.Module):
    def __init__(self, c1, c2, k=3, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(Block(3, 8), nn.MaxPool2d(2), Block(8, 16, 3, 2), Block(16, 8, 1))
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(self.body(x))


def randomize_bn(model):
    base_randomize_bn(model, seed=3, bias_halfwidth=0.5)


@pytest.fixture(scope="module")
def tiny():
    from sparseyolo.models import build_model

    torch.manual_seed(0)
    model = build_model("yolov3-tiny", nc=3, width_multiple=0.25).eval()
    randomize_bn(model)
    return model


def qat_tiny(tiny, x):
    model = copy.deepcopy(tiny)
    prepare_qat(model, [f"model.{i}" for i in range(len(model.model) - 1)], QATConfig())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):  # a few real QAT steps: weights, BN statistics and ranges all move
        sum(o.square().mean() for o in model(x)).backward()
        opt.step()
        opt.zero_grad()
    freeze_bn_stats(model)
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture(scope="module")
def qat_model(tiny):
    """A QAT tiny model after a few training steps (shared: tests only export it)."""
    torch.manual_seed(1)
    return qat_tiny(tiny, torch.rand(2, 3, 64, 64))


def test_fp32_generic_cnn_parity_and_original_untouched(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    randomize_bn(model)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    path = export_onnx(model, tmp_path / "cnn.onnx", img_size=32, batch_size=2)
    assert isinstance(model.body[0].bn, nn.BatchNorm2d)  # the model was copied, not folded in place
    proto = onnx.load(path)
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 4
    out = session(path).run(None, {"images": x.numpy()})[0]
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_fold_batchnorm_is_exact_enough():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    randomize_bn(model)
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == 3
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(model(x), folded(x), atol=1e-5)


def test_fp32_yolo_parity_metadata_opset(tiny, tmp_path):
    x = torch.rand(1, 3, 64, 96)
    m = copy.deepcopy(tiny)
    m.export_raw = True
    with torch.no_grad():
        ref = [r.numpy() for r in m(x)]
    path = export_onnx(tiny, tmp_path / "tiny.onnx", img_size=(64, 96))
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert proto.ir_version <= MAX_IR_VERSION
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)]
    info = meta(proto)
    assert info["format"] == "fp32" and info["imgsz"] == [64, 96] and info["nc"] == 3 and info["na"] == 3
    assert info["stride"] == [16, 32] and info["decode"] == tiny.decode and len(info["names"]) == 3
    assert np.allclose(info["anchors"], tiny.model[-1].anchors.numpy())
    assert info["input_dtype"] == "float32" and info["output_format"] == "raw"
    outs = session(path).run(None, {"images": x.numpy()})
    assert len(outs) == 2
    for o, r in zip(outs, ref, strict=True):
        assert o.shape == r.shape
        assert np.abs(o - r).max() <= 1e-4 * np.abs(r).max()


def conv_weight_sparsity(proto) -> list[float]:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    out = []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "QLinearConv"):
            continue
        name = node.input[1] if node.op_type == "Conv" else node.input[3]
        if name not in inits:  # QDQ: weight -> DequantizeLinear -> Conv
            name = producers[name].input[0]
        out.append(float((inits[name] == 0).mean()))
    return out


def test_pruned_weights_stay_zero_fp32_and_qdq(tiny, tmp_path):
    model = copy.deepcopy(tiny)
    prune(model)
    expected = [int((m.weight == 0).sum()) / m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d)]
    fp32 = onnx.load(export_onnx(model, tmp_path / "sparse.onnx", img_size=64))
    assert conv_weight_sparsity(fp32) == pytest.approx(expected, abs=1e-9)
    x = torch.rand(1, 3, 64, 64)
    qat = qat_tiny(model, x)
    with torch.no_grad():  # the two QAT steps moved weights: re-prune as the recipe's masks would
        for m in qat.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[m.weight.abs() < 1e-12] = 0.0
    expected = [int((m.weight == 0).sum()) / m.weight.numel() for m in qat.modules() if isinstance(m, nn.Conv2d)]
    qdq = onnx.load(export_onnx(qat, tmp_path / "sparse_q.onnx", img_size=64))
    got = conv_weight_sparsity(qdq)
    assert len(got) == len(expected)
    lost = [(i, g, e) for i, (g, e) in enumerate(zip(got[:-2], expected[:-2], strict=True)) if g < e - 1e-9]
    assert not lost, lost  # int8 rounding may add zeros, never remove (every conv, not a list comparison)
    assert got[-2:] == pytest.approx(expected[-2:], abs=1e-9)  # float head


def test_qdq_parity_with_pytorch_qat(qat_model, tmp_path):
    x = torch.rand(2, 3, 64, 64)
    qat = copy.deepcopy(qat_model)
    qat.export_raw = True
    with torch.no_grad():
        ref = [r.numpy() for r in qat(x)]
    path = export_onnx(qat, tmp_path / "q.onnx", img_size=64, batch_size=2)
    proto = onnx.load(path)
    assert meta(proto)["format"] == "qdq"
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8) == 11  # every quantized conv stores int8 weights
    assert not [
        t
        for t in proto.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4 and t.dims[0] != 24
    ]  # no float conv weights left, except the float head (3 * 8 outputs)
    outs = session(path).run(None, {"images": x.numpy()})
    for o, r in zip(outs, ref, strict=True):
        err = np.abs(o - r)
        # int8 kernels vs float fake-quant: rounding ties can flip single steps; measured ~0.2% max
        assert err.max() <= 0.02 * np.abs(r).max(), err.max()
        assert err.mean() <= 0.005 * np.abs(r).max(), err.mean()


ORT_SATURATES = pytest.mark.xfail(
    not INT8_EXACT_ON_ORT,
    strict=True,
    reason="this CPU has no VNNI: ONNX Runtime's u8s8 kernels saturate int16 pair sums (see conftest)",
)


@ORT_SATURATES
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_qat_model_computes_exactly_what_the_int8_engine_computes(tmp_path, per_channel):
    """The fake-quantized conv adds its bias on the int32 grid the export stores (input scale x weight
    scale). With a float bias, 101 of these 589,824 outputs (per tensor) land one step off the engine's."""
    net, x, path = _observed_qat_blocks(tmp_path, seed=0, per_channel=per_channel)
    got = session(path).run(None, {"images": x.numpy()})[0]  # ONNX Runtime's int8 kernels
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_array_equal(got, ref)


def _observed_qat_blocks(tmp_path, seed: int, **config):
    """``(net, x, path)``: two 32-channel QAT conv blocks (``QATConfig(**config)``) whose observers and
    BatchNorm statistics saw three random batches, an input ``x`` and the net's QDQ export."""
    torch.manual_seed(seed)
    net = nn.Sequential(Block(3, 32), Block(32, 32))
    randomize_bn(net)
    prepare_qat(net, None, QATConfig(**config))
    net.train()
    for _ in range(3):  # observers see data; BN statistics move
        net(torch.rand(4, 3, 96, 96))
    freeze_bn_stats(net)
    net.eval()
    x = torch.rand(2, 3, 96, 96)
    return net, x, export_onnx(net, tmp_path / "b.onnx", img_size=96, batch_size=2)


def _assert_at_most_a_few_ties(got: np.ndarray, ref: np.ndarray, net: nn.Module) -> None:
    """Equal but for a few values one conv-output step apart (a rounding tie taken the other way, then
    rounded once more by the output quantizer)."""
    step = float(net[1].conv_out_quant.scale) + float(net[1].out_quant.scale)
    assert (got != ref).sum() <= 5 and np.abs(got - ref).max() <= 1.01 * step


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_qat_with_7_bit_weights_is_exact_on_every_cpu(tmp_path, per_channel):
    """7-bit weights (-64..63) keep ONNX Runtime's u8 x s8 pair sums inside int16 (255 x 64 x 2 < 32767),
    so the int8 engine computes what the fake-quantized model computes, VNNI or not. (With 8-bit
    weights on a CPU without VNNI, 24,000-125,000 of these 589,824 outputs differ, up to 3 steps.)"""
    net, x, path = _observed_qat_blocks(tmp_path, seed=1, per_channel=per_channel, weight_bits=7)
    weights = [
        onnx.numpy_helper.to_array(t)
        for t in onnx.load(path).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    ]
    assert len(weights) == 2 and all(w.min() >= -64 and w.max() <= 63 for w in weights)
    assert max(int(np.abs(w).max()) for w in weights) >= 60  # the 7-bit range is used, not a narrower one
    got = session(path).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = net(x).numpy()
    if not per_channel:
        np.testing.assert_array_equal(got, ref)
    else:  # per-channel requantization can round a tie the other way
        _assert_at_most_a_few_ties(got, ref, net)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_reference_engine_computes_8_bit_weights_exactly_on_every_cpu(tmp_path, per_channel):
    """``--engine onnxruntime-reference`` runs the QDQ file's own arithmetic (no fused int8 kernels), so
    8-bit weights give what the fake-quantized model gives, VNNI or not; QLinear files are refused."""
    from sparseyolo.exporters import export_qlinear
    from sparseyolo.runtime import get_engine

    net, x, path = _observed_qat_blocks(tmp_path, seed=0, per_channel=per_channel)
    got = get_engine("onnxruntime-reference").load(path, batch_size=2).run(x.numpy())[0]
    with torch.no_grad():
        ref = net(x).numpy()
    _assert_at_most_a_few_ties(got, ref, net)  # float accumulation of the dequantized products
    qlinear = export_qlinear(path, tmp_path / "b.qlinear.onnx", ("Conv",))
    with pytest.raises(SparseYoloError, match="runs QDQ files only, and this one has QLinearConv"):
        get_engine("onnxruntime-reference").load(qlinear, batch_size=2)


def test_qlinear_matches_qdq_and_uint8_input(qat_model, tmp_path):
    x = torch.rand(1, 3, 64, 64)
    qat = qat_model
    qdq = export_onnx(qat, tmp_path / "q.onnx", img_size=64)
    ref = session(qdq).run(None, {"images": x.numpy()})
    for ops in (
        ("Conv", "Add", "MaxPool", "Resize", "Pad"),
        ("Conv", "Add", "MaxPool", "Resize", "Pad", "LeakyRelu", "Concat"),
    ):
        path = export_qlinear(qdq, tmp_path / "q.qlinear.onnx", ops)
        proto = onnx.load(path)
        types = [n.op_type for n in proto.graph.node]
        assert types.count("QLinearConv") == 11 and types.count("Conv") == 2  # the float head
        domains = {o.domain for o in proto.opset_import}
        assert domains == ({"", "com.microsoft"} if "LeakyRelu" in ops else {""})  # no unused imports
        if "LeakyRelu" in ops:
            assert types.count("QLinearLeakyRelu") == 11 and "QLinearConcat" in types
        assert meta(proto)["format"] == "qlinear"
        outs = session(path).run(None, {"images": x.numpy()})
        for o, r in zip(outs, ref, strict=True):
            assert np.abs(o - r).max() <= 1e-3 * np.abs(r).max()
    u8 = export_onnx(qat, tmp_path / "u8.onnx", img_size=64, uint8_input=True)
    proto = onnx.load(u8)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert meta(proto)["input_dtype"] == "uint8"
    pixels = (x.numpy() * 255).round().astype(np.uint8)
    outs = session(u8).run(None, {"images": pixels})
    for o, r in zip(outs, ref, strict=True):
        assert np.abs(o - r).max() <= 0.05 * np.abs(r).max()
    qlin_u8, _ = convert_to_qlinear(onnx.load(u8))
    assert qlin_u8.graph.node[0].op_type == "QLinearConv"  # pixels go straight into the first conv


def test_openvino_form_bypasses_the_quantizers_openvino_cannot_fold(qat_model, tmp_path):
    """NNCF's placement: no Q/DQ pair on a conv's output (before its activation) or a MaxPool's output;
    every other quantizer, and the int8 weights, stay; the outputs move by rounding only."""
    from sparseyolo.exporters.openvino_form import openvino_form

    x = torch.rand(1, 3, 64, 64)
    qdq = export_onnx(qat_model, tmp_path / "q.onnx", img_size=64)
    proto = onnx.load(qdq)

    def pairs(model) -> collections.Counter:
        producer = {o: n for n in model.graph.node for o in n.output}
        return collections.Counter(
            producer[n.input[0]].op_type if n.input[0] in producer else "input"
            for n in model.graph.node
            if n.op_type == "QuantizeLinear"
        )

    before = pairs(proto)
    assert before["Conv"] == 11 and before["MaxPool"] > 0  # the QDQ file quantizes each conv's output
    removed = openvino_form(proto)
    onnx.checker.check_model(proto)
    after = pairs(proto)
    assert removed == before["Conv"] + before["MaxPool"]
    assert after["Conv"] == after["MaxPool"] == 0
    assert {k: v for k, v in before.items() if k not in ("Conv", "MaxPool")} == dict(after)
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8) == 11
    out = tmp_path / "q.openvino.onnx"
    onnx.save(proto, out)
    ref = session(qdq).run(None, {"images": x.numpy()})
    got = session(out).run(None, {"images": x.numpy()})
    for o, r in zip(got, ref, strict=True):
        assert np.abs(o - r).max() <= 0.05 * np.abs(r).max()
        assert np.abs(o - r).mean() <= 0.005 * np.abs(r).max()


def test_uint8_input_needs_qat(tiny, tmp_path):
    with pytest.raises(SparseYoloError, match="uint8"):
        export_onnx(tiny, tmp_path / "x.onnx", img_size=64, uint8_input=True)


def test_include_nms_and_dynamic(tiny, tmp_path):
    from sparseyolo.utils.nms import non_max_suppression

    x = torch.rand(2, 3, 64, 64)
    path = export_onnx(
        tiny,
        tmp_path / "nms.onnx",
        img_size=64,
        batch_size=2,
        include_nms=True,
        dynamic=True,
        max_det=20,
        conf_thres=0.001,
        iou_thres=0.45,
    )
    proto = onnx.load(path)
    info = meta(proto)
    assert info["output_format"] == "nms" and info["max_det"] == 20 and info["outputs"] == ["detections"]
    assert "NonMaxSuppression" in [n.op_type for n in proto.graph.node]
    sess = session(path)
    det = sess.run(None, {"images": x.numpy()})[0]
    assert det.shape == (2, 20, 6)
    m = copy.deepcopy(tiny)
    m.export_raw = False
    with torch.no_grad():
        ref = non_max_suppression(m(x)[0], conf_thres=0.001, iou_thres=0.45, max_det=20)
    for b in range(2):
        valid = det[b][det[b, :, 4] > 0]
        r = ref[b].numpy()
        n = min(len(valid), len(r), 5)
        assert n > 0
        assert np.allclose(valid[:n, 4], r[:n, 4], atol=1e-4)  # same top scores, same order
        assert np.all(np.diff(det[b, :, 4]) <= 1e-7)  # sorted by score, padding last
    det1 = sess.run(None, {"images": np.random.rand(1, 3, 96, 64).astype(np.float32)})[0]
    assert det1.shape == (1, 20, 6)


def test_size_helpers(tmp_path):
    data = (b"\x00" * 5000) + bytes(range(256)) * 20
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert gzip_size(path) == len(gzip.compress(data, compresslevel=9, mtime=0))
    fs = file_size(path)
    assert fs.raw == len(data) and fs.gzip < fs.raw
    table = size_table([path])
    assert "blob.bin" in table and "gzip -9" in table
    with pytest.raises(SparseYoloError, match="no such file"):
        file_size(tmp_path / "missing.onnx")


def test_bad_opset_and_size_rounding(tiny, tmp_path, caplog):
    with pytest.raises(SparseYoloError, match="opset"):
        export_onnx(tiny, tmp_path / "x.onnx", img_size=64, opset=11)
    path = export_onnx(tiny, tmp_path / "r.onnx", img_size=(70, 64))
    dims = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 96, 64]
    assert "multiple" in caplog.text


def _darknet_parity(model, path, img: int) -> dict:
    """Export ``model`` (loaded from Darknet .weights) at ``img``; its raw ONNX outputs must match
    PyTorch's. Returns the export's metadata."""
    model.eval()
    x = torch.rand(1, 3, img, img)
    model.export_raw = True
    with torch.no_grad():
        ref = [r.numpy() for r in model(x)]
    model.export_raw = False
    path = export_onnx(model, path, img_size=img)
    outs = session(path).run(None, {"images": x.numpy()})
    assert len(outs) == len(ref) == 2
    for o, r in zip(outs, ref, strict=True):
        assert o.shape == r.shape
        assert np.abs(o - r).max() <= 1e-4 * np.abs(r).max()
    return meta(onnx.load(path))


def test_fp32_parity_darknet_weights(tiny_darknet, tmp_path):
    """A model read from Darknet .weights (decode 'darknet'; random values written by save_darknet)
    exports with raw outputs matching PyTorch."""
    from sparseyolo.models.weights import load_model

    model, ckpt = load_model(tiny_darknet["weights"], cfg=str(tiny_darknet["cfg"]))
    assert ckpt is None and model.decode == "darknet"
    info = _darknet_parity(model, tmp_path / "darknet.onnx", img=128)
    assert info["decode"] == "darknet" and info["nc"] == 80 and info["stride"] == [16, 32]


@pytest.mark.real_data  # the official COCO weights: real value ranges, the file users start from
def test_fp32_parity_official_yolov3_tiny(shared_dir, tmp_path):
    """The real Darknet YOLOv3-tiny (decode 'darknet') exports with raw outputs matching PyTorch."""
    from sparseyolo.models.weights import load_model

    model, _ = load_model(shared_dir / "weights" / "yolov3-tiny.weights")
    info = _darknet_parity(model, tmp_path / "yolov3-tiny.onnx", img=128)
    assert info["decode"] == "darknet" and info["nc"] == 80 and info["stride"] == [16, 32]


@pytest.mark.parametrize(
    "config",
    [
        QATConfig(reduce_range=True, per_channel=True),
        pytest.param(QATConfig(tensorrt=True), marks=ORT_SATURATES),
        pytest.param(QATConfig(activation_bits=6, weight_bits=4), marks=pytest.mark.slow),
    ],
    ids=["reduce_range", "tensorrt", "a6w4"],
)
def test_qat_variants_export_and_run(tiny, tmp_path, config):
    model = copy.deepcopy(tiny)
    prepare_qat(model, None, config)  # whole model, head included
    x = torch.rand(1, 3, 64, 64)
    freeze_bn_stats(model)
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    model.export_raw = True
    with torch.no_grad():
        ref = [r.numpy() for r in model(x)]
    path = export_onnx(model, tmp_path / "v.onnx", img_size=64)
    outs = session(path).run(None, {"images": x.numpy()})
    for o, r in zip(outs, ref, strict=True):
        assert np.abs(o - r).max() <= 0.03 * np.abs(r).max()
    qlin = export_qlinear(path, tmp_path / "v.qlinear.onnx")
    outs2 = session(qlin).run(None, {"images": x.numpy()})
    for o, r in zip(outs2, outs, strict=True):
        assert np.abs(o - r).max() <= 0.03 * np.abs(r).max()
