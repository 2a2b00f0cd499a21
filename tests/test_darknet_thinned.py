"""Darknet export of thinned models: the written .cfg carries the thinned filter counts, and the
.cfg + .weights pair loads back (into a freshly built full-width model) with the same outputs."""

from __future__ import annotations

import pytest
import torch
from helpers import BUILDS, thinned_model

from sparseyolo.models import DetectionModel, build_model
from sparseyolo.models.darknet import load_darknet_weights, save_darknet
from sparseyolo.models.darknet_cfg import parse_cfg
from sparseyolo.models.darknet_layout import darknet_layout
from sparseyolo.models.weights import load_model
from sparseyolo.utils.errors import WeightsError


@pytest.fixture(scope="module", params=sorted(BUILDS))
def exported(request, tmp_path_factory):
    name = request.param
    model = thinned_model(name)
    assert model.yaml["widths"], "the recipe did not thin the model"
    cfg, weights = save_darknet(model, tmp_path_factory.mktemp(name) / f"{name}.weights")
    return name, model, cfg, weights


def outputs(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)[0]


def test_cfg_filters_are_the_thinned_widths(exported):
    name, model, cfg_path, _ = exported
    cfg = parse_cfg(cfg_path)
    layout = darknet_layout(model)
    assert len(cfg.convs) == len(layout)
    widths = model.yaml["widths"]
    checked = 0
    for c, item in zip(cfg.convs, layout, strict=True):
        assert (c.filters, c.c_in) == (item.conv.out_channels, item.conv.in_channels), item.name
        recorded = widths.get(f"{item.name}.conv" if item.bn is not None else item.name)
        if recorded is not None:
            assert [c.c_in, c.filters] == recorded, item.name
            checked += 1
    assert checked >= len(layout) - 2  # every conv but perhaps a detection conv lost channels
    with torch.device("meta"):
        full = build_model(name, nc=3, **BUILDS[name])
    assert sum(c.filters for c in cfg.convs) < sum(d.conv.out_channels for d in darknet_layout(full))
    assert cfg.n_floats == sum(d.n_floats for d in layout)  # the .weights size the cfg implies


def test_round_trip_into_full_width_model(exported):
    name, model, cfg, weights = exported
    fresh = build_model(name, nc=3, **BUILDS[name])
    load_darknet_weights(fresh, weights, cfg)
    assert fresh.yaml["widths"] == model.yaml["widths"]
    torch.testing.assert_close(fresh.detect.anchors, model.detect.anchors, rtol=0, atol=0)
    x = torch.rand(2, 3, 96, 128)
    assert (outputs(fresh, x) - outputs(model, x)).abs().max() < 1e-4
    # the re-export of the reloaded model is the same pair of files
    again_cfg, again = save_darknet(fresh, weights.with_name("again.weights"))
    assert again.read_bytes() == weights.read_bytes()
    assert again_cfg.read_text() == cfg.read_text()


def test_load_model_with_the_written_cfg(exported):
    name, model, cfg, weights = exported
    loaded, ckpt = load_model(weights, cfg=cfg)
    assert ckpt is None and loaded.nc == 3
    x = torch.rand(1, 3, 64, 96)
    assert (outputs(loaded, x) - outputs(model, x)).abs().max() < 1e-4


def test_bad_thinned_pair_leaves_model_unchanged(exported, tmp_path):
    name, model, cfg, weights = exported
    short = tmp_path / "short.weights"
    short.write_bytes(weights.read_bytes()[:-400])
    fresh = build_model(name, nc=3, **BUILDS[name])
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(WeightsError, match="ran out"):
        load_darknet_weights(fresh, short, cfg)
    after = fresh.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # same shapes and values: not resized
    assert not fresh.yaml.get("widths")
    # without its cfg the thinned file does not fit the full-width layout, and the message says why
    with pytest.raises(WeightsError, match="thinned export loads only with the .cfg"):
        load_darknet_weights(fresh, weights)


def test_cfg_that_does_not_fit_the_graph(exported, tmp_path):
    name, _, cfg, weights = exported
    text = cfg.read_text().splitlines()
    concat = next(i for i, line in enumerate(text) if line.startswith("layers=-1, "))
    text[concat] = "layers=-1"  # the conv after our Concat would get only one of its inputs
    bad = tmp_path / "bad.cfg"
    bad.write_text("\n".join(text) + "\n")
    fresh = build_model(name, nc=3, **BUILDS[name])
    shapes = {k: v.shape for k, v in fresh.state_dict().items()}
    with pytest.raises(WeightsError, match=r"bad\.cfg: its filter counts do not fit this model"):
        load_darknet_weights(fresh, weights, bad)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes


@pytest.mark.parametrize("exported", ["yolov3-tiny"], indirect=True)  # the layout checks above cover SPP
def test_full_width_pair_and_wider_cfg(exported, tmp_path):
    name, model, _, _ = exported
    full = build_model(name, nc=3, **BUILDS[name]).eval()
    cfg, weights = save_darknet(full, tmp_path / "full.weights")
    again = build_model(name, nc=3, **BUILDS[name])
    load_darknet_weights(again, weights, cfg)
    assert not again.yaml.get("widths")
    x = torch.rand(1, 3, 64, 64)
    assert again.decode == full.decode == "v5"  # the cfg carries the decode (new_coords=1, scale_x_y=2)
    assert (outputs(again, x) - outputs(full, x)).abs().max() < 1e-4
    # a cfg wider than the model is another model, not a thinned export: refused, as before
    narrow = DetectionModel(model.yaml)
    with pytest.raises(WeightsError, match=r"full\.cfg:\d+: \[convolutional\] #0 is 16x3x3x3"):
        load_darknet_weights(narrow, weights, cfg)


def test_a_renamed_pair_is_recognised_by_its_layers(exported, tmp_path):
    """``export --format darknet`` names the pair after the checkpoint (``best.cfg``, ``best.weights``), a
    name that is no registered model: the loader finds the model whose Darknet layers the cfg lists."""
    name, model, cfg, weights = exported
    renamed_cfg, renamed = tmp_path / "best.cfg", tmp_path / "best.weights"
    renamed_cfg.write_bytes(cfg.read_bytes())
    renamed.write_bytes(weights.read_bytes())
    back, _ = load_model(renamed, cfg=str(renamed_cfg))
    assert back.yaml["yaml_file"].startswith(name + ".")
    x = torch.rand(1, 3, 64, 64)
    assert (outputs(back, x) - outputs(model, x)).abs().max() < 1e-4
    # a cfg that is none of the registered models still gets the error that says what to pass
    alien = tmp_path / "alien.cfg"
    alien.write_text(renamed_cfg.read_text().replace("size=3", "size=5", 1))  # a 5x5 first conv
    with pytest.raises(WeightsError, match="cannot tell which model .* pass --cfg with one of"):
        load_model(renamed, cfg=str(alien))
