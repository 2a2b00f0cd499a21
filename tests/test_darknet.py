"""Darknet cfg parsing and .weights import / export against the official YOLOv3-tiny weights."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from sparseyolo.models import build_model
from sparseyolo.models.darknet import (
    darknet_bytes,
    darknet_layout,
    load_darknet_weights,
    read_header,
    save_darknet_weights,
)
from sparseyolo.models.darknet_cfg import parse_cfg
from sparseyolo.utils.errors import ConfigError, WeightsError

TINY_SHA = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
TINY_FLOATS = 8_858_734


@pytest.fixture(scope="module")
def tiny_weights(shared_dir):
    path = shared_dir / "weights" / "yolov3-tiny.weights"
    if not path.is_file():
        pytest.skip("yolov3-tiny.weights not in shared data")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == TINY_SHA
    return path


@pytest.fixture(scope="module")
def tiny(tiny_weights, shared_dir):
    m = build_model("yolov3-tiny")
    header = load_darknet_weights(m, tiny_weights, shared_dir / "darknet-cfg" / "yolov3-tiny.cfg")
    return m, header


@pytest.mark.parametrize("name", ["yolov3", "yolov3-spp", "yolov3-tiny"])
def test_cfg_param_count_matches_model(shared_dir, name):
    cfg = parse_cfg(shared_dir / "darknet-cfg" / f"{name}.cfg")
    with torch.device("meta"):  # shapes only
        model = build_model(name)
    assert cfg.n_params == sum(p.numel() for p in model.parameters())
    layout = darknet_layout(model)
    assert [tuple(d.conv.weight.shape) for d in layout] == [(c.filters, c.c_in, c.size, c.size) for c in cfg.convs]
    # the cfg lists the large-stride [yolo] first: mask 6,7,8 is Detect level 2
    levels = [d.level for d in layout if d.level is not None]
    assert levels == list(range(len(levels)))[::-1]
    assert cfg.yolos[0].mask == ([6, 7, 8] if name != "yolov3-tiny" else [3, 4, 5])


def test_tiny_weights_load_every_float(tiny, tiny_weights):
    model, header = tiny
    assert header == (0, 2, 0, header[3]) and header[3] > 0
    layout = darknet_layout(model)
    assert sum(d.n_floats for d in layout) == TINY_FLOATS
    assert tiny_weights.stat().st_size == 20 + 4 * TINY_FLOATS
    assert model.decode == "darknet" and model.yaml["decode"] == "darknet"
    # first BN bias = first floats after the 20-byte header
    first = np.frombuffer(tiny_weights.read_bytes(), "<f4", 16, 20)
    torch.testing.assert_close(model.model[0].bn.bias, torch.from_numpy(first.copy()))
    torch.testing.assert_close(model.detect.anchors[1], torch.tensor([[81.0, 82], [135, 169], [344, 319]]))


def test_round_trip_is_bit_exact(tiny, tiny_weights, tmp_path):
    model, _ = tiny
    out = save_darknet_weights(model, tmp_path / "again.weights")
    assert out.read_bytes() == tiny_weights.read_bytes()


def test_truncated_file_names_layer(tiny_weights, tmp_path):
    data = tiny_weights.read_bytes()
    cut = tmp_path / "cut.weights"
    # stop inside model.15's conv weights: header + everything up to model.14, then a bit more
    m = build_model("yolov3-tiny")
    layout = darknet_layout(m)
    upto = sum(d.n_floats for d in layout[:8])  # model.0 ... model.14
    cut.write_bytes(data[: 20 + 4 * (upto + 100)])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(WeightsError) as e:
        load_darknet_weights(m, cut)
    msg = str(e.value)
    assert "cut.weights" in msg and "model.15" in msg and "ran out" in msg
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # untouched on error


def test_leftover_floats_are_an_error(tiny_weights, tmp_path):
    long = tmp_path / "long.weights"
    long.write_bytes(tiny_weights.read_bytes() + np.zeros(7, "<f4").tobytes())
    with pytest.raises(WeightsError, match=r"long\.weights: 7 floats left over"):
        load_darknet_weights(build_model("yolov3-tiny"), long)
    odd = tmp_path / "odd.weights"
    odd.write_bytes(tiny_weights.read_bytes()[:-2])
    with pytest.raises(WeightsError, match="whole number"):
        load_darknet_weights(build_model("yolov3-tiny"), odd)


def test_mismatched_model_or_cfg(tiny_weights, shared_dir):
    with pytest.raises(WeightsError, match="ran out|left over"):
        load_darknet_weights(build_model("yolov3-tiny", nc=20), tiny_weights)
    with pytest.raises(WeightsError, match=r"yolov3\.cfg: 3 \[yolo\] layers, the model has 2"):
        load_darknet_weights(build_model("yolov3-tiny"), tiny_weights, shared_dir / "darknet-cfg" / "yolov3.cfg")
    with pytest.raises(WeightsError, match=r"yolov3-tiny\.cfg:\d+: \[yolo\] classes=80"):
        load_darknet_weights(
            build_model("yolov3-tiny", nc=20), tiny_weights, shared_dir / "darknet-cfg" / "yolov3-tiny.cfg"
        )


def test_spp_round_trip_reverses_pool_blocks(tmp_path):
    src = build_model("yolov3-spp", width_multiple=0.125, nc=2)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    path = save_darknet_weights(src, tmp_path / "spp.weights", header=(0, 1, 0, 42))
    header, offset = read_header(path.read_bytes(), path)
    assert header == (0, 1, 0, 42) and offset == 16  # version < 0.2: images seen is an int32
    dst = build_model("yolov3-spp", width_multiple=0.125, nc=2)
    load_darknet_weights(dst, path)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=False):
        if k.endswith("num_batches_tracked") or k.endswith("anchors") or k.endswith("stride"):
            continue
        assert torch.equal(a, b), k
    # in the file, SPP cv2's input channels are ordered [pool13, pool9, pool5, x]
    layout = darknet_layout(src)
    k = next(i for i, d in enumerate(layout) if d.name == "model.12.cv2")
    start = offset // 4 + sum(d.n_floats for d in layout[:k]) + 4 * layout[k].bn.num_features
    w = src.model[12].cv2.conv.weight
    file_w = np.frombuffer(path.read_bytes(), "<f4")[start : start + w.numel()].reshape(tuple(w.shape))
    c = w.shape[1] // 4
    np.testing.assert_array_equal(file_w[:, :c], w[:, 3 * c :].detach().numpy())
    np.testing.assert_array_equal(file_w[:, 3 * c :], w[:, :c].detach().numpy())
    assert darknet_bytes(dst) == path.read_bytes()


def test_cfg_errors(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nchannels=3\n[convolutional]\nfilters=abc\n")
    with pytest.raises(ConfigError, match=r"bad\.cfg:3: \[convolutional\] filters='abc'"):
        parse_cfg(bad)
    bad.write_text("[net]\n[foo]\n")
    with pytest.raises(ConfigError, match=r"bad\.cfg:2: unsupported Darknet layer \[foo\]"):
        parse_cfg(bad)
    bad.write_text("[net]\n[route]\nlayers=-3\n")
    with pytest.raises(ConfigError, match=r"bad\.cfg:2"):
        parse_cfg(bad)


def _letterbox_tensor(path, size=416):
    import cv2

    im = cv2.imread(str(path))[:, :, ::-1]
    h, w = im.shape[:2]
    r = size / max(h, w)
    im = cv2.resize(im, (round(w * r), round(h * r)), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - im.shape[0]) // 2, (size - im.shape[1]) // 2
    canvas[top : top + im.shape[0], left : left + im.shape[1]] = im
    return torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize(
    "image,expected", [("000000000785", "person"), ("000000000285", "bear"), ("000000005477", "airplane")]
)
def test_tiny_detects_plausible_classes(tiny, shared_dir, image, expected):
    model, _ = tiny
    names = (shared_dir / "darknet-cfg" / "coco.names").read_text().split("\n")
    names = ["airplane" if n == "aeroplane" else n for n in names]  # Darknet spelling
    model.eval()
    with torch.no_grad():
        pred, _ = model(_letterbox_tensor(shared_dir / "data" / "coco128" / "images" / "val2017" / f"{image}.jpg"))
    score = pred[0, :, 4:5] * pred[0, :, 5:]
    best = int(score.max(0).values.argmax())
    assert names[best] == expected
    assert float(score.max()) > 0.15


def test_cfg_conv_mismatch_names_line(tiny_weights, shared_dir):
    m = build_model("yolov3-tiny", width_multiple=0.5)
    with pytest.raises(
        WeightsError,
        match=r"yolov3-tiny\.cfg:\d+: \[convolutional\] #0 is 16x3x3x3 stride 1 "
        r"with BN, but the model has model\.0 \(8x3x3x3, BN\)",
    ):
        load_darknet_weights(m, tiny_weights, shared_dir / "darknet-cfg" / "yolov3-tiny.cfg")
