"""QAT on small generic CNNs built from conv/bn/act blocks (the attribute names of our Conv)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import randomize_bn
from torch import nn

from sparseyolo.quantization import (
    ActivationQuantizer,
    QATConfig,
    QATConv2d,
    QATConvBnAct,
    QATLinear,
    WeightQuantizer,
    disable_observers,
    enable_observers,
    freeze_bn_stats,
    is_qat_model,
    prepare_qat,
    qat_report,
)
from sparseyolo.utils.errors import ConfigError


class Block(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, act: nn.Module | None = None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, momentum=0.03)
        self.act = act if act is not None else nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1 = Block(c, c // 2, 1)
        self.cv2 = Block(c // 2, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class Net(nn.Module):
    """conv -> pool -> conv(s2) -> residual x2 -> upsample -> concat(skip) -> conv ; float 1x1 head."""

    def __init__(self):
        super().__init__()
        self.body = nn.ModuleDict(
            {
                "c0": Block(3, 8),
                "pool": nn.MaxPool2d(2, 2),
                "c1": Block(8, 16, 3, 2),
                "r": nn.Sequential(Residual(16), Residual(16)),
                "up": nn.Upsample(scale_factor=2, mode="nearest"),
                "c2": Block(24, 8, 1),
            }
        )
        self.head = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        b = self.body
        p = b["pool"](b["c0"](x))
        y = b["up"](b["r"](b["c1"](p)))
        return self.head(b["c2"](torch.cat([y, p], 1)))


SUBMODULES = ["body.c0", "body.pool", "body.c1", "body.r", "body.up", "body.c2"]


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    model = Net()
    randomize_bn(model)
    return model


def calibrate(model: nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    """Observe ranges without changing weights or BN statistics."""
    freeze_bn_stats(model)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    model.eval()


def test_prepare_keeps_parameters_names_and_optimizer(net):
    params = dict(net.named_parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    prepare_qat(net, SUBMODULES, QATConfig())
    assert is_qat_model(net)
    after = dict(net.named_parameters())
    assert after.keys() == params.keys()
    assert all(after[k] is params[k] for k in params)
    assert isinstance(net.body["c0"], QATConvBnAct) and type(net.head) is nn.Conv2d  # head stays float
    x = torch.rand(2, 3, 32, 32)
    net.train()
    before = net.body["c0"].conv.weight.detach().clone()
    net(x).square().mean().backward()
    assert net.body["c0"].conv.weight.grad is not None and net.body["c0"].bn.weight.grad is not None
    opt.step()  # the optimizer built before QAT updates the same tensors
    assert not torch.equal(before, net.body["c0"].conv.weight)


def test_pruned_zeros_stay_exactly_zero(net):
    conv = net.body["c1"].conv
    with torch.no_grad():
        conv.weight[conv.weight.abs() < conv.weight.abs().median()] = 0.0
    mask = conv.weight == 0
    for per_channel in (False, True):
        model = copy.deepcopy(net)
        prepare_qat(model, SUBMODULES, QATConfig(per_channel=per_channel))
        unit = model.body["c1"]
        w = unit.weight_fake_quant(unit.conv.weight * unit.folded_scale().reshape(-1, 1, 1, 1))
        assert torch.all(w[mask] == 0)
        assert (w[~mask] != 0).float().mean() > 0.9  # the rest is not wiped out
        # the fake-quantized weights sit on the integer grid
        scale = unit.weight_fake_quant.scale.reshape(-1, 1, 1, 1)
        q = w / scale
        assert torch.allclose(q, q.round(), atol=1e-3) and q.abs().max() <= 127 + 1e-3


def test_activation_outputs_on_uint8_grid(net):
    prepare_qat(net, SUBMODULES, QATConfig())
    x = torch.rand(2, 3, 32, 32)
    calibrate(net, x)
    seen = []
    q = net.body["c2"].out_quant
    q.register_forward_hook(lambda m, i, o: seen.append(o))
    net(x)
    levels = seen[0] / q.scale + q.zero_point
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.min() >= -1e-3 and levels.max() <= 255 + 1e-3


def test_moving_average_observer():
    q = ActivationQuantizer(0, 255, averaging_constant=0.01)
    assert not q.initialized
    q.train()
    q(torch.tensor([-1.0, 3.0]))
    assert float(q.min_val) == -1.0 and float(q.max_val) == 3.0
    q(torch.tensor([-2.0, 5.0]))
    assert float(q.min_val) == pytest.approx(-1.01) and float(q.max_val) == pytest.approx(3.02)
    assert float(q.scale) == pytest.approx((3.02 + 1.01) / 255)
    # 0.0 is exactly representable: the zero point is an integer
    assert int(q.zero_point) == round(1.01 / float(q.scale))
    q.eval()
    q(torch.tensor([-100.0, 100.0]))  # eval mode does not move the range
    assert float(q.max_val) == pytest.approx(3.02)
    q.train()
    q.observer_enabled.fill_(0)
    q(torch.tensor([-100.0, 100.0]))
    assert float(q.max_val) == pytest.approx(3.02)


def test_weight_quantizer_per_channel_scales():
    w = torch.randn(4, 3, 3, 3) * torch.tensor([1.0, 2.0, 0.5, 4.0]).reshape(-1, 1, 1, 1)
    q = WeightQuantizer(-128, 127, per_channel=True, channels=4)
    out = q(w)
    expected = w.abs().amax(dim=(1, 2, 3)) / 127
    assert torch.allclose(q.scale, expected)
    assert (out - w).abs().max() <= expected.max() / 2 + 1e-6


def test_folding_math_matches_float_when_fake_quant_off(net):
    """With fake quantization off, the folded QAT block equals conv -> BN -> act in train and eval."""
    ref = copy.deepcopy(net)
    prepare_qat(net, SUBMODULES, QATConfig())
    for m in net.modules():
        if isinstance(m, (ActivationQuantizer, WeightQuantizer)):
            m.fake_quant_enabled.fill_(0)
    x = torch.rand(4, 3, 32, 32)
    ref.train(), net.train()
    assert torch.allclose(net(x), ref(x), atol=1e-5, rtol=1e-4)
    # both updated their BN running statistics identically
    assert torch.allclose(net.body["c1"].bn.running_mean, ref.body["c1"].bn.running_mean, atol=1e-6)
    ref.eval(), net.eval()
    assert torch.allclose(net(x), ref(x), atol=1e-5, rtol=1e-4)


def test_eval_close_to_float_after_calibration(net):
    x = torch.rand(4, 3, 32, 32)
    ref = net.eval()(x).detach()
    model = prepare_qat(copy.deepcopy(net), SUBMODULES, QATConfig())
    calibrate(model, x)
    out = model(x).detach()
    err = (out - ref).abs().max() / ref.abs().max()
    assert err < 0.05, err
    assert not torch.equal(out, ref)  # it is quantized


def test_freeze_bn_stats_and_disable_observers(net):
    prepare_qat(net, SUBMODULES, QATConfig())
    x = torch.rand(2, 3, 32, 32)
    net.train()
    mean0 = net.body["c0"].bn.running_mean.clone()
    net(x)
    assert not torch.equal(mean0, net.body["c0"].bn.running_mean)  # BN stats keep updating
    assert freeze_bn_stats(net) == 7
    mean1 = net.body["c0"].bn.running_mean.clone()
    net(x)
    assert torch.equal(mean1, net.body["c0"].bn.running_mean)
    assert disable_observers(net) > 0
    scale = net.body["c2"].out_quant.scale.clone()
    wscale = net.body["c2"].weight_fake_quant.scale.clone()
    with torch.no_grad():
        net.body["c2"].conv.weight.mul_(3)
    net(x * 5)
    assert torch.equal(scale, net.body["c2"].out_quant.scale)
    assert torch.equal(wscale, net.body["c2"].weight_fake_quant.scale)
    enable_observers(net)
    net(x * 5)
    assert not torch.equal(wscale, net.body["c2"].weight_fake_quant.scale)


def test_state_dict_round_trip_resumes(net):
    prepare_qat(net, SUBMODULES, QATConfig())
    x = torch.rand(2, 3, 32, 32)
    net.train()
    for _ in range(2):
        net(x)
    freeze_bn_stats(net)
    state = copy.deepcopy(net.state_dict())
    assert "body.c0.out_quant.scale" in state and "body.c0.bn_frozen" in state
    torch.manual_seed(0)
    fresh = Net()
    prepare_qat(fresh, SUBMODULES, QATConfig())
    fresh.load_state_dict(state)
    net.eval(), fresh.eval()
    assert torch.equal(net(x), fresh(x))
    assert int(fresh.body["c0"].bn_frozen) == 1
    rows = {r["name"]: r for r in qat_report(fresh)}
    assert len(rows) == 7 and rows["body.c0"]["weight_bits"] == 8 and rows["body.c0"]["bn_frozen"]
    assert rows["body.c0"]["out_scale"] == pytest.approx(float(net.body["c0"].out_quant.scale))


def test_quantizers_are_shared_not_stacked(net):
    prepare_qat(net, SUBMODULES, QATConfig())
    net.train()
    net(torch.rand(2, 3, 32, 32))
    # c0's output reaches c1 through a max-pool: c1 reuses c0's quantizer, its own stays unused
    assert not net.body["c1"].input_quant.initialized
    assert net.body["c0"].input_quant.initialized  # the image
    # the concat feeding c2 is quantized once by c2's own input quantizer
    assert net.body["c2"].input_quant.initialized
    # the residual add output is quantized at the block boundary
    assert net.body["r"][0].block_output_quant.initialized


def test_config_ranges_and_validation():
    assert QATConfig().weight_range() == (-128, 127) and QATConfig().activation_range() == (0, 255)
    cfg = QATConfig(reduce_range=True)
    assert cfg.weight_range() == (-64, 63) and cfg.activation_range() == (0, 127)
    trt = QATConfig(tensorrt=True)
    assert trt.per_channel and trt.activation_range() == (-128, 127)
    assert QATConfig(activation_bits=4).activation_range() == (0, 15)
    with pytest.raises(ConfigError, match="weight_bits"):
        QATConfig(weight_bits=16)
    with pytest.raises(ConfigError, match="bogus"):
        QATConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="exclude_module_types"):
        QATConfig(exclude_module_types=[3])


def test_tensorrt_mode_symmetric_activations(net):
    prepare_qat(net, SUBMODULES, QATConfig(tensorrt=True))
    calibrate(net, torch.rand(2, 3, 32, 32))
    q = net.body["c0"].out_quant
    assert q.quant_min == -128 and int(q.zero_point) == 0
    assert net.body["c0"].weight_fake_quant.scale.numel() == 8


def test_unknown_submodule_suggests_names(net):
    with pytest.raises(ConfigError, match="body.c1"):
        prepare_qat(net, ["body.c11"], QATConfig())


def test_exclude_types_and_activation_switches(net):
    model = prepare_qat(copy.deepcopy(net), SUBMODULES, QATConfig(exclude_module_types=["LeakyReLU"]))
    unit = model.body["c0"]
    assert unit.conv_out_quant is not None and unit.out_quant is None
    model.train()
    model(torch.rand(2, 3, 32, 32))  # runs; the untagged activation output is re-quantized downstream
    assert model.body["c1"].input_quant.initialized
    model = prepare_qat(copy.deepcopy(net), SUBMODULES, QATConfig(exclude_module_types=["Residual"]))
    assert not isinstance(model.body["r"][0].cv1, QATConvBnAct)
    model = prepare_qat(copy.deepcopy(net), SUBMODULES, QATConfig(quantize_conv_activations=False))
    unit = model.body["c0"]
    assert unit.input_quant is None and unit.out_quant is None and unit.weight_fake_quant is not None


def test_relu_block_has_single_output_quantizer():
    block = Block(3, 4, act=nn.ReLU())
    prepare_qat(block, None, QATConfig())
    assert block.conv_out_quant is None and block.out_quant is not None


def test_no_fuse_plain_convs_linear_and_custom_outputs():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = Block(3, 4)
            self.plain = nn.Conv2d(4, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.pool(self.plain(self.features(x))).flatten(1))

    torch.manual_seed(0)
    model = Mixed()
    conv_param = model.features.conv.weight
    prepare_qat(
        model,
        None,
        QATConfig(fuse="no_fuse", exclude_batchnorm=False, custom_quantizable_module_types=["AdaptiveAvgPool2d"]),
    )
    assert isinstance(model.features.conv, QATConv2d) and model.features.conv.weight is conv_param
    assert isinstance(model.features.bn.out_quant, ActivationQuantizer)  # BN output quantized
    assert isinstance(model.plain, QATConv2d) and isinstance(model.fc, QATLinear)
    assert isinstance(model.pool.out_quant, ActivationQuantizer)
    model.train()
    out = model(torch.rand(2, 3, 8, 8))
    out.sum().backward()
    assert model.fc.weight.grad is not None and out.shape == (2, 2)
    assert model.pool.out_quant.initialized


def test_fuse_is_a_known_mode_never_a_method_name(net):
    called = []
    net.my_fuse = lambda: called.append(True)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="fuse must be one of 'conv_bn_relus', 'no_fuse'"):
        prepare_qat(net, SUBMODULES, QATConfig(fuse="my_fuse"))
    assert called == []  # a name from a recipe or checkpoint never runs model code


def test_deepcopy_and_repeated_prepare_are_safe(net):
    prepare_qat(net, SUBMODULES, QATConfig())
    n_quant = sum(isinstance(m, ActivationQuantizer) for m in net.modules())
    prepare_qat(net, SUBMODULES, QATConfig())  # idempotent
    assert sum(isinstance(m, ActivationQuantizer) for m in net.modules()) == n_quant
    twin = copy.deepcopy(net)
    x = torch.rand(2, 3, 32, 32)
    net.eval(), twin.eval()
    assert torch.equal(net(x), twin(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda(net):
    model = prepare_qat(net.cuda(), SUBMODULES, QATConfig(per_channel=True))
    model.train()
    out = model(torch.rand(2, 3, 32, 32, device="cuda"))
    out.sum().backward()
    assert all(b.device.type == "cuda" for b in model.buffers())
