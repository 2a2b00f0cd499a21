"""ModelEMA, the optimizer parameter groups, warm-up and LR schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparseyolo.engine.ema import ModelEMA
from sparseyolo.engine.hyp import load_hyp
from sparseyolo.engine.optim import (
    accumulate_steps,
    apply_lr,
    build_optimizer,
    lr_lambda,
    scaled_weight_decay,
    warmup_iterations,
)


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_ema_ramp_average_and_buffers():
    torch.manual_seed(0)
    model = _net()
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    assert all(not p.requires_grad for p in ema.ema.parameters())
    before = ema.ema[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    model[1].num_batches_tracked += 5
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1.0))
    assert ema.updates == 1 and ema.decay() == pytest.approx(d)
    assert torch.allclose(ema.ema[0].weight, d * before + (1 - d) * model[0].weight)
    assert torch.equal(ema.ema[1].running_mean, model[1].running_mean)  # buffers are copied
    assert int(ema.ema[1].num_batches_tracked) == 5
    for _ in range(50):
        ema.update(model)
    assert torch.allclose(ema.ema[0].weight, model[0].weight, atol=1e-2)  # converges to a fixed model
    state = ema.state_dict()
    other = ModelEMA(_net())
    other.load_state_dict(state)
    assert other.updates == 51 and torch.equal(other.ema[0].weight, ema.ema[0].weight)


def test_param_groups_and_decay():
    model = _net()
    opt = build_optimizer(model, "SGD", lr=0.01, momentum=0.9, weight_decay=1e-3)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["norm", "weight", "bias"]
    ids = {g["name"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert ids["norm"] == {id(model[1].weight)}
    assert ids["weight"] == {id(model[0].weight), id(model[2].weight)}
    assert ids["bias"] == {id(model[1].bias), id(model[2].bias)}
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-3, 0.0]
    assert opt.param_groups[0]["nesterov"]
    adam = build_optimizer(model, "AdamW", lr=0.001, momentum=0.9, weight_decay=1e-3)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)
    assert accumulate_steps(16) == 4 and accumulate_steps(128) == 1
    assert scaled_weight_decay(5e-4, 16, 4) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 8, 4) == pytest.approx(2.5e-4)
    # --nbs 16: a step per batch of 16, with the weight decay of the tuned nominal batch
    assert accumulate_steps(16, nominal=16) == 1 and accumulate_steps(4, nominal=16) == 4
    assert scaled_weight_decay(5e-4, 16, 1, nominal=16) == pytest.approx(5e-4)


def test_warmup_and_schedule():
    hyp = load_hyp("scratch")
    opt = build_optimizer(_net(), "SGD", hyp["lr0"], hyp["momentum"], 5e-4)
    lf = lr_lambda(10, hyp["lrf"])
    nw = warmup_iterations(hyp["warmup_epochs"], batches_per_epoch=10)
    assert nw == 100  # 3 epochs x 10 batches < 100 -> at least 100 iterations
    assert warmup_iterations(0.0, 10) == 0
    apply_lr(opt, hyp, 0, nw, 0, lf)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["bias"] == pytest.approx(hyp["warmup_bias_lr"]) and lrs["weight"] == 0.0
    assert opt.param_groups[0]["momentum"] == pytest.approx(hyp["warmup_momentum"])
    apply_lr(opt, hyp, 50, nw, 5, lf)
    target = hyp["lr0"] * lf(5)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["weight"] == pytest.approx(target / 2)
    assert lrs["bias"] == pytest.approx((hyp["warmup_bias_lr"] + target) / 2)
    apply_lr(opt, hyp, 200, nw, 9, lf)
    assert all(g["lr"] == pytest.approx(hyp["lr0"] * lf(9)) for g in opt.param_groups)
    assert opt.param_groups[1]["momentum"] == hyp["momentum"]
    # recipe in control: lr untouched, momentum still warmed
    for g in opt.param_groups:
        g["lr"] = 0.123
    apply_lr(opt, hyp, 10, nw, 0, lf, set_lr=False)
    assert all(g["lr"] == 0.123 for g in opt.param_groups)
    assert opt.param_groups[0]["momentum"] < hyp["momentum"]
    # linear and cosine both go from 1 to lrf
    cos = lr_lambda(10, 0.1, cos=True)
    assert lf(0) == cos(0) == 1.0 and lf(10) == pytest.approx(0.1) and cos(10) == pytest.approx(0.1)
    assert cos(5) == pytest.approx(0.55)
