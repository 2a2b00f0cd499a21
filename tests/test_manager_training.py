"""The recipe manager driving small non-YOLO CNNs: lr/wd, masks under SGD, resume, QAT wiring."""

import copy
import io
import math

import pytest
import torch
from torch import nn

from sparseyolo.recipe import Recipe
from sparseyolo.utils.errors import ConfigError

SPE = 4  # steps per epoch


def small_cnn(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(4, 8, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(8))
    layers += [
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ]
    return nn.Sequential(*layers)


def lr_trace(recipe_text, epochs, base_lr=0.5):
    """lr in force for each optimizer step, indexed by the fractional epoch at which it is set."""
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=base_lr)
    manager = Recipe.load(recipe_text).manager()
    manager.attach(model, opt, steps_per_epoch=SPE)
    trace = {0.0: opt.param_groups[0]["lr"]}
    for step in range(1, epochs * SPE + 1):
        opt.step()
        manager.step()
        trace[step / SPE] = opt.param_groups[0]["lr"]
    return trace, manager


def test_set_learning_rate_and_weight_decay():
    text = """
modifiers:
  - !SetLearningRateModifier {start_epoch: 0.5, learning_rate: 0.02}
  - !SetWeightDecayModifier {start_epoch: 1.25, weight_decay: 0.0}
"""
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=5e-4)
    manager = Recipe.load(text).manager()
    manager.attach(model, opt, steps_per_epoch=SPE)
    assert opt.param_groups[0]["lr"] == 0.5 and not manager.controls_lr
    seen = []
    for step in range(1, 2 * SPE + 1):
        manager.step()
        seen.append((step / SPE, opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]))
    for epoch, lr, wd in seen:
        assert lr == (0.02 if epoch >= 0.5 else 0.5)
        assert wd == (0.0 if epoch >= 1.25 else 5e-4)
    assert manager.controls_lr


@pytest.mark.parametrize("func", ["linear", "cosine"])
def test_learning_rate_function_modifier(func):
    init, final, start, end = 0.1, 0.01, 1.0, 3.0
    trace, manager = lr_trace(
        f"""
modifiers:
  - !LearningRateFunctionModifier {{lr_func: {func}, init_lr: {init}, final_lr: {final}, start_epoch: {start}, end_epoch: {end}}}
""",
        epochs=4,
    )
    for epoch, lr in trace.items():
        x = min(max((epoch - start) / (end - start), 0), 1)
        if epoch < start:
            want = 0.5
        elif func == "linear":
            want = init + x * (final - init)
        else:
            want = final + (init - final) * (1 + math.cos(math.pi * x)) / 2
        assert lr == pytest.approx(want, abs=1e-12), epoch
    assert trace[4.0] == pytest.approx(final)


def test_cyclic_linear():
    trace, _ = lr_trace(
        """
modifiers:
  - !LearningRateFunctionModifier {lr_func: cyclic_linear, init_lr: 0.1, final_lr: 0.01, start_epoch: 0, end_epoch: 2, cycle_epochs: 1}
""",
        epochs=2,
    )
    for epoch, lr in trace.items():
        if epoch >= 2:
            continue
        pos = round(epoch * SPE) % SPE
        assert lr == pytest.approx(0.1 - pos / (SPE - 1) * 0.09), epoch


@pytest.mark.parametrize(
    "lr_class,kwargs,expected",
    [
        # n = optimizer steps since start_epoch (SPE steps per epoch)
        ("StepLR", "{step_size: 1, gamma: 0.5}", lambda n, e: 0.08 * 0.5 ** (n // SPE)),
        ("StepLR", "{step_size: 0.5, gamma: 0.5}", lambda n, e: 0.08 * 0.5 ** (n // (SPE // 2))),
        ("MultiStepLR", "{milestones: [1.5, 2.25], gamma: 0.1}", lambda n, e: 0.08 * 0.1 ** ((n >= 2) + (n >= 5))),
        ("ExponentialLR", "{gamma: 0.9}", lambda n, e: 0.08 * 0.9 ** (n // SPE)),
        (
            "CosineAnnealingWarmRestarts",
            "{lr_min: 0.001, cycle_epochs: 1.0}",
            lambda n, e: 0.001 + (0.08 - 0.001) * (1 + math.cos(math.pi * ((e - 1) % 1.0))) / 2,
        ),
    ],
)
def test_learning_rate_modifier_classes(lr_class, kwargs, expected):
    trace, manager = lr_trace(
        f"""
modifiers:
  - !LearningRateModifier
    lr_class: {lr_class}
    lr_kwargs: {kwargs}
    init_lr: 0.08
    start_epoch: 1.0
    end_epoch: 3.0
    update_frequency: -1.0
""",
        epochs=4,
    )
    last = None
    for epoch, lr in sorted(trace.items()):
        if epoch < 1.0:
            assert lr == 0.5
        elif epoch < 3.0:
            n = round(epoch * SPE) - SPE
            assert lr == pytest.approx(expected(n, epoch), abs=1e-12), epoch
            last = lr
        else:  # after end_epoch the lr keeps its last value (SparseML takes no step at the end)
            assert lr == last
    assert manager.controls_lr


def test_set_step_set_learning_rate_schedule():
    """The lr pattern of SparseML's recipes: a set lr, a StepLR phase from epoch 2 to 4 (its own
    init_lr), then another set lr at 4, where the StepLR phase ends."""
    trace, manager = lr_trace(
        """
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 5}
  - !SetLearningRateModifier {start_epoch: 0, learning_rate: 0.01}
  - !LearningRateModifier
    lr_class: StepLR
    lr_kwargs: {step_size: 1, gamma: 0.5}
    init_lr: 0.02
    start_epoch: 2
    end_epoch: 4
    update_frequency: -1
  - !SetWeightDecayModifier {start_epoch: 2, weight_decay: 0.0}
  - !SetLearningRateModifier {start_epoch: 4, learning_rate: 0.003}
""",
        epochs=5,
    )
    for epoch, lr in trace.items():
        if epoch < 2:
            want = 0.01
        elif epoch < 4:
            want = 0.02 * 0.5 ** int(epoch - 2)
        else:
            want = 0.003
        assert lr == pytest.approx(want, abs=1e-15), epoch
    assert manager.controls_lr


@pytest.mark.real_data
def test_sparseml_test_recipe_lr_schedule(shared_dir):
    """The lr/wd part of the published test recipe: 0.0032, StepLR x0.985 per epoch from 2 to 4, reset at 4."""
    recipe = Recipe.load(shared_dir / "recipes/sparseml/yolov3-spp.test.md")
    # keep only the lr / wd modifiers (the others name YOLO layers)
    kept = [
        m
        for m in recipe.modifiers
        if m.tag in ("SetLearningRateModifier", "LearningRateModifier", "SetWeightDecayModifier", "EpochRangeModifier")
    ]
    from sparseyolo.recipe.recipe import dump_recipe

    trace, _ = lr_trace(dump_recipe({}, kept), epochs=5)
    for epoch, lr in trace.items():
        if epoch < 2 or epoch >= 4:
            want = 0.0032
        else:
            want = 0.0032 * 0.985 ** int(epoch - 2)
        assert lr == pytest.approx(want, abs=1e-15), epoch


PRUNE = """
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 4}
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.7
    start_epoch: 0
    end_epoch: 2
    update_frequency: 0.5
    inter_func: cubic
  - !LearningRateModifier
    lr_class: StepLR
    lr_kwargs: {step_size: 1, gamma: 0.5}
    init_lr: 0.05
    start_epoch: 0
    end_epoch: 4
    update_frequency: -1
"""


def batches(n, seed=123):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 4, 6, 6, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(n)]


def train_steps(model, opt, manager, data):
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        manager.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05),
    ],
    ids=["sgd-nesterov", "adamw"],
)
def test_momentum_and_weight_decay_cannot_revive_pruned_weights(make_opt):
    model = small_cnn()
    opt = make_opt(model.parameters())
    manager = Recipe.load(PRUNE).manager()
    manager.attach(model, opt, steps_per_epoch=SPE)
    data = batches(manager.max_epochs * SPE)
    pruned_sets = []
    for i, (x, y) in enumerate(data):
        nn.functional.cross_entropy(model(x), y).backward()
        # gradients at pruned positions are already zero before the optimizer step
        for name, mask in manager.pruning_modifiers[0].masker.masks.items():
            grad = dict(model.named_parameters())[name].grad
            assert float(grad[~mask].abs().sum()) == 0.0
        opt.step()
        opt.zero_grad()
        manager.step()
        zeros = {n: (p == 0) for n, p in model.named_parameters() if n.endswith("weight")}
        if pruned_sets:
            for n, z in zeros.items():
                assert bool((z | ~pruned_sets[-1][n]).all()), f"{n} revived at step {i}"
        pruned_sets.append(zeros)
    assert manager.pruning_done and manager.phase == "pruned"
    for row in manager.sparsity_report():
        assert row["sparsity"] == pytest.approx(round(0.7 * row["numel"]) / row["numel"])
    manager.finalize()
    assert manager.phase == "done"


def test_resume_reproduces_an_uninterrupted_run():
    data = batches(4 * SPE)

    def fresh():
        model = small_cnn(seed=7)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        return model, opt, Recipe.load(PRUNE).manager()

    model_a, opt_a, man_a = fresh()
    man_a.attach(model_a, opt_a, steps_per_epoch=SPE)
    train_steps(model_a, opt_a, man_a, data)

    model_b, opt_b, man_b = fresh()
    man_b.attach(model_b, opt_b, steps_per_epoch=SPE)
    half = 5  # stop in the middle of an epoch, between two mask updates
    train_steps(model_b, opt_b, man_b, data[:half])
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict(), "recipe": man_b.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    model_c, opt_c, man_c = fresh()
    model_c.load_state_dict(ckpt["model"])
    opt_c.load_state_dict(ckpt["opt"])
    man_c.attach(model_c, opt_c, steps_per_epoch=SPE)
    man_c.load_state_dict(ckpt["recipe"])
    assert man_c.epoch == pytest.approx(half / SPE)
    train_steps(model_c, opt_c, man_c, data[half:])

    masks_a = man_a.pruning_modifiers[0].masker.masks
    masks_c = man_c.pruning_modifiers[0].masker.masks
    assert masks_a.keys() == masks_c.keys()
    for name in masks_a:
        assert torch.equal(masks_a[name], masks_c[name]), name
    for (n, pa), (n_c, pc) in zip(model_a.named_parameters(), model_c.named_parameters(), strict=True):
        assert n == n_c and torch.allclose(pa, pc, atol=1e-6), n
    assert opt_a.param_groups[0]["lr"] == opt_c.param_groups[0]["lr"] == 0.05 * 0.5**3


def test_resume_without_optimizer_state_restores_lr():
    model, opt = small_cnn(), None
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    man = Recipe.load(PRUNE).manager()
    man.attach(model, opt, steps_per_epoch=SPE)
    for _ in range(2 * SPE + 1):
        man.step()
    state = man.state_dict()
    opt2 = torch.optim.SGD(model.parameters(), lr=0.5)
    man2 = Recipe.load(PRUNE).manager()
    man2.attach(model, opt2, steps_per_epoch=SPE, state_dict=state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**2)
    with pytest.raises(ConfigError, match="different recipe"):
        Recipe.load("modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}\n").manager().attach(
            model, opt2, steps_per_epoch=SPE, state_dict=state
        )


def test_apply_masks_to_an_ema_copy_and_leave_enabled_false():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    manager = Recipe.load("""
modifiers:
  - !GMPruningModifier {params: ["re:^2\\\\."], init_sparsity: 0.5, final_sparsity: 0.5, start_epoch: 0, end_epoch: 1,
                        update_frequency: 1, leave_enabled: false}
""").manager()
    manager.attach(model, opt, steps_per_epoch=SPE)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        ema[2].weight.fill_(1.0)
    manager.apply_masks(ema)
    assert float((ema[2].weight == 0).float().mean()) == pytest.approx(0.5)
    train_steps(model, opt, manager, batches(2 * SPE))
    assert manager.pruning_done and manager.phase == "training"
    assert float((model[2].weight == 0).float().mean()) < 0.5  # weights regrow after the end


def test_constant_pruning_holds_existing_zeros():
    model = small_cnn()
    with torch.no_grad():
        model[2].weight[:, :4] = 0
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    manager = Recipe.load(
        "modifiers:\n  - !ConstantPruningModifier {params: __ALL_PRUNABLE__, start_epoch: 0}\n"
    ).manager()
    manager.attach(model, opt, steps_per_epoch=SPE)
    train_steps(model, opt, manager, batches(SPE))
    assert bool((model[2].weight[:, :4] == 0).all())
    assert float((model[2].weight[:, 4:] == 0).float().mean()) == 0.0


def test_from_param_init_sparsity():
    model = small_cnn()
    with torch.no_grad():
        model[2].weight[:, :2] = 0  # 25% zeros
    manager = Recipe.load("""
modifiers:
  - !GMPruningModifier {params: ["2.weight"], init_sparsity: __FROM_PARAM__, final_sparsity: 0.75, start_epoch: 0,
                        end_epoch: 1, update_frequency: 0.5}
""").manager()
    manager.attach(model, torch.optim.SGD(model.parameters(), lr=0.0), steps_per_epoch=2)
    assert float((model[2].weight == 0).float().mean()) == pytest.approx(0.25)
    manager.step()
    assert float((model[2].weight == 0).float().mean()) == pytest.approx(0.6875)  # cubic: 0.25 + 0.5 * (1 - 0.5**3)
    manager.step()
    assert float((model[2].weight == 0).float().mean()) == pytest.approx(0.75)


QAT = """
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}
  - !QuantizationModifier
    start_epoch: 1
    submodules: ['0', '1', '3']
    freeze_bn_stats_epoch: 1.5
    disable_quantization_observer_epoch: 1.75
"""


def test_quantization_modifier_validates_submodules():
    model = small_cnn(bn=True)
    manager = Recipe.load(QAT.replace("'3'", "'model.3'")).manager()
    with pytest.raises(ConfigError, match=r"<recipe>:6: .*submodules entry 'model.3' matches no module"):
        manager.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=SPE)
    with pytest.raises(ConfigError, match="weight_bits must be an integer"):
        Recipe.load("modifiers:\n  - !QuantizationModifier {start_epoch: 0, weight_bits: 16}\n")


def test_quantization_modifier_starts_qat():
    model = small_cnn(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    manager = Recipe.load(QAT).manager()
    manager.attach(model, opt, steps_per_epoch=SPE)
    for _ in range(SPE - 1):
        manager.step()
    assert not manager.qat_active
    params_before = list(model.parameters())
    manager.step()
    import sparseyolo.quantization as q

    assert manager.qat_active and manager.phase == "qat" and q.is_qat_model(model)
    state = manager.state_dict()
    assert state["qat"]["submodules"] == ["0", "1", "3"] and state["qat"]["config"]["weight_bits"] == 8
    assert all(any(p is q_ for q_ in model.parameters()) for p in params_before)
    for _ in range(SPE):
        model(torch.randn(2, 4, 6, 6)).sum().backward()
        opt.step()
        opt.zero_grad()
        manager.step()
    assert manager.state_dict()["modifiers"][1]["observers_disabled"]


def test_readme_example_runs():
    # --- the README snippet (kept in sync with the lead's README) ---
    from sparseyolo.recipe import Recipe

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    recipe = Recipe.load("""
    modifiers:
      - !EpochRangeModifier {start_epoch: 0, end_epoch: 3}
      - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.05, final_sparsity: 0.8,
                            start_epoch: 0, end_epoch: 2, update_frequency: 0.5}
    """)
    manager = recipe.manager()
    manager.attach(model, optimizer, steps_per_epoch=10)
    for _epoch in range(manager.max_epochs):
        for _ in range(10):
            x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            manager.step()
    manager.finalize()
    report = manager.sparsity_report()
    # --- end of snippet ---
    assert [round(r["sparsity"], 2) for r in report] == [0.8, 0.8, 0.8]


def test_qat_resume_rebuilds_structure_and_continues():
    from sparseyolo.recipe import restore_qat_structure

    text = QAT.replace(
        "modifiers:\n",
        "modifiers:\n  - !GMPruningModifier {params: ['3.weight'], init_sparsity: 0.1, "
        "final_sparsity: 0.5, start_epoch: 0, end_epoch: 1, update_frequency: 0.5}\n",
        1,
    )
    data = batches(2 * SPE)

    def fresh():
        model = small_cnn(seed=3, bn=True)
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), Recipe.load(text).manager()

    model_a, opt_a, man_a = fresh()
    man_a.attach(model_a, opt_a, steps_per_epoch=SPE)
    train_steps(model_a, opt_a, man_a, data)

    model_b, opt_b, man_b = fresh()
    man_b.attach(model_b, opt_b, steps_per_epoch=SPE)
    train_steps(model_b, opt_b, man_b, data[: SPE + 2])
    assert man_b.qat_active
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict(), "recipe": man_b.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    model_c, opt_c, man_c = fresh()
    assert restore_qat_structure(model_c, ckpt["recipe"])
    model_c.load_state_dict(ckpt["model"])
    opt_c.load_state_dict(ckpt["opt"])
    man_c.attach(model_c, opt_c, steps_per_epoch=SPE, state_dict=ckpt["recipe"])
    assert man_c.qat_active and man_c.phase == "qat"
    train_steps(model_c, opt_c, man_c, data[SPE + 2 :])
    assert model_a.state_dict().keys() == model_c.state_dict().keys()
    for (n, pa), (_, pc) in zip(model_a.state_dict().items(), model_c.state_dict().items(), strict=True):
        assert torch.allclose(pa.float(), pc.float(), atol=1e-5), n
    assert not restore_qat_structure(small_cnn(), {"modifiers": []})
