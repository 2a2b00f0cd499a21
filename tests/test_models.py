"""Model builder: parameter naming vs the published recipe, shapes, overrides, Detect decoding."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import yaml

from sparseyolo.models import Detect, DetectionModel, build_model, model_names
from sparseyolo.utils.errors import ConfigError, SparseYoloError


@pytest.fixture(scope="module")
def models() -> dict[str, DetectionModel]:
    """Built on the meta device: real names, shapes and strides, no weight memory or init cost."""
    with torch.device("meta"):
        return {name: build_model(name).eval() for name in ("yolov3", "yolov3-spp", "yolov3-tiny")}


class _TagLoader(yaml.SafeLoader):
    """SafeLoader that reads any ``!Tag`` mapping as a plain dict (enough to list recipe params)."""


_TagLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_mapping(node, deep=True))


def _recipe_params(path) -> set[str]:
    text = path.read_text()
    text = re.sub(r"^\s*<!--.*?-->", "", text, count=1, flags=re.S)
    front = text.split("\n---")[0] if not text.lstrip().startswith("---") else text.lstrip()[3:].split("\n---")[0]
    doc = yaml.load(front, Loader=_TagLoader)
    params = set()
    for mod in doc["pruning_modifiers"]:
        params.update(mod["params"])
    return params


def test_registry_names():
    assert model_names() == ["yolov3", "yolov3-spp", "yolov3-tiny"]
    with pytest.raises(SparseYoloError, match="yolov3-spp"):
        build_model("yolov3-sp")


@pytest.mark.real_data
def test_recipe_params_match_yolov3_spp(models, shared_dir):
    """SparseML's published recipe names our yolov3-spp parameters: its layer naming is the reference."""
    params = _recipe_params(shared_dir / "recipes" / "sparseml" / "yolov3-spp.pruned.md")
    assert len(params) > 60
    named = dict(models["yolov3-spp"].named_parameters())
    missing = sorted(p for p in params if p not in named)
    assert not missing, f"recipe names parameters the model lacks: {missing}"
    conv_weights = {n for n, p in named.items() if p.dim() == 4}
    unpruned = sorted(conv_weights - params - {"model.0.conv.weight"})
    assert not unpruned, f"conv weights not covered by the recipe: {unpruned}"


@pytest.mark.parametrize("recipe", ["yolov3-tiny.pruned.md", "yolov3-tiny.pruned_quantized.md"])
def test_bundled_recipe_params_match_yolov3_tiny(models, recipe):
    """The package's SparseML-style recipes name real parameters: every conv but the first and the
    Detect outputs."""
    from sparseyolo.recipe.loader import RECIPE_DIR

    params = _recipe_params(RECIPE_DIR / recipe)
    named = dict(models["yolov3-tiny"].named_parameters())
    missing = sorted(p for p in params if p not in named)
    assert not missing, f"recipe names parameters the model lacks: {missing}"
    conv_weights = {n for n, p in named.items() if p.dim() == 4}
    assert conv_weights - params == {"model.0.conv.weight", "model.20.m.0.weight", "model.20.m.1.weight"}


def test_reference_names_examples(models):
    names = dict(models["yolov3-spp"].named_parameters())
    for n in (
        "model.28.m.0.weight",
        "model.28.m.0.bias",
        "model.6.3.cv2.conv.weight",
        "model.12.cv1.conv.weight",
        "model.12.cv2.conv.weight",
        "model.6.3.cv2.bn.weight",
    ):
        assert n in names
    m = models["yolov3"].model
    assert m[6][3].cv2.conv.weight.shape == (256, 128, 3, 3)
    assert m[12].conv.weight.shape == (512, 1024, 1, 1)


def test_param_counts(models):
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    # Darknet-cfg derived counts (see test_darknet.py for the cross-check against the .cfg files)
    assert counts["yolov3"] == 61_949_149
    assert counts["yolov3-tiny"] == 8_852_366


def test_layer_attributes_and_conv_contract(models):
    m = models["yolov3-tiny"]
    for i, layer in enumerate(m.model):
        assert layer.i == i and hasattr(layer, "f") and isinstance(layer.type, str)
    conv = m.model[0]
    assert conv.conv.bias is None
    assert conv.bn.eps == 1e-5 and conv.bn.momentum == 0.03
    assert isinstance(conv.act, torch.nn.LeakyReLU) and conv.act.negative_slope == 0.1
    spp = models["yolov3-spp"].model[12]
    assert [p.kernel_size for p in spp.m] == [5, 9, 13] and all(p.stride == 1 for p in spp.m)
    assert spp.cv1.conv.weight.shape == (512, 1024, 1, 1) and spp.cv2.conv.weight.shape == (512, 2048, 1, 1)
    b = models["yolov3"].model[11]
    assert not b.add and models["yolov3"].model[2].add


@pytest.mark.parametrize("name", ["yolov3-tiny", "yolov3", "yolov3-spp"])
@pytest.mark.parametrize("size", [416, 320])
def test_forward_shapes(models, name, size):
    m = models[name]
    strides = [16, 32] if name == "yolov3-tiny" else [8, 16, 32]
    x = torch.zeros(1, 3, size, size, device="meta")
    with torch.no_grad():
        pred, raw = m(x)
        m.export_raw = True
        raw_only = m(x)
        m.export_raw = False
        m.train()
        train_out = m(x)
        m.eval()
    n = sum(3 * (size // s) ** 2 for s in strides)
    assert pred.shape == (1, n, 85)
    levels = [(1, 3, size // s, size // s, 85) for s in strides]
    assert [tuple(r.shape) for r in raw] == levels
    assert [tuple(r.shape) for r in raw_only] == levels and [tuple(r.shape) for r in train_out] == levels


def test_strides_and_real_forward(models):
    thin = {"width_multiple": 0.0625, "depth_multiple": 0.1}  # real weights, little compute
    assert build_model("yolov3", **thin).stride.tolist() == [8.0, 16.0, 32.0]
    assert build_model("yolov3-spp", **thin).stride.tolist() == [8.0, 16.0, 32.0]
    m = build_model("yolov3-tiny").eval()
    assert m.stride.tolist() == [16.0, 32.0]
    with torch.no_grad():
        pred, raw = m(torch.rand(1, 3, 320, 320))
    assert pred.shape == (1, 3 * (20 * 20 + 10 * 10), 85) and torch.isfinite(pred).all()
    assert 0 <= float(pred[..., 4:].min()) and float(pred[..., 4:].max()) <= 1
    assert float(pred[..., 2:4].min()) > 0  # widths / heights in pixels


def test_train_mode_returns_raw_list():
    m = build_model("yolov3-tiny", nc=3)
    m.train()
    out = m(torch.zeros(2, 3, 64, 64))
    assert isinstance(out, list) and [tuple(o.shape) for o in out] == [(2, 3, 4, 4, 8), (2, 3, 2, 2, 8)]


def test_nc_override_changes_only_detect(models):
    base = models["yolov3-tiny"].state_dict()
    small = build_model("yolov3-tiny", nc=20)
    assert small.nc == 20 and small.detect.no == 25 and small.names[:2] == ["class0", "class1"]
    sd = small.state_dict()
    assert sd.keys() == base.keys()
    changed = {k for k in sd if sd[k].shape != base[k].shape}
    assert changed == {"model.20.m.0.weight", "model.20.m.0.bias", "model.20.m.1.weight", "model.20.m.1.bias"}


def test_width_and_depth_multiple():
    m = build_model("yolov3-tiny", width_multiple=0.5)
    assert m.model[0].conv.weight.shape == (8, 3, 3, 3)
    assert m.model[13].conv.weight.shape == (512, 256, 3, 3)
    assert m.detect.m[1].weight.shape == (255, 256, 1, 1)  # Detect keeps na*(nc+5) outputs
    d = build_model("yolov3", depth_multiple=0.33, width_multiple=0.25)
    assert len(d.model[6]) == 3 and len(d.model[8]) == 3
    assert type(d.model[10]).__name__ == "Bottleneck"  # round(4 * 0.33) = 1: no Sequential
    assert d.yaml["depth_multiple"] == 0.33
    d.eval()
    with torch.no_grad():
        pred, _ = d(torch.zeros(1, 3, 64, 64))
    assert pred.shape == (1, 3 * (64 + 16 + 4), 85)


def test_yaml_round_trip_and_path(models, tmp_path):
    m = models["yolov3-tiny"]
    cfg = json.loads(json.dumps(m.yaml))  # JSON-able
    again = DetectionModel(cfg)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    p = tmp_path / "custom.yaml"
    p.write_text(yaml.safe_dump({k: v for k, v in m.yaml.items() if k != "ch"}))
    assert build_model(str(p), nc=2).nc == 2


def test_config_errors(models, tmp_path):
    cfg = json.loads(json.dumps(models["yolov3-tiny"].yaml))
    cfg["head"][0][2] = "Convv"
    with pytest.raises(ConfigError, match=r"layer 13: unknown module 'Convv'; did you mean 'Conv'"):
        DetectionModel(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text("nc: 3\nanchors: [[1, 2]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+"):
        build_model(str(bad))
    with pytest.raises(ConfigError, match="missing key 'head'"):
        DetectionModel({"nc": 1, "anchors": [[1, 2]], "backbone": []})
    with pytest.raises(ConfigError, match="not found"):
        build_model(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="nc must be a positive integer"):
        build_model("yolov3-tiny", nc=0)
    with pytest.raises(ConfigError, match="2 class names given for nc=3"):
        build_model("yolov3-tiny", nc=3, names=["a", "b"])


def test_decode_formulas():
    d = Detect(nc=1, anchors=[[10, 20]], ch=[4])
    t_xy, t_wh = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, -0.5]])
    grid, anchor, s = torch.tensor([[3.0, 4.0]]), torch.tensor([[10.0, 20.0]]), 8.0
    sig = torch.sigmoid
    d.decode = "darknet"
    xy, wh = d.decode_xy_wh(t_xy, t_wh, grid, anchor, s)
    torch.testing.assert_close(xy, (sig(t_xy) + grid) * s)
    torch.testing.assert_close(wh, anchor * torch.exp(t_wh))
    d.decode = "v5"
    xy, wh = d.decode_xy_wh(t_xy, t_wh, grid, anchor, s)
    torch.testing.assert_close(xy, (2 * sig(t_xy) - 0.5 + grid) * s)
    torch.testing.assert_close(wh, (2 * sig(t_wh)) ** 2 * anchor)


def test_eval_pred_uses_anchor_pixels():
    m = build_model("yolov3-tiny", nc=1)
    for conv in m.detect.m:  # zero head: every raw value is 0
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    m.eval()
    with torch.no_grad():
        pred, _ = m(torch.rand(1, 3, 64, 64))
    # first level (stride 16, 4x4 grid): cell (0, 0) of anchor 0 -> centre 8 px, size = anchor
    torch.testing.assert_close(pred[0, 0, :4], torch.tensor([8.0, 8.0, 10.0, 14.0]))
    m.decode = "darknet"
    assert m.yaml["decode"] == "darknet"
    with torch.no_grad():
        pred2, _ = m(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(pred2[0, 16 * 3 - 1, :4], torch.tensor([56.0, 56.0, 37.0, 58.0]))


def test_initialize_biases_and_info(models):
    det = build_model("yolov3-tiny").detect
    b = det.m[0].bias.detach().view(det.na, -1)  # level 0 has stride 16
    assert math.isclose(float(b[0, 4]), math.log(8 / (640 / 16) ** 2), rel_tol=1e-5)
    assert math.isclose(float(b[2, 85 - 1]), math.log(0.6 / (80 - 0.99)), rel_tol=1e-5)
    b2 = det.m[1].bias.detach().view(det.na, -1)
    assert math.isclose(float(b2[1, 4]), math.log(8 / (640 / 32) ** 2), rel_tol=1e-5)
    info = models["yolov3"].info()
    assert info["parameters"] == 61_949_149
    assert 150 < info["gflops"] < 162


def test_fuse_keeps_outputs():
    m = build_model("yolov3-tiny", nc=2, width_multiple=0.25)
    m.train()
    with torch.no_grad():
        m(torch.rand(4, 3, 64, 64))  # give BN non-trivial running statistics
    m.eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        ref = m(x)[0]
        fused = m.fuse()(x)[0]
    assert isinstance(m.model[0].bn, torch.nn.Identity) and m.model[0].conv.bias is not None
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-3)
