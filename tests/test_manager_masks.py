"""Pruned weights stay exactly zero, masks are re-applied, and the EMA copy follows the masks."""

from __future__ import annotations

import pytest

PRUNE_RECIPE = """
modifiers:
  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.05, final_sparsity: 0.7, start_epoch: 0,
                        end_epoch: 2, update_frequency: 0.5}
"""


def _cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: __import__("torch").optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda ps: __import__("torch").optim.Adam(ps, lr=0.01, weight_decay=1e-3),
        lambda ps: __import__("torch").optim.AdamW(ps, lr=0.01, weight_decay=0.05, amsgrad=True),
        lambda ps: __import__("torch").optim.RMSprop(ps, lr=0.01, momentum=0.9, weight_decay=1e-3),
    ],
    ids=["sgd", "adam", "adamw-amsgrad", "rmsprop"],
)
def test_pruned_weights_stay_exactly_zero_between_epoch_boundaries(make_opt):
    """Without per-step re-zeroing, gradient hooks + zeroed optimizer state keep every pruned
    weight at 0 after every single step (checked before the manager could touch the weights)."""
    import torch

    from sparseyolo.recipe import Recipe

    model, spe = _cnn(), 5
    opt = make_opt(model.parameters())
    manager = Recipe.load(PRUNE_RECIPE).manager()
    manager.attach(model, opt, steps_per_epoch=spe)
    masker = manager.pruning_modifiers[0].masker
    g = torch.Generator().manual_seed(1)
    for _ in range(3 * spe):
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        for name, mask in masker.masks.items():  # after the optimizer step, before manager.step()
            assert float(masker.params[name].detach()[~mask].abs().sum()) == 0.0, name
        manager.step()
    assert manager.pruning_done


def test_masks_are_reapplied_every_step_or_at_epoch_boundaries_when_opted_out():
    import torch

    from sparseyolo.recipe import Recipe

    model, spe = _cnn(), 4
    manager = Recipe.load(PRUNE_RECIPE).manager()
    manager.attach(model, torch.optim.SGD(model.parameters(), lr=0.0), steps_per_epoch=spe)
    masker = manager.pruning_modifiers[0].masker
    name = next(iter(masker.masks))
    w = masker.params[name]

    def revive():  # code outside the optimizer writes into pruned positions
        with torch.no_grad():
            w[~masker.masks[name]] = 1.0

    def revived() -> float:
        return float(w.detach()[~masker.masks[name]].abs().sum())

    assert manager.reapply_masks_every_step  # the default: re-zeroed after every optimizer step
    revive()
    manager.step()  # step 1: neither a mask update nor an epoch boundary
    assert revived() == 0.0
    manager.reapply_masks_every_step = False  # opt-out: only mask updates and epoch boundaries
    manager.step()  # step 2: a mask update
    revive()
    manager.step()  # step 3: ordinary step, left alone
    assert revived() > 0
    manager.step()  # step 4 = epoch boundary: safety net
    assert revived() == 0.0


def test_apply_to_zeroes_the_ema_copy_at_the_pruned_positions():
    import copy

    import torch

    from sparseyolo.recipe import Recipe

    model = _cnn()
    manager = Recipe.load(PRUNE_RECIPE).manager()
    manager.attach(model, torch.optim.SGD(model.parameters(), lr=0.0), steps_per_epoch=2)
    manager.step()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.fill_(1.0)
    manager.apply_masks(ema)
    masks = manager.pruning_modifiers[0].masker.masks
    named = dict(ema.named_parameters())
    for name, mask in masks.items():
        assert torch.equal(named[name].detach() == 0, ~mask)
    assert bool((named["6.bias"] == 1).all())  # not a pruned parameter


def test_masks_version_changes_exactly_when_masks_change():
    import torch

    from sparseyolo.recipe import Recipe

    model, spe = _cnn(), 4
    manager = Recipe.load(PRUNE_RECIPE).manager()
    manager.attach(model, torch.optim.SGD(model.parameters(), lr=0.0), steps_per_epoch=spe)
    seen = [manager.masks_version]
    for step in range(1, 3 * spe + 1):
        manager.step()
        changed = manager.masks_version != seen[-1]
        seen.append(manager.masks_version)
        # masks update every 0.5 epoch (2 steps) until end_epoch 2 (step 8), then never again
        assert changed == (step % 2 == 0 and step <= 2 * spe), step
    manager.pruning_modifiers[0].masker.disable()
    assert manager.masks_version != seen[-1]
