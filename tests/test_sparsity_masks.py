"""Mask creators and pruning schedules on small non-YOLO CNNs."""

import math

import pytest
import torch
from torch import nn

from sparseyolo.recipe import Recipe
from sparseyolo.sparsity import magnitude_masks, parse_mask_type, resolve_params, schedule_progress
from sparseyolo.utils.errors import ConfigError


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 8),
    )


def expected_y(x, inter_func):
    # written from the definitions (SparseML's sparseml.utils.interpolate)
    return {"linear": x, "cubic": 1 - (1 - x) ** 3, "inverse_cubic": 1 - (1 - x) ** (1 / 3)}[inter_func]


@pytest.mark.parametrize("inter_func", ["linear", "cubic", "inverse_cubic"])
def test_schedule_matches_formula_and_realised_zeros(inter_func):
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    init, final, start, end, spe = 0.05, 0.9, 1.0, 3.0, 4
    recipe = Recipe.load(f"""
modifiers:
  - !GMPruningModifier
    params: ["re:.*weight$"]
    init_sparsity: {init}
    final_sparsity: {final}
    start_epoch: {start}
    end_epoch: {end}
    update_frequency: 0.25
    inter_func: {inter_func}
""")
    manager = recipe.manager()
    manager.attach(model, opt, steps_per_epoch=spe)
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    checked = 0
    for step in range(1, 4 * spe + 1):
        model(torch.randn(2, 4, 6, 6)).sum().backward()
        opt.step()
        opt.zero_grad()
        manager.step()
        epoch = step / spe
        x = min(max((epoch - start) / (end - start), 0.0), 1.0)
        target = 0.0 if epoch < start else init + expected_y(x, inter_func) * (final - init)
        assert manager.epoch == pytest.approx(epoch)
        for name, w in weights.items():
            zeros = int((w == 0).sum())
            assert zeros == round(target * w.numel()), (name, epoch, zeros, target)
        checked += 1
        if epoch >= end:
            assert manager.pruning_done and not manager.pruning_active
    assert checked == 16
    for row in manager.sparsity_report():
        if row["modifier"]:
            assert row["sparsity"] == pytest.approx(round(final * row["numel"]) / row["numel"])


def test_schedule_progress_shape():
    assert schedule_progress(0.5, 0, 1, "inverse_cubic") == pytest.approx(1 - 0.5 ** (1 / 3))
    assert schedule_progress(0.5, 0, 1, "cubic") == pytest.approx(0.875)
    assert schedule_progress(-1, 0, 1) == 0.0 and schedule_progress(9, 0, 1) == 1.0


def _groups_of_four(mask):
    # (O, I, kh, kw) -> groups of 4 consecutive input channels at one output channel / kernel position
    o, i, kh, kw = mask.shape
    return mask.permute(0, 2, 3, 1).reshape(o, kh, kw, i // 4, 4).reshape(-1, 4)


def test_block_1x4_masks_are_whole_blocks():
    torch.manual_seed(1)
    w = torch.randn(16, 8, 3, 3)
    mask_type = parse_mask_type([1, 4])
    (mask,) = magnitude_masks([w], [torch.ones_like(w, dtype=torch.bool)], 0.6, mask_type)
    groups = _groups_of_four(mask)
    assert bool(((groups.all(dim=1)) | (~groups.any(dim=1))).all())
    n_blocks = w.numel() // 4
    assert int((~groups.any(dim=1)).sum()) == round(0.6 * n_blocks)
    # the pruned blocks are the ones with the lowest mean |w|
    scores = _groups_of_four(w.abs()).mean(dim=1)
    pruned = ~groups.any(dim=1)
    assert scores[pruned].max() <= scores[~pruned].min()


def test_nm_2_4_masks():
    torch.manual_seed(2)
    w = torch.randn(8, 16, 3, 3)
    mask_type = parse_mask_type("2:4")
    keep = torch.ones_like(w, dtype=torch.bool)
    (half,) = magnitude_masks([w], [keep], 0.25, mask_type)
    assert int((~half).sum()) == round(0.25 * w.numel())
    assert int((~_groups_of_four(half)).sum(dim=1).max()) <= 2
    (full,) = magnitude_masks([w], [half], 0.5, mask_type)
    groups = _groups_of_four(full)
    assert bool((groups.sum(dim=1) == 2).all())  # exactly 2 of every 4 kept
    assert bool((half | ~full).all())  # monotone: pruned at 25% stay pruned
    # inside each group the two smallest |w| are the pruned ones
    mags = _groups_of_four(w.abs())
    kept_min = mags.masked_fill(~groups, math.inf).min(dim=1).values
    pruned_max = mags.masked_fill(groups, -math.inf).max(dim=1).values
    assert bool((pruned_max <= kept_min).all())


def test_block_and_nm_pruning_through_the_manager():
    for mask_type, check in (("[1, 4]", "blocks"), ("2:4", "nm")):
        model = small_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        recipe = Recipe.load(f"""
modifiers:
  - !GMPruningModifier
    params: ["2.weight"]
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 1
    update_frequency: 0.5
    mask_type: {mask_type}
""")
        manager = recipe.manager()
        manager.attach(model, opt, steps_per_epoch=2)
        for _ in range(3):
            model(torch.randn(2, 4, 6, 6)).sum().backward()
            opt.step()
            opt.zero_grad()
            manager.step()
        groups = _groups_of_four(model[2].weight != 0)
        if check == "blocks":
            assert bool((groups.all(dim=1) | ~groups.any(dim=1)).all())
            assert int((~groups.any(dim=1)).sum()) == round(0.5 * groups.shape[0])
        else:
            assert bool((groups.sum(dim=1) == 2).all())


def test_global_magnitude_uses_one_threshold():
    model = small_cnn()
    with torch.no_grad():
        model[0].weight.mul_(0.01)  # a small layer: global pruning takes most of it
    recipe = Recipe.load("""
modifiers:
  - !GlobalMagnitudePruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.5
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 1
    update_frequency: 1
""")
    ws = [model[0].weight, model[2].weight, model[6].weight]
    ws_before = [w.detach().clone() for w in ws]
    manager = recipe.manager()
    manager.attach(model, torch.optim.SGD(model.parameters(), lr=0.0), steps_per_epoch=1)
    total = sum(w.numel() for w in ws)
    assert sum(int((w == 0).sum()) for w in ws) == round(0.5 * total)
    flat = torch.cat([w.detach().flatten() for w in ws])
    orig = torch.cat([w.detach().flatten() for w in ws_before])
    assert float(orig[flat == 0].abs().max()) <= float(orig[flat != 0].abs().min())
    assert float((model[0].weight == 0).float().mean()) > 0.9


def test_ties_are_broken_deterministically():
    w = torch.ones(4, 8)
    (mask,) = magnitude_masks([w], [torch.ones_like(w, dtype=torch.bool)], 0.25, parse_mask_type("unstructured"))
    assert mask.flatten().tolist() == [False] * 8 + [True] * 24


def test_param_patterns_and_close_names():
    model = small_cnn()
    assert [n for n, _ in resolve_params(model, ["re:^[02]\\.weight$"])] == ["0.weight", "2.weight"]
    assert [n for n, _ in resolve_params(model, "__ALL_PRUNABLE__")] == ["0.weight", "2.weight", "6.weight"]
    with pytest.raises(ConfigError, match=r"'2.wieght' matches no parameter.*closest names: 2.weight"):
        resolve_params(model, ["2.wieght"])
    with pytest.raises(ConfigError, match="'re:conv' matches no parameter"):
        resolve_params(model, ["re:conv"])


def test_unmatched_param_fails_at_attach_with_line():
    recipe = Recipe.load("""
modifiers:
  - !GMPruningModifier
    params: [model.9.conv.weight]
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 1
    update_frequency: 0.5
""")
    model = small_cnn()
    with pytest.raises(ConfigError, match=r"<recipe>:4: .*'model.9.conv.weight' matches no parameter"):
        recipe.manager().attach(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=2)


def test_block_shape_must_tile_the_weight():
    recipe = Recipe.load("""
modifiers:
  - !GMPruningModifier {params: ["0.weight"], init_sparsity: 0.05, final_sparsity: 0.5, start_epoch: 0, end_epoch: 1, update_frequency: 0.5, mask_type: [1, 3]}
""")
    model = small_cnn()
    with pytest.raises(ConfigError, match="does not tile 0.weight"):
        recipe.manager().attach(model, None, steps_per_epoch=2)


def test_legacy_global_sparsity_key_matches_global_modifier():
    results = []
    for text in (
        "!GMPruningModifier {params: __ALL_PRUNABLE__, global_sparsity: true, ",
        "!GlobalMagnitudePruningModifier {params: __ALL_PRUNABLE__, ",
    ):
        model = small_cnn(seed=4)
        recipe = Recipe.load(
            f"modifiers:\n  - {text}init_sparsity: 0.6, final_sparsity: 0.6, start_epoch: 0, "
            "end_epoch: 1, update_frequency: 1}\n"
        )
        recipe.manager().attach(model, None, steps_per_epoch=1)
        results.append([(p == 0).clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=False))
    per_layer = [
        float(z.float().mean()) for z, p in zip(results[0], small_cnn().parameters(), strict=False) if p.dim() > 1
    ]
    assert max(per_layer) - min(per_layer) > 0.01  # one threshold, so layers differ
    with pytest.raises(ConfigError, match="score_type 'movement'"):
        Recipe.load(
            "modifiers:\n  - !GMPruningModifier {params: [w], score_type: movement, init_sparsity: 0.1, "
            "final_sparsity: 0.5, start_epoch: 0, end_epoch: 1, update_frequency: 1}\n"
        )
