"""Checkpoints: atomic save, safe load, clear errors for bad files, model rebuild (incl. QAT)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from sparseyolo.models import build_model
from sparseyolo.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sparseyolo.utils.errors import WeightsError


def _small(nc: int = 2):
    return build_model("yolov3-tiny", nc=nc, width_multiple=0.125, names=[f"n{i}" for i in range(nc)])


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


@pytest.fixture()
def ckpt_path(tmp_path):
    model, ema = _perturb(_small(), 0), _perturb(_small(), 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.zeros(1, 3, 64, 64))[0].sum().backward()
    opt.step()
    return (
        save_checkpoint(
            tmp_path / "last.pt",
            model=model,
            ema=ema.state_dict(),
            optimizer=opt.state_dict(),
            epoch=3,
            best_fitness=np.float64(0.25),
            metrics={"mAP50": np.float32(0.5)},
            rng={"torch": torch.get_rng_state(), "numpy": np.arange(3)},
        ),
        model,
        ema,
    )


def test_round_trip(ckpt_path):
    path, model, ema = ckpt_path
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "sparseyolo" and ckpt["version"] == 1 and ckpt["epoch"] == 3
    assert ckpt["names"] == ["n0", "n1"] and ckpt["model_yaml"]["nc"] == 2
    assert isinstance(ckpt["best_fitness"], float) and ckpt["sparseyolo_version"] and ckpt["date"]
    assert ckpt["recipe"] is None and ckpt["optimizer"]["param_groups"][0]["lr"] == 0.01
    from_ema = model_from_checkpoint(ckpt)
    from_model = model_from_checkpoint(ckpt, use_ema=False)
    assert from_ema.names == ["n0", "n1"]
    for k, v in ema.state_dict().items():
        assert torch.equal(from_ema.state_dict()[k], v), k
    for k, v in model.state_dict().items():
        assert torch.equal(from_model.state_dict()[k], v), k


def test_decode_travels_with_yaml(tmp_path):
    m = _small()
    m.decode = "darknet"
    p = save_checkpoint(tmp_path / "d.pt", model=m)
    assert model_from_checkpoint(load_checkpoint(p)).decode == "darknet"


def test_missing_truncated_and_foreign_files(ckpt_path, tmp_path):
    path, _, _ = ckpt_path
    with pytest.raises(WeightsError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    half = tmp_path / "half.pt"
    data = path.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"half\.pt: truncated or corrupt"):
        load_checkpoint(half)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsError, match=r"junk\.pt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(WeightsError, match="not a sparseyolo checkpoint"):
        load_checkpoint(foreign)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_objects_are_refused(tmp_path):
    p = tmp_path / "pickled.pt"
    torch.save({"format": "sparseyolo", "model": _Evil()}, p)
    with pytest.raises(WeightsError, match="pickled Python objects"):
        load_checkpoint(p)


def test_unsaveable_field_is_named(tmp_path):
    with pytest.raises(TypeError, match="'train_args.cb'"):
        save_checkpoint(tmp_path / "x.pt", model=_small(), train_args={"cb": object()})


def test_state_mismatch_is_weights_error(tmp_path):
    m = _small()
    sd = m.state_dict()
    sd.pop("model.0.conv.weight")
    p = save_checkpoint(tmp_path / "bad.pt", model=sd, model_yaml=m.yaml, names=m.names)
    with pytest.raises(WeightsError, match="missing 1 keys.*model.0.conv.weight"):
        model_from_checkpoint(load_checkpoint(p))


def test_qat_structure_is_rebuilt(tmp_path):
    import sparseyolo.quantization as q

    m = _small()
    subs = ["model.0", "model.2", "model.20"]
    config = {"weight_bits": 8, "activation_bits": 8, "per_channel": False, "exclude_module_types": ["LeakyReLU"]}
    q.prepare_qat(m, submodules=subs, config=q.QATConfig.from_dict(config))
    m.train()
    m(torch.rand(2, 3, 64, 64))  # observers see data, so their ranges are non-trivial
    state = {"qat": {"submodules": subs, "config": config}, "modifiers": []}
    p = save_checkpoint(tmp_path / "qat.pt", model=m, recipe_state=state)
    rebuilt = model_from_checkpoint(load_checkpoint(p))
    assert q.is_qat_model(rebuilt)
    for k, v in m.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    m.eval()
    rebuilt.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)[0], m(x)[0])
