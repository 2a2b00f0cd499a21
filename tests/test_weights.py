"""Weights resolution (path / URL / zoo stub) and load_model, against a loopback HTTP server."""

from __future__ import annotations

import hashlib
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml

from sparseyolo.models import build_model
from sparseyolo.models.checkpoint import save_checkpoint
from sparseyolo.models.darknet import save_darknet, save_darknet_weights
from sparseyolo.models.weights import load_model, load_zoo, resolve_weights, zoo_file
from sparseyolo.utils.errors import ConfigError, DownloadError, WeightsError

TINY_SHA = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"


class _Quiet(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture()
def served(tmp_path, monkeypatch):
    """A loopback file server over tmp/served, a private cache and a private zoo file."""
    root = tmp_path / "served"
    root.mkdir()
    _Quiet.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("SPARSEYOLO_CACHE", str(tmp_path / "cache"))
    zoo = tmp_path / "zoo.yaml"
    monkeypatch.setenv("SPARSEYOLO_ZOO_FILE", str(zoo))
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", zoo
    httpd.shutdown()
    httpd.server_close()


def _small_cfg(tmp_path) -> str:
    m = build_model("yolov3-tiny", width_multiple=0.125)
    p = tmp_path / "tiny-small.yaml"
    p.write_text(yaml.safe_dump({k: v for k, v in m.yaml.items() if k not in ("ch", "yaml_file")}))
    return str(p)


def _write_zoo(zoo, models: dict, datasets: dict | None = None):
    zoo.write_text(yaml.safe_dump({"datasets": datasets or {}, "models": models}))


def test_packaged_registry():
    assert zoo_file().name == "zoo.yaml"
    entries = load_zoo()
    tiny = entries["zoo:cv/detection/yolo_v3-tiny/darknet/pjreddie/coco/base-none"]
    assert tiny.sha256 == TINY_SHA and tiny.format == "darknet" and tiny.cfg == "yolov3-tiny"
    assert tiny.url == "https://pjreddie.com/media/files/yolov3-tiny.weights"
    assert len(tiny.names) == 80 and tiny.names[0] == "person"
    spp = entries["zoo:cv/detection/yolo_v3-spp/darknet/pjreddie/coco/base-none"]
    assert spp.sha256 is None and spp.cfg == "yolov3-spp" and spp.note


def test_local_path_and_not_found(tmp_path):
    p = tmp_path / "a.pt"
    p.write_bytes(b"x")
    assert resolve_weights(p) == p
    with pytest.raises(WeightsError, match="weights not found"):
        resolve_weights(tmp_path / "missing.pt")


def test_zoo_stub_downloads_darknet_weights(served, tmp_path):
    root, base, zoo = served
    src = build_model("yolov3-tiny", width_multiple=0.125, nc=3)
    save_darknet_weights(src, root / "small.weights")
    sha = hashlib.sha256((root / "small.weights").read_bytes()).hexdigest()
    stub = "zoo:cv/detection/yolo_v3-tiny/darknet/test/toy/base-none"
    _write_zoo(
        zoo,
        {
            stub: {
                "url": f"{base}/small.weights",
                "sha256": sha,
                "format": "darknet",
                "cfg": _small_cfg(tmp_path),
                "nc": 3,
                "names": "toy",
            }
        },
        {"toy": ["a", "b", "c"]},
    )
    model, ckpt = load_model(stub + "?recipe_type=original")
    assert ckpt is None and model.nc == 3 and model.names == ["a", "b", "c"] and model.decode == "darknet"
    for k, v in src.state_dict().items():
        if "num_batches" not in k:
            assert torch.equal(model.state_dict()[k], v), k
    host = base.split("//", 1)[1].replace(":", "_")
    cached = tmp_path / "cache" / "weights" / host / "small.weights"
    assert cached.is_file() and resolve_weights(stub) == cached
    assert _Quiet.requests == ["/small.weights"]  # the second resolve used the cache
    # bare file name of a registry entry, and its URL, resolve to the same cached file
    assert resolve_weights("small.weights") == cached
    assert resolve_weights(f"{base}/small.weights") == cached


def test_unknown_stub_lists_close_ones(served):
    _, base, zoo = served
    _write_zoo(
        zoo,
        {
            "zoo:cv/detection/yolo_v3-spp/pytorch/ultralytics/coco/base-none": {
                "url": f"{base}/x.pt",
                "format": "sparseyolo",
                "sha256": None,
            }
        },
    )
    with pytest.raises(WeightsError, match=r"close stubs: zoo:cv/detection/yolo_v3-spp/pytorch/ultralytics"):
        resolve_weights("zoo:cv/detection/yolo_v3-spp/pytorch/ultralytics/coco/base-nonee")


def test_registry_checksum_is_enforced(served):
    root, base, zoo = served
    (root / "w.weights").write_bytes(b"\0" * 64)
    _write_zoo(
        zoo,
        {
            "zoo:a/b/c/darknet/d/e/f": {
                "url": f"{base}/w.weights",
                "sha256": "1" * 64,
                "format": "darknet",
                "cfg": "yolov3-tiny",
            }
        },
    )
    with pytest.raises(DownloadError, match="checksum mismatch"):
        resolve_weights("zoo:a/b/c/darknet/d/e/f")


def test_bad_registry_is_config_error(served):
    _, _, zoo = served
    _write_zoo(zoo, {"zoo:x/y": {"url": "http://h/x", "format": "onnx"}})
    with pytest.raises(ConfigError, match=r"zoo\.yaml \(stub 'zoo:x/y'\): format must be"):
        load_zoo()


def test_url_checkpoint_and_nc_transfer(served):
    root, base, zoo = served
    _write_zoo(zoo, {})
    src = build_model("yolov3-tiny", width_multiple=0.125, nc=3, names=["a", "b", "c"])
    save_checkpoint(root / "best.pt", model=src, epoch=7)
    model, ckpt = load_model(f"{base}/best.pt")
    assert ckpt["epoch"] == 7 and model.names == ["a", "b", "c"]
    model5, _ = load_model(f"{base}/best.pt", nc=5)
    assert model5.nc == 5 and model5.detect.m[0].out_channels == 3 * 10
    assert torch.equal(model5.model[0].conv.weight, src.model[0].conv.weight)


def test_darknet_model_from_file_name_and_cfg(tmp_path):
    """A Darknet file named like a registry file gets that entry's model and class names; any other
    name needs a cfg (model name, YAML or Darknet .cfg); the class count comes from the file size."""
    src = build_model("yolov3-tiny")  # random weights, 80 classes: the layout the name promises
    cfg, weights = save_darknet(src, tmp_path / "yolov3-tiny.weights")
    model, ckpt = load_model(weights)  # yolov3-tiny.weights -> yolov3-tiny model, COCO names
    assert ckpt is None and model.nc == 80 and model.names[0] == "person" and model.decode == "darknet"
    assert torch.equal(model.model[13].conv.weight, src.model[13].conv.weight)
    model20, _ = load_model(weights, nc=20)
    assert model20.nc == 20 and torch.equal(model20.model[13].conv.weight, src.model[13].conv.weight)
    mystery = tmp_path / "mystery.weights"
    shutil.copy(weights, mystery)
    with pytest.raises(WeightsError, match="cannot tell which model"):
        load_model(mystery)
    m2, _ = load_model(mystery, cfg=cfg)
    assert torch.equal(m2.model[0].conv.weight, src.model[0].conv.weight)
    m3, _ = load_model(mystery, cfg="yolov3-tiny")
    assert m3.nc == 80 and m3.names[0] == "class0"  # no registry entry: no names
    # the class count the file size implies, not the YAML's 80
    small_yaml = _small_cfg(tmp_path)
    src7 = build_model(small_yaml, nc=7)
    seven, _ = load_model(save_darknet_weights(src7, tmp_path / "seven.weights"), cfg=small_yaml)
    assert seven.nc == 7 and torch.equal(seven.detect.m[1].weight, src7.detect.m[1].weight)


def test_checkpoint_with_same_or_other_cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEYOLO_ZOO_FILE", str(tmp_path / "zoo.yaml"))
    (tmp_path / "zoo.yaml").write_text("models: {}\n")
    src = build_model("yolov3-tiny", nc=3)
    src.decode = "darknet"
    p = save_checkpoint(tmp_path / "c.pt", model=src)
    same, _ = load_model(p, cfg="yolov3-tiny", nc=3)  # same layers: no rebuild, decode kept
    assert same.decode == "darknet" and torch.equal(same.detect.m[0].weight, src.detect.m[0].weight)
    small_yaml = _small_cfg(tmp_path)
    other, _ = load_model(p, cfg=small_yaml)  # other widths: only matching shapes transfer
    assert other.model[13].conv.weight.shape[0] == 128 and other.nc == 3


def _check_rescale_keeps_function(model, train_tol: float) -> None:
    """``rescale_to_init_norm`` brings every BN-followed conv to the init RMS, down from a larger
    one, and the network computes the same function: exactly in eval mode, up to ``train_tol`` of
    the output range in training mode."""
    import copy
    import math

    from torch import nn

    from sparseyolo.engine.setup import rescale_to_init_norm

    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_eval = model.eval()(x)[0]
        ref_train = copy.deepcopy(model).train()(x)  # (a train-mode pass moves the running stats: on a copy)
    convs = [m.conv for m in model.modules() if isinstance(getattr(m, "bn", None), nn.BatchNorm2d)]
    before = [float(c.weight.detach().pow(2).mean().sqrt()) for c in convs]
    assert rescale_to_init_norm(model) == len(convs) == 11  # the two Detect convs have no BN
    for c, b in zip(convs, before, strict=True):
        rms = float(c.weight.detach().pow(2).mean().sqrt())
        assert rms == pytest.approx(1 / math.sqrt(3 * c.weight[0].numel()), rel=1e-5) and rms < b
    with torch.no_grad():
        got = model.eval()(x)[0]  # running statistics scaled to match, BN weight absorbs the eps: exact
        assert (got - ref_eval).abs().max() <= 1e-4 * ref_eval.abs().max()
        model.train()  # batch statistics: BN divides the scale back out (eps aside)
        for got, ref in zip(model(x), ref_train, strict=True):
            assert (got - ref).abs().max() <= train_tol * ref.abs().max()


def test_rescale_pretrained_keeps_the_function_and_resets_the_norm(tmp_path):
    """On Darknet-like weights: 3x a fresh init's scale, trained-looking BN, loaded from a .weights file."""
    from torch import nn

    from sparseyolo.engine.setup import TrainConfig, build_train_model

    small_yaml = _small_cfg(tmp_path)
    src = build_model(small_yaml, nc=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            elif isinstance(m, nn.Conv2d) and m.bias is None:  # the BN-followed convs
                m.weight.mul_(3)
    model, _ = load_model(save_darknet_weights(src, tmp_path / "pretrained.weights"), cfg=small_yaml)
    _check_rescale_keeps_function(model, train_tol=1e-3)  # 6e-5 measured
    with pytest.raises(ConfigError, match="rescale-pretrained"):
        build_train_model(TrainConfig(cfg="yolov3-tiny", rescale_pretrained=True), nc=3, names=["a", "b", "c"])


@pytest.mark.real_data
def test_rescale_official_weights_keeps_the_function(shared_dir):
    """The official COCO weights are larger than a fresh init (1.7-7x); training mode differs by the
    eps only (0.3% of the output range measured)."""
    weights = shared_dir / "weights/yolov3-tiny.weights"
    if not weights.is_file():
        pytest.skip("yolov3-tiny.weights not in shared data")
    model, _ = load_model(weights, cfg="yolov3-tiny")
    _check_rescale_keeps_function(model, train_tol=0.01)
