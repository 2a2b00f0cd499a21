"""Training under a recipe: epochs from the recipe, masks on the EMA, best.pt after pruning, QAT + resume."""

from __future__ import annotations

import pytest
import torch
from conftest import stop_after_epoch
from helpers import FAST, _load

from sparseyolo.engine.setup import TrainConfig
from sparseyolo.engine.trainer import Trainer, train

PRUNED = "yolov3-tiny.pruned"
PRUNED_QAT = "yolov3-tiny.pruned_quantized"


def test_pruning_recipe_masks_ema_and_restarts_best(tiny_data, tmp_path):
    t = Trainer(
        TrainConfig(
            cfg=tiny_data["cfg"],
            data=tiny_data["data"],
            recipe=PRUNED,
            epochs=99,
            project=str(tmp_path),
            recipe_args={"num_epochs": 3, "pruning_end_epoch": 2},
            hyp="finetune",
            **{**FAST, "batch_size": 2},
        )
    )
    assert t.max_epochs == 3  # the recipe decides
    t.train()
    assert t.manager.pruning_done
    ck = _load(t.weights_dir / "last.pt")
    assert ck["recipe"] and ck["recipe_state"]["epoch"] == pytest.approx(3.0)
    name = "model.8.conv.weight"  # a 0.7-sparsity layer in the recipe
    for key in ("model", "ema"):
        w = ck[key][name]
        assert (w == 0).float().mean().item() == pytest.approx(0.7, abs=0.02), key
    # zeros of the EMA copy are exactly the model's pruning mask
    assert torch.equal(ck["ema"][name] == 0, ck["model"][name] == 0)
    best = _load(t.weights_dir / "best.pt")
    assert best["epoch"] >= 1  # chosen after pruning ended (end of epoch index 1), never the dense epoch 0
    assert (best["ema"][name] == 0).float().mean().item() == pytest.approx(0.7, abs=0.02)
    t.evaluate_best()  # what after_train runs when best.pt is not the final epoch


@pytest.mark.slow
def test_qat_recipe_turns_off_ema_and_resumes(tiny_data, tmp_path):
    args = {"num_epochs": 3, "pruning_end_epoch": 1, "quantization_start_epoch": 2}
    common = dict(
        cfg=tiny_data["cfg"],
        data=tiny_data["data"],
        recipe=PRUNED_QAT,
        recipe_args=args,
        hyp="pruned_quantized",
        project=str(tmp_path),
        noval=True,
        **{**FAST, "batch_size": 2},
    )
    ref = train(name="ref", **common)
    t = Trainer(TrainConfig(name="cut", **common))
    t.register_hooks([stop_after_epoch(1)])
    with pytest.raises(KeyboardInterrupt):
        t.train()
    train(resume=str(tmp_path / "cut/weights/last.pt"), workers=0, device="cpu")
    a, b = _load(ref / "weights/last.pt"), _load(tmp_path / "cut/weights/last.pt")
    assert a["ema"] is None and a["recipe_state"].get("qat")  # QAT ran, EMA turned off
    assert any("scale" in k or "observer" in k or "min_val" in k or "fake" in k for k in a["model"])
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"{k} differs after resume in the QAT phase"
    from sparseyolo.models.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(b).eval()
    assert model(torch.zeros(1, 3, 64, 64))[0].shape[-1] == 85


def test_qat_start_epoch_is_validated_as_float_and_never_chosen(tiny_data, tmp_path, caplog):
    """QAT is applied after the last step of the epoch before its start and before that epoch's
    validation: the validation must not calibrate the new activation quantizers on validation
    images, and best.pt must come from an epoch that trained with QAT."""
    from sparseyolo.engine.base import HookBase
    from sparseyolo.quantization import ActivationQuantizer

    args = {"num_epochs": 3, "pruning_end_epoch": 1, "quantization_start_epoch": 2}
    t = Trainer(
        TrainConfig(
            cfg=tiny_data["cfg"],
            data=tiny_data["data"],
            recipe=PRUNED_QAT,
            recipe_args=args,
            hyp="pruned_quantized",
            project=str(tmp_path),
            **{**FAST, "batch_size": 2},
        )
    )
    seen = {}

    class _Probe(HookBase):
        def after_epoch(self):  # runs after EvalHook: record the quantizers' state at epoch 1's end
            if self.trainer.epoch == 1:
                quantizers = [m for m in self.trainer.model.modules() if isinstance(m, ActivationQuantizer)]
                seen["n"] = len(quantizers)
                seen["initialized"] = sum(q.initialized for q in quantizers)

    t.register_hooks([_Probe()])
    caplog.set_level("INFO")
    t.train()
    assert seen["n"] > 0 and seen["initialized"] == 0  # QAT structure in place, no range from val data
    assert "validated with the quantizers bypassed" in caplog.text
    best = _load(t.weights_dir / "best.pt")
    assert best["epoch"] == 2  # the only epoch that trained with QAT


def test_shipped_pruned_recipe_sets_the_rate_and_drops_weight_decay_for_recovery(tiny_data):
    """The rate #16 measured on BCCD: 0.005 while pruning (no warm-up), then x0.9 per recovery epoch
    without weight decay, for every parameter group; ``num_epochs`` lengthens only the recovery."""
    from sparseyolo.models import build_model
    from sparseyolo.recipe import Recipe
    from sparseyolo.recipe.modifiers import GMPruningModifier

    def trace(args=""):
        model = build_model(tiny_data["cfg"])  # YOLOv3-tiny's layout at a quarter of its width
        decayed = [p for p in model.parameters() if p.dim() > 1]
        others = [p for p in model.parameters() if p.dim() <= 1]
        opt = torch.optim.SGD([{"params": decayed, "weight_decay": 5e-4}, {"params": others}], lr=0.1, momentum=0.9)
        # mask updates every 5 epochs instead of 0.5 keep the test fast; the rate does not depend on them
        manager = Recipe.load(PRUNED, args="update_frequency=5" + args).manager()
        manager.attach(model, opt, steps_per_epoch=1)
        seen = []
        for _ in range(manager.max_epochs):
            seen.append([(g["lr"], g["weight_decay"]) for g in opt.param_groups])
            opt.step()
            manager.step()
        return seen, manager

    seen, manager = trace()
    assert manager.controls_lr and len(seen) == 40
    for epoch, groups in enumerate(seen):
        rate = 0.005 * 0.9 ** max(epoch - 25, 0)
        assert all(lr == pytest.approx(rate) for lr, _ in groups), epoch
        assert groups[0][1] == (5e-4 if epoch < 25 else 0.0), epoch
    longer, manager = trace(",num_epochs=60")
    assert len(longer) == 60 and longer[:40] == seen  # the same pruning, then 20 more recovery epochs
    assert longer[59][0][0] == pytest.approx(0.005 * 0.9**34)
    assert all(m.end_epoch == 25 for m in manager.modifiers if isinstance(m, GMPruningModifier))
