"""Darknet cfg parsing and .weights import / export.

The mechanics (cfg reader, load / save round trip, truncated and mismatched files) run on a
random-weight Darknet pair written by ``save_darknet``; the ``real_data`` tests repeat them on the
official YOLOv3-tiny COCO weights and cfg files in ../shared, and check that model's detections."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparseyolo.models import build_model
from sparseyolo.models.darknet import (
    darknet_bytes,
    load_darknet_weights,
    read_header,
    save_darknet,
    save_darknet_weights,
)
from sparseyolo.models.darknet_cfg import parse_cfg
from sparseyolo.models.darknet_cfg_export import darknet_cfg_text
from sparseyolo.models.darknet_layout import darknet_layout
from sparseyolo.utils.errors import ConfigError, WeightsError

TINY_SHA = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
TINY_FLOATS = 8_858_734
GENERATED_HEADER = (0, 2, 0, 123_456_789_012)  # images seen above 2**32: needs the int64 field


@dataclass
class Pair:
    """A Darknet ``.cfg`` + ``.weights`` pair holding an 80-class YOLOv3-tiny at ``width``."""

    cfg: Path
    weights: Path
    width: float

    def model(self, **overrides):
        """A fresh model of this pair's layout (``overrides`` as for ``build_model``)."""
        return build_model("yolov3-tiny", **{"width_multiple": self.width, **overrides})


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, BN affine parameters and BN running statistics (a fresh model's are 1 / 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def _section_lines(cfg: Path, kind: str) -> list[int]:
    """1-based line numbers of the ``[kind]`` section headers, read from the text directly."""
    return [n for n, line in enumerate(cfg.read_text().splitlines(), 1) if line.strip() == f"[{kind}]"]


def _comparable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


# ---------------------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[nn.Module, Pair]:
    """A random quarter-width YOLOv3-tiny (80 classes) and the Darknet pair ``save_darknet`` wrote for
    it: random BN statistics, anchors other than the YAML's, a large images-seen count."""
    src = _randomize(build_model("yolov3-tiny", width_multiple=0.25))
    with torch.no_grad():
        src.detect.anchors.mul_(2)  # only a cfg can tell a loader about these
    cfg, weights = save_darknet(
        src, tmp_path_factory.mktemp("darknet") / "tiny-quarter.weights", header=GENERATED_HEADER
    )
    return src, Pair(cfg, weights, 0.25)


@pytest.fixture(scope="module")
def yolov3_cfg(tmp_path_factory) -> Path:
    """A cfg with three [yolo] layers (a thin YOLOv3), for the wrong-cfg errors."""
    path = tmp_path_factory.mktemp("cfg") / "yolov3.cfg"
    path.write_text(darknet_cfg_text(build_model("yolov3", width_multiple=0.0625, depth_multiple=0.1)))
    return path


@pytest.fixture(scope="module")
def official(shared_dir) -> Pair:
    path = shared_dir / "weights" / "yolov3-tiny.weights"
    if not path.is_file():
        pytest.skip("yolov3-tiny.weights not in shared data")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == TINY_SHA
    return Pair(shared_dir / "darknet-cfg" / "yolov3-tiny.cfg", path, 1.0)


@pytest.fixture(scope="module")
def tiny(official):
    """The official YOLOv3-tiny COCO model, loaded with its cfg: ``(model, header)``."""
    m = official.model()
    header = load_darknet_weights(m, official.weights, official.cfg)
    return m, header


# ------------------------------------------------------------------------------------- cfg files
def _check_cfg_matches_model(cfg, model, name):
    assert cfg.n_params == sum(p.numel() for p in model.parameters())
    layout = darknet_layout(model)
    assert [tuple(d.conv.weight.shape) for d in layout] == [(c.filters, c.c_in, c.size, c.size) for c in cfg.convs]
    # the cfg lists the large-stride [yolo] first: mask 6,7,8 is Detect level 2
    levels = [d.level for d in layout if d.level is not None]
    assert levels == list(range(len(levels)))[::-1]
    assert cfg.yolos[0].mask == ([6, 7, 8] if name != "yolov3-tiny" else [3, 4, 5])


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["yolov3", "yolov3-spp", "yolov3-tiny"])
def test_cfg_param_count_matches_model(shared_dir, name):
    """The published Darknet cfgs describe exactly our models' parameters."""
    cfg = parse_cfg(shared_dir / "darknet-cfg" / f"{name}.cfg")
    with torch.device("meta"):  # shapes only
        model = build_model(name)
    _check_cfg_matches_model(cfg, model, name)


@pytest.mark.parametrize("name", ["yolov3", "yolov3-spp", "yolov3-tiny"])
def test_written_cfg_parses_back_to_the_model(tmp_path, name):
    """cfg writer and reader agree on every layer (routes, shortcuts, SPP) of each architecture."""
    model = build_model(name, width_multiple=0.0625, depth_multiple=0.34, nc=3)
    path = tmp_path / f"{name}.cfg"
    path.write_text(darknet_cfg_text(model))
    cfg = parse_cfg(path)
    _check_cfg_matches_model(cfg, model, name)
    assert all(y.classes == 3 for y in cfg.yolos)
    assert 20 + 4 * cfg.n_floats == len(darknet_bytes(model))


# ------------------------------------------------------------------------------- load and save
def _check_loaded(model, pair: Pair, decode: str = "darknet"):
    """Every float of ``pair.weights`` went into ``model``, in Darknet order; anchors and box decode from
    the cfg."""
    data = pair.weights.read_bytes()
    _, offset = read_header(data, pair.weights)
    layout = darknet_layout(model)
    assert offset + 4 * sum(d.n_floats for d in layout) == len(data)
    assert model.decode == decode and model.yaml["decode"] == decode
    # first BN bias = first floats after the header
    n0 = model.model[0].bn.num_features
    first = np.frombuffer(data, "<f4", n0, offset)
    assert torch.equal(model.model[0].bn.bias, torch.from_numpy(first.copy()))
    cfg = parse_cfg(pair.cfg)  # [yolo] sections come large stride first
    for level, y in zip([1, 0], cfg.yolos, strict=True):
        assert torch.equal(model.detect.anchors[level], torch.tensor(y.anchors, dtype=torch.float32)), level


def test_generated_weights_load_every_float(generated):
    src, pair = generated
    model = pair.model()
    assert load_darknet_weights(model, pair.weights, pair.cfg) == GENERATED_HEADER
    _check_loaded(model, pair, decode=src.decode)  # "v5": the cfg says so (new_coords=1, scale_x_y=2)
    want = _comparable(src)
    got = _comparable(model)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    # without the cfg, the weights load but the anchors stay the YAML's
    plain = pair.model()
    load_darknet_weights(plain, pair.weights)
    assert torch.equal(plain.detect.anchors, pair.model().detect.anchors)
    assert not torch.equal(plain.detect.anchors, src.detect.anchors)


@pytest.mark.real_data
def test_tiny_weights_load_every_float(tiny, official):
    model, header = tiny
    assert header[:3] == (0, 2, 0) and header[3] > 0
    assert sum(d.n_floats for d in darknet_layout(model)) == TINY_FLOATS
    assert official.weights.stat().st_size == 20 + 4 * TINY_FLOATS
    _check_loaded(model, official)
    assert torch.equal(model.detect.anchors[1], torch.tensor([[81.0, 82], [135, 169], [344, 319]]))


def test_generated_round_trip_is_bit_exact(generated, tmp_path):
    _, pair = generated
    model = pair.model()
    load_darknet_weights(model, pair.weights, pair.cfg)
    out = save_darknet_weights(model, tmp_path / "again.weights")  # the header travels with the model
    assert out.read_bytes() == pair.weights.read_bytes()


@pytest.mark.real_data
def test_round_trip_is_bit_exact(tiny, official, tmp_path):
    model, _ = tiny
    out = save_darknet_weights(model, tmp_path / "again.weights")
    assert out.read_bytes() == official.weights.read_bytes()


# ------------------------------------------------------------------------------------ bad files
def _check_truncated(pair: Pair, tmp_path):
    data = pair.weights.read_bytes()
    _, offset = read_header(data, pair.weights)
    m = pair.model()
    layout = darknet_layout(m)
    k = 8
    assert layout[k].name == "model.15"
    # stop inside model.15's conv weights: everything up to model.14, model.15's BN, 10 more floats
    upto = sum(d.n_floats for d in layout[:k]) + 4 * layout[k].bn.num_features + 10
    cut = tmp_path / "cut.weights"
    cut.write_bytes(data[: offset + 4 * upto])
    before = {name: v.clone() for name, v in m.state_dict().items()}
    with pytest.raises(WeightsError) as e:
        load_darknet_weights(m, cut)
    msg = str(e.value)
    assert "cut.weights" in msg and "ran out" in msg
    assert f"#{k} model.15 (" in msg and "reading conv weights" in msg and "10 left" in msg
    assert all(torch.equal(before[name], v) for name, v in m.state_dict().items())  # untouched on error


def test_truncated_file_names_layer(generated, tmp_path):
    _check_truncated(generated[1], tmp_path)


@pytest.mark.real_data
def test_truncated_official_file_names_layer(official, tmp_path):
    _check_truncated(official, tmp_path)


def _check_leftover(pair: Pair, tmp_path):
    data = pair.weights.read_bytes()
    long = tmp_path / "long.weights"
    long.write_bytes(data + np.zeros(7, "<f4").tobytes())
    with pytest.raises(WeightsError, match=r"long\.weights: 7 floats left over"):
        load_darknet_weights(pair.model(), long)
    odd = tmp_path / "odd.weights"
    odd.write_bytes(data[:-2])
    with pytest.raises(WeightsError, match="whole number"):
        load_darknet_weights(pair.model(), odd)


def test_leftover_floats_are_an_error(generated, tmp_path):
    _check_leftover(generated[1], tmp_path)


@pytest.mark.real_data
def test_leftover_floats_in_official_file_are_an_error(official, tmp_path):
    _check_leftover(official, tmp_path)


def _check_mismatched_model_or_cfg(pair: Pair, yolov3_cfg: Path):
    with pytest.raises(WeightsError, match="ran out|left over"):
        load_darknet_weights(pair.model(nc=20), pair.weights)
    with pytest.raises(WeightsError, match=r"yolov3\.cfg: 3 \[yolo\] layers, the model has 2"):
        load_darknet_weights(pair.model(), pair.weights, yolov3_cfg)
    line = _section_lines(pair.cfg, "yolo")[0]
    with pytest.raises(
        WeightsError, match=rf"{re.escape(pair.cfg.name)}:{line}: \[yolo\] classes=80, but the model has nc=20"
    ):
        load_darknet_weights(pair.model(nc=20), pair.weights, pair.cfg)


def test_mismatched_model_or_cfg(generated, yolov3_cfg):
    _check_mismatched_model_or_cfg(generated[1], yolov3_cfg)


@pytest.mark.real_data
def test_official_weights_with_mismatched_model_or_cfg(official, shared_dir):
    _check_mismatched_model_or_cfg(official, shared_dir / "darknet-cfg" / "yolov3.cfg")


def _check_conv_mismatch_names_line(pair: Pair):
    """A model narrower than the cfg (not a thinned form of it): the first differing conv, with its line."""
    m = pair.model(width_multiple=pair.width / 2)
    ours, theirs = darknet_layout(m), darknet_layout(pair.model())
    k = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a.conv.weight.shape != b.conv.weight.shape)
    line = _section_lines(pair.cfg, "convolutional")[k]
    want, got = ("x".join(map(str, d.conv.weight.shape)) for d in (theirs[k], ours[k]))
    with pytest.raises(
        WeightsError,
        match=rf"{re.escape(pair.cfg.name)}:{line}: \[convolutional\] #{k} is {want} stride 1 "
        rf"with BN, but the model has {ours[k].name} \({got}, BN\)",
    ):
        load_darknet_weights(m, pair.weights, pair.cfg)
    return k


def test_cfg_conv_mismatch_names_line(generated):
    assert _check_conv_mismatch_names_line(generated[1]) == 2  # 8-channel floor: model.0 and model.2 agree


@pytest.mark.real_data
def test_official_cfg_conv_mismatch_names_line(official):
    assert _check_conv_mismatch_names_line(official) == 0


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
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
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


# -------------------------------------------------------------------------- the official model
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


@pytest.mark.real_data
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


def _detected(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)[0]


@pytest.mark.parametrize("decode", ["v5", "darknet"])
def test_the_cfg_carries_the_box_decode(tmp_path, decode):
    """A model trained here (``v5``) is written as AlexeyAB Darknet's scaled-YOLOv4 decode: logistic
    detection convs and ``[yolo] new_coords=1, scale_x_y=2``; an imported one as the classic ``[yolo]``.
    Reading the pair back restores the decode, so the decoded boxes are the source model's."""
    src = _randomize(build_model("yolov3-tiny", nc=3, width_multiple=0.25))
    src.decode = decode
    cfg, weights = save_darknet(src, tmp_path / "m.weights")
    yolos = parse_cfg(cfg).yolos
    assert [(y.new_coords, y.scale_x_y) for y in yolos] == [(1, 2.0) if decode == "v5" else (0, 1.0)] * 2
    text = cfg.read_text()
    assert text.count("activation=logistic") == (2 if decode == "v5" else 0)
    back = build_model("yolov3-tiny", nc=3, width_multiple=0.25)
    load_darknet_weights(back, weights, cfg)
    assert back.decode == decode
    x = torch.rand(1, 3, 64, 64)
    assert (_detected(back, x) - _detected(src, x)).abs().max() < 1e-4


def test_a_box_decode_we_do_not_run_is_refused_with_its_line(tmp_path):
    src = _randomize(build_model("yolov3-tiny", nc=3, width_multiple=0.25))
    cfg, weights = save_darknet(src, tmp_path / "m.weights")
    text = cfg.read_text()
    cfg.write_text(text.replace("scale_x_y=2.0", "scale_x_y=1.05", 1))
    with pytest.raises(WeightsError, match=r"m\.cfg:\d+: \[yolo\] new_coords=1, scale_x_y=1\.05 is not a box decode"):
        load_darknet_weights(build_model("yolov3-tiny", nc=3, width_multiple=0.25), weights, cfg)
    cfg.write_text(text.replace("scale_x_y=2.0\nnew_coords=1\n", "", 1))  # one level classic, one v5
    with pytest.raises(WeightsError, match="decode boxes in different ways"):
        load_darknet_weights(build_model("yolov3-tiny", nc=3, width_multiple=0.25), weights, cfg)
