"""The shipped channel-pruning recipes: they load, attach to the models they are written for, remove
the stated fraction of channels in multiples of ``round_to``, thin the model before QAT starts, and
train for real (a few steps on the built-in shapes data)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseyolo.models.yolo import build_model
from sparseyolo.quantization import is_qat_model
from sparseyolo.recipe import Recipe
from sparseyolo.sparsity.channel_pruner import kept_channels
from sparseyolo.utils.errors import ConfigError

# name -> (model config, width multiple, channel fraction removed, int8 QAT at the end, FLOPs ratio at least);
# YOLOv3-SPP at half width (the same parameter names, 16+ channels everywhere) keeps the test short
RECIPES = {
    "yolov3-tiny.channel_pruned": ("yolov3-tiny", 1.0, 0.5, False, 3.5),
    "yolov3-tiny.channel_pruned_quantized": ("yolov3-tiny", 1.0, 0.45, True, 2.9),
    "yolov3-spp.channel_pruned_quantized": ("yolov3-spp", 0.5, 0.6, True, 5.0),
}
# the share of the run that prunes (the rest recovers, then QAT); the tiny QAT recipe recovers longer (stop 39)
PRUNING_SHARE = {"yolov3-tiny.channel_pruned_quantized": 0.4}
# the convs each recipe leaves whole besides the Detect outputs: the tiny QAT recipe keeps its first conv
KEPT_WHOLE = {"yolov3-tiny.channel_pruned_quantized": {"model.0.conv"}}
# short schedules with the recipes' own variables, so the full-size models run in seconds
SHORT = {"num_epochs": 4, "quantization_epochs": 1}


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _pruner(manager):
    (mod,) = [m for m in manager.pruning_modifiers if getattr(m, "structure", None) == "filter"]
    return mod


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_loads_with_the_documented_schedule(name):
    _, _, sparsity, qat, _ = RECIPES[name]
    recipe = Recipe.load(name)
    v = recipe.variables
    assert v["channel_sparsity"] == sparsity and v["round_to"] == 8 and v["importance"] == "l1"
    share = PRUNING_SHARE.get(name, 0.6)
    assert v["pruning_end_epoch"] == round(share * v["num_epochs"])  # pruning over the first 60% (or 40%)
    manager = recipe.manager()
    pruning = _pruner(manager)
    assert (pruning.final_sparsity, pruning.round_to, pruning.inter_func) == (sparsity, 8, "cubic")
    assert pruning.end_epoch == v["pruning_end_epoch"] < v["num_epochs"]  # recovery epochs follow
    quant = [m for m in manager.modifiers if m.tag == "QuantizationModifier"]
    assert bool(quant) == qat
    if qat:
        (q,) = quant
        assert q.start_epoch == v["num_epochs"] - v["quantization_epochs"] > pruning.end_epoch
        detect = "model.28" if name.startswith("yolov3-spp") else "model.20"
        assert detect not in q.submodules and "model.1" in q.submodules  # the Detect head stays in float
        # the first conv: float where a MaxPool follows it (YOLOv3-tiny; ONNX Runtime runs that faster since the
        # export moves the MaxPool before the activation), int8 before SPP's stride-2 conv (docs/quantization.md)
        assert ("model.0" in q.submodules) == name.startswith("yolov3-spp")
        # the observers see at least one epoch of data before they are frozen
        assert (
            q.freeze_bn_stats_epoch >= q.start_epoch + 1 and q.disable_quantization_observer_epoch >= q.start_epoch + 1
        )
        # 7-bit weights with one scale per channel: exact on ONNX Runtime with or without VNNI
        assert (q.weight_bits, q.per_channel) == (7, True)
        sparseml = Recipe.load(name, args={"weight_bits": 8, "per_channel": False}).manager()
        assert [(m.weight_bits, m.per_channel) for m in sparseml.modifiers if m.tag == "QuantizationModifier"] == [
            (8, False)
        ]
    # the run's length scales the phases (the prose's --recipe-args advice)
    longer = Recipe.load(name, args={"num_epochs": 80}).variables
    assert longer["pruning_end_epoch"] == round(share * 80)
    if qat:
        assert longer["quantization_start_epoch"] == 80 - v["quantization_epochs"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_removes_the_channel_fraction_and_thins_before_qat(name):
    cfg, width, sparsity, qat, min_flops_ratio = RECIPES[name]
    model = build_model(cfg, nc=80, width_multiple=width)
    before = {n: m.out_channels for n, m in _convs(model).items()}
    flops_before = model.flops(416)
    out_shapes = [o.shape for o in model.eval()(torch.zeros(1, 3, 64, 64))[1]]
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    manager = Recipe.load(name, args=SHORT if qat else {"num_epochs": 4}).manager()
    manager.attach(model, opt, steps_per_epoch=2)
    pruning = _pruner(manager)
    skipped = {s.split(" ")[0].rpartition(".")[0] for s in pruning.pruner.skipped}
    events: list[tuple[str, float]] = []
    flops_thinned: list[float] = []
    for event in ("thinned", "qat_start"):
        manager.subscribe(event, lambda event=event, **_: events.append((event, manager.epoch)))
    manager.subscribe("thinned", lambda **_: flops_thinned.append(model.flops(416)))
    for _ in range(manager.max_epochs * 2):
        opt.step()
        manager.step()
    manager.finalize()

    # thinning at the end of pruning, QAT only afterwards
    assert events[0] == ("thinned", pruning.end_epoch)
    if qat:
        assert events[1][0] == "qat_start" and events[1][1] >= events[0][1]
        assert is_qat_model(model)
    else:
        assert [e for e, _ in events] == ["thinned"]

    # every prunable conv lost the stated fraction of its filters, in multiples of round_to
    after = {n: m.out_channels for n, m in _convs(model).items()}
    whole = KEPT_WHOLE.get(name, set())
    pruned = {n: c for n, c in before.items() if n not in skipped | whole and ".m." not in n}  # Detect: m.0..
    assert len(pruned) >= 10
    for n in whole:
        assert after[n] == before[n], n
    for n, c in pruned.items():
        assert after[n] == kept_channels(c, sparsity, 8), n
        assert after[n] % 8 == 0 and after[n] < c, n
    removed = 1 - sum(after[n] for n in pruned) / sum(pruned.values())
    assert removed == pytest.approx(sparsity, abs=0.03)
    # the Detect head's output convs keep their width: the outputs keep their shape
    for n in before:
        if ".m." in n:
            assert after[n] == before[n], n
    assert [o.shape for o in model.eval()(torch.zeros(1, 3, 64, 64))[1]] == out_shapes
    assert flops_before / flops_thinned[0] > min_flops_ratio


def test_args_cannot_move_thinning_after_qat_start():
    """The recovery learning-rate modifier spans pruning_end_epoch -> quantization_start_epoch, so args
    that would thin a quantization-aware model are refused when the recipe loads."""
    with pytest.raises(ConfigError, match="end_epoch 52.0 is before start_epoch 53.0"):
        Recipe.load("yolov3-tiny.channel_pruned_quantized", args={"pruning_end_epoch": 53})


def test_round_to_8_needs_16_channels_and_the_error_says_so():
    model = build_model("yolov3-tiny", nc=3, width_multiple=0.5)  # 8 channels in the first conv
    manager = Recipe.load("yolov3-tiny.channel_pruned").manager()
    with pytest.raises(ConfigError, match="round_to 8 leaves .* no channels"):
        manager.attach(model, torch.optim.SGD(model.parameters(), lr=0.01), steps_per_epoch=2)


def _short_run(name: str, tmp_path, **extra_args):
    """3 epochs of ``name`` on 16 shapes images at 64 px (quarter-width YOLOv3-tiny); the run folder."""
    import yaml

    from sparseyolo.data.synthetic import make_shapes_dataset
    from sparseyolo.engine.trainer import train
    from sparseyolo.models.parse import load_model_yaml

    data = make_shapes_dataset(tmp_path / "shapes", n_train=16, n_val=4, img_size=64)
    d, _ = load_model_yaml("yolov3-tiny")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**d, "width_multiple": 0.25}, sort_keys=False))
    args = {"num_epochs": 3, "pruning_end_epoch": 1, "pruning_update_frequency": 0.25, "round_to": 2, **extra_args}
    if name.endswith("quantized"):
        args["quantization_epochs"] = 1
    return train(
        cfg=str(cfg),
        data=str(data),
        recipe=name,
        recipe_args=args,
        epochs=99,
        img_size=64,
        batch_size=4,
        workers=0,
        device="cpu",
        noplots=True,
        tensorboard=False,
        project=str(tmp_path / "runs"),
        name="r",
        hyp="pruned_quantized" if name.endswith("quantized") else "pruned",
        patience=0,
    )


@pytest.mark.parametrize("name", ["yolov3-tiny.channel_pruned", "yolov3-tiny.channel_pruned_quantized"])
def test_short_real_training_run(name, tmp_path):
    """3 epochs on 16 shapes images at 64 px: prune, thin, recover (and QAT); best.pt is the thinned model.
    With QAT: the recipe's ``weight_bits: 7``, ``per_channel: true`` survive the checkpoint, and the
    export stores plain int8 weights within -64..63 (the 7-bit clamp folded)."""
    from sparseyolo.models.weights import load_model

    run = _short_run(name, tmp_path)
    rows = (run / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # header + the recipe's 3 epochs
    model, _ = load_model(run / "weights" / "best.pt")
    convs = _convs(model)
    # quarter width: 8, 8, 16, ... 128 filters (never fewer than 8); half of them kept, or 55% in the
    # quantized recipe, which leaves the first conv whole
    if name.endswith("quantized"):
        assert convs["model.0.conv"].out_channels == 8
        assert convs["model.10.conv"].out_channels == kept_channels(128, 0.45, 2)
    else:
        assert convs["model.0.conv"].out_channels == 4 and convs["model.10.conv"].out_channels == 64
    assert is_qat_model(model) == name.endswith("quantized")
    out = model.float().eval()(torch.zeros(1, 3, 64, 64))
    assert out[0].shape[-1] == 5 + 3
    if name.endswith("quantized"):
        _check_7_bit_per_channel_export(model, tmp_path)


def _check_7_bit_per_channel_export(model: nn.Module, tmp_path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from sparseyolo.exporters import export_onnx
    from sparseyolo.quantization import WeightQuantizer

    quantizers = [m for m in model.modules() if isinstance(m, WeightQuantizer)]
    assert quantizers and all(q.per_channel and (q.quant_min, q.quant_max) == (-64, 63) for q in quantizers)
    proto = onnx.load(export_onnx(model, tmp_path / "q.onnx", img_size=64))
    assert not [n.op_type for n in proto.graph.node if n.op_type in ("Max", "Min")]  # the clamps are folded
    weights = [
        numpy_helper.to_array(t)
        for t in proto.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    ]
    assert len(weights) == len(quantizers)  # every quantized conv stores int8 weights
    assert all(-64 <= w.min() and w.max() <= 63 for w in weights)
    assert np.abs(np.concatenate([w.ravel() for w in weights])).max() >= 60
