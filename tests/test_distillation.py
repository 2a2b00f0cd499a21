"""DistillationModifier (SparseML-compatible), --teacher, and the recipe schedule checks of `train`."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseyolo.engine.schedule_checks import schedule_warnings
from sparseyolo.recipe import Recipe
from sparseyolo.recipe.modifiers.distillation import kl_softmax_loss
from sparseyolo.utils.errors import ConfigError

DISTILL = """
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}
  - !DistillationModifier {start_epoch: 0, end_epoch: 1, hardness: 0.75, temperature: 3.0, distill_output_keys: [1]}
"""


def test_kl_softmax_loss_is_sparsemls_formula():
    s, t = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 7)
    T = 2.5
    p_t = F.softmax(t / T, -1)
    manual = (p_t * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum() * T * T / (s.numel() / 7)
    assert torch.allclose(kl_softmax_loss(s, t, T), manual, atol=1e-6)
    assert kl_softmax_loss(t, t, T).abs() < 1e-6
    with pytest.raises(ValueError, match="differ in shape"):
        kl_softmax_loss(s, t[..., :3], T)


def test_manager_mixes_losses_only_while_active_and_keeps_teacher_out_of_state():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.5)
    manager = Recipe.load(DISTILL).manager()
    manager.set_teacher(teacher)
    manager.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=2)
    assert not any(p.requires_grad for p in manager.teacher.parameters()) and not manager.teacher.training
    x = torch.randn(8, 4)
    student_out = [model[0](x), model(x)]
    with torch.no_grad():
        teacher_out = [teacher[0](x), teacher(x)]
    loss = torch.tensor(2.0)
    distill = kl_softmax_loss(student_out[1], teacher_out[1], 3.0)  # distill_output_keys: [1] only
    got = manager.loss_update(loss, student_out, teacher_out)
    assert torch.allclose(got, 0.25 * loss + 0.75 * distill) and distill > 0
    got.backward()  # gradients reach the student, not the teacher
    assert model[2].weight.grad is not None and teacher[2].weight.grad is None
    for _ in range(2):  # past end_epoch 1
        manager.step()
    assert manager.distillation is None and manager.loss_update(loss, student_out, teacher_out) is loss
    assert "teacher" not in str(manager.state_dict())


def test_self_distillation_without_a_teacher_freezes_the_start_weights():
    model = nn.Sequential(nn.Linear(4, 3))
    manager = Recipe.load(DISTILL).manager().attach(model, None, steps_per_epoch=2)
    assert manager.teacher is not None and manager.teacher is not model
    assert torch.equal(manager.teacher[0].weight, model[0].weight)


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("hardness: 1.5", "hardness must lie in [0, 1]"),
        ("temperature: 0", "temperature must be positive"),
        ("teacher_input_keys: [x]", "teacher_input_keys is not supported"),
    ],  # fmt: skip
)
def test_bad_keys_are_one_line(bad, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        Recipe.load(f"modifiers:\n  - !DistillationModifier {{start_epoch: 0, {bad}}}\n")


def test_schedule_warning_names_the_numbers():
    recipe = Recipe.load(
        "modifiers:\n  - !GMPruningModifier {params: [0.weight], init_sparsity: 0.05, final_sparsity: 0.5, "
        "start_epoch: 0, end_epoch: 2, update_frequency: 0.5}\n"
    )
    model = nn.Sequential(nn.Linear(8, 8))
    manager = recipe.manager().attach(model, None, steps_per_epoch=3)
    # 10 batches of 16 with one optimizer step every 4 batches: 3 steps per epoch, an update every 1.5
    (line,) = schedule_warnings(manager, steps_per_epoch=3, batches_per_epoch=10, accumulate=4, batch_size=16)
    assert "every 0.5 epochs = 1.5 optimizer steps" in line and "one optimizer step every 4" in line
    assert "--nbs 16" in line and "gives 5" in line
    assert schedule_warnings(manager, steps_per_epoch=10, batches_per_epoch=10, accumulate=1, batch_size=16) == []


def test_schedule_warning_is_one_line_for_modifiers_that_share_a_frequency(tmp_path):
    gmp = (
        "  - !GMPruningModifier {{params: [{}.weight], init_sparsity: 0.05, final_sparsity: 0.5, "
        "start_epoch: 0, end_epoch: 2, update_frequency: {}}}\n"
    )
    path = tmp_path / "r.yaml"
    path.write_text("modifiers:\n" + gmp.format(0, 0.5) + gmp.format(1, 0.5) + gmp.format(2, 0.25))
    recipe = Recipe.load(path)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    manager = recipe.manager().attach(model, None, steps_per_epoch=3)
    shared, alone = schedule_warnings(manager, steps_per_epoch=3, batches_per_epoch=10, accumulate=4, batch_size=16)
    assert shared.startswith(f"WARNING: {path}: 2 pruning modifiers (lines 2, 3) update their masks every 0.5 epochs")
    assert alone.startswith(f"WARNING: {path}:4: !GMPruningModifier updates its masks every 0.25 epochs = 0.75")


def test_train_distills_from_weights_and_checkpoints_hold_no_teacher(shapes_data, tmp_path, caplog):
    """A short run: the recipe's nbs default, the schedule warning when --nbs forces accumulation, the
    teacher from --weights, and checkpoints / EMA with the model's keys only."""
    from sparseyolo.engine import train
    from sparseyolo.models import build_model
    from sparseyolo.models.checkpoint import load_checkpoint, save_checkpoint

    model = build_model(shapes_data["cfg"], nc=3)
    weights = save_checkpoint(tmp_path / "dense.pt", model=model, names=list(model.names), model_yaml=model.yaml)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}\n"
        "  - !GMPruningModifier {params: [model.2.conv.weight], init_sparsity: 0.05, final_sparsity: 0.5, "
        "start_epoch: 0, end_epoch: 1, update_frequency: 0.5}\n"
        "  - !DistillationModifier {start_epoch: 0, hardness: 0.5, temperature: 2.0}\n"
    )
    common = dict(data=shapes_data["data"], weights=str(weights), recipe=str(recipe), img_size=64, batch_size=2)
    common.update(workers=0, project=str(tmp_path / "runs"), noplots=True, tensorboard=False, exist_ok=True)
    with caplog.at_level(logging.INFO, logger="sparseyolo"):
        run = train(name="a", **common)
    assert "one optimizer step per batch of 2" in caplog.text
    assert f"distillation teacher: {weights}" in caplog.text
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert set(ckpt["model"]) == set(model.state_dict()) and not any("teacher" in k for k in ckpt)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sparseyolo"):
        train(name="b", nbs=8, **common)  # 4 batches, one step per 4: one step per epoch
    assert "updates its masks every 0.5 epochs = 0.5 optimizer steps" in caplog.text


def test_teacher_with_other_classes_is_one_line(shapes_data, tmp_path):
    from sparseyolo.engine import train
    from sparseyolo.models import build_model
    from sparseyolo.models.checkpoint import save_checkpoint

    other = build_model(shapes_data["cfg"], nc=7)
    teacher = save_checkpoint(tmp_path / "t.pt", model=other, names=list(other.names), model_yaml=other.yaml)
    recipe = "modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}\n  - !DistillationModifier {}\n"
    with pytest.raises(ConfigError, match=r"--teacher .*t\.pt predicts 7 classes, the model 3"):
        train(data=shapes_data["data"], cfg=shapes_data["cfg"], recipe=recipe, teacher=str(teacher), img_size=64,
              batch_size=2, workers=0, project=str(tmp_path / "runs"), noplots=True, tensorboard=False)  # fmt: skip
