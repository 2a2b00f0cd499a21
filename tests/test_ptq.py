"""Post-training quantization: calibration observers, bias correction, ``export --int8`` end to end."""

from __future__ import annotations

import copy
import re
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from conftest import qat_checkpoint
from helpers import randomize_bn
from torch import nn

from sparseyolo.quantization import (
    ActivationQuantizer,
    CalibrationError,
    HistogramObserver,
    QATConfig,
    WeightQuantizer,
    calibrate,
    is_qat_model,
    prepare_qat,
)

# --------------------------------------------------------------------------- observers


def _feed(obs: HistogramObserver, x: torch.Tensor, parts: int = 4) -> HistogramObserver:
    for chunk in x.chunk(parts):
        obs.update(chunk)
    return obs


def test_percentile_range_matches_quantiles_with_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=g)
    x[123] = 25.0  # outliers, in the third batch only: the range grows mid-stream
    x[250_000] = -18.0
    obs = _feed(HistogramObserver(), x)
    assert obs.count == x.numel() and obs.counts.sum().item() == x.numel()
    assert (obs.min, obs.max) == (-18.0, 25.0)
    lo, hi = obs.percentile_range(99.99)
    ref_lo, ref_hi = np.percentile(x.numpy(), [0.01, 99.99])
    assert lo == pytest.approx(ref_lo, rel=0.02) and hi == pytest.approx(ref_hi, rel=0.02)
    assert hi < 5.0 < 25.0  # the outliers are clipped
    assert obs.range("minmax", 0, 255) == (-18.0, 25.0)
    assert obs.percentile_range(100.0) == (-18.0, 25.0)


def test_mse_clips_heavy_tails_and_keeps_the_max_of_uniform_data():
    torch.manual_seed(1)
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((400_000,))  # heavy (exponential) tails
    obs = _feed(HistogramObserver(), laplace)
    absmax = max(-obs.min, obs.max)  # about 12
    # the MSE-optimal clip of a Laplace(b=1) variable (Banner et al., ACIQ): 9.89 b at 8 bits, 5.03 b at 4 bits
    s_lo, s_hi = obs.mse_range(-128, 127, symmetric=True)
    assert s_lo == -s_hi and s_hi == pytest.approx(9.89, rel=0.1) and s_hi < 0.9 * absmax
    assert obs.mse_range(-8, 7, symmetric=True)[1] == pytest.approx(5.03, rel=0.1)
    lo, hi = obs.range("mse", 0, 255)  # asymmetric uint8: both ends clipped
    assert 0.9 * obs.min < lo < 0 < hi < 0.9 * obs.max
    g = torch.Generator().manual_seed(1)
    uniform = torch.rand(300_000, generator=g) * 6.0
    obs = _feed(HistogramObserver(), uniform)
    lo, hi = obs.range("mse", 0, 255)
    assert lo == 0.0 and hi == pytest.approx(obs.max, rel=0.01)
    sym = _feed(HistogramObserver(), torch.rand(300_000, generator=g) * 6.0 - 3.0)
    s_lo, s_hi = sym.mse_range(-128, 127, symmetric=True)
    assert s_hi == pytest.approx(max(-sym.min, sym.max), rel=0.01)


def test_observer_and_method_errors():
    with pytest.raises(CalibrationError, match="not one of"):
        HistogramObserver().range("kl", 0, 255)
    with pytest.raises(CalibrationError, match="percentile"):
        HistogramObserver().range("percentile", 0, 255, percentile=0.5)
    with pytest.raises(CalibrationError, match="no data"):
        HistogramObserver().range("percentile", 0, 255)
    obs = HistogramObserver()
    obs.update(torch.full((10,), 2.0))  # a constant tensor still gives a usable range
    assert obs.range("mse", 0, 255)[1] == pytest.approx(2.0, rel=0.01)


# --------------------------------------------------------------------------- bias correction


class Block(nn.Module):
    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.Identity()  # the conv output itself: the bias shift is not hidden by an activation

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


@pytest.mark.parametrize("kind", ["conv_bn", "conv"])
def test_bias_correction_removes_the_mean_output_shift(kind):
    torch.manual_seed(0)
    net = Block(8, 16) if kind == "conv_bn" else nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1, bias=False))
    randomize_bn(net)
    net.eval()
    calib = [torch.rand(8, 8, 12, 12) for _ in range(4)]  # non-negative inputs: E[x] != 0
    test = torch.rand(16, 8, 12, 12)
    cfg = QATConfig(weight_bits=4, quantize_conv_activations=False)  # coarse weights, float activations
    errors = {}
    for corrected in (False, True):
        q = prepare_qat(copy.deepcopy(net), None, cfg).eval()
        report = calibrate(q, calib, bias_correction=corrected)
        assert report.batches == 4 and report.images == 32
        with torch.no_grad():
            errors[corrected] = (q(test) - net(test)).mean(dim=(0, 2, 3)).abs().mean().item()
    assert errors[True] < 0.2 * errors[False]


@pytest.mark.parametrize(
    "kwargs",
    [{"kernel_size": 3, "padding": 1}, {"kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2, "groups": 2}],
)
def test_weight_error_shift_equals_the_convolution_sum(kwargs):
    from sparseyolo.quantization.calibration import quantized_weight, refresh_weight_scales, weight_error_shift

    torch.manual_seed(0)
    q = prepare_qat(nn.Sequential(nn.Conv2d(4, 6, **kwargs)), None, QATConfig(weight_bits=4, per_channel=True))[0]
    refresh_weight_scales(q)
    x = torch.rand(3, 4, 11, 9)
    total, n = weight_error_shift(q, x)
    y = q._conv_forward(x, quantized_weight(q.weight_fake_quant, q.weight) - q.weight, None)
    assert n == y.shape[0] * y.shape[2] * y.shape[3]
    assert torch.allclose(total, y.sum(dim=(0, 2, 3)).double(), atol=1e-4)


# --------------------------------------------------------------------------- a trained detector

NAMES = ["square", "circle", "triangle"]


def _overfit(root, iters: int = 150) -> nn.Module:
    """A quarter-width YOLOv3-tiny fitted to 16 shapes images at 64 px: about 10 s of CPU for mAP@0.5
    near 1 on those images (one thread: two are several times slower on a busy 2-core machine)."""
    from sparseyolo.data.dataset import create_dataloader
    from sparseyolo.engine.hyp import load_hyp
    from sparseyolo.engine.loss import build_loss
    from sparseyolo.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model("yolov3-tiny", nc=3, width_multiple=0.25, names=NAMES)
        loader, _ = create_dataloader(str(root / "images/train"), 64, 16, 32, workers=0, nc=3)
        imgs, targets = next(iter(loader))[:2]
        x = imgs.float() / 255.0
        loss_fn = build_loss(model, load_hyp("scratch"), 64)
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.02, total_steps=iters, pct_start=0.1)
        model.train()
        for _ in range(iters):
            loss, _ = loss_fn(model(x), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """``{"weights", "data", "model"}``: a fitted tiny detector and a data YAML whose val split is its
    training images (the test measures quantization error, not generalisation)."""
    from sparseyolo.data.synthetic import make_shapes_dataset
    from sparseyolo.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("ptq")
    make_shapes_dataset(root / "shapes", n_train=16, n_val=2, img_size=64)
    data = root / "fit.yaml"
    spec = {"path": str(root / "shapes"), "train": "images/train", "val": "images/train", "names": NAMES}
    data.write_text(yaml.safe_dump(spec))
    model = _overfit(root / "shapes")
    weights = save_checkpoint(root / "run" / "best.pt", model=model)
    return {"weights": weights, "data": data, "model": model}


def _table(text: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for label in ("FP32", "int8 QDQ", "int8 QLinear"):
        m = re.search(rf"^\| {label}\s*\|[^|]*\|\s*([\d.]+) \|\s*([\d.]+) \|", text, re.M)
        assert m, f"no {label} row in:\n{text[-2000:]}"
        rows[label] = (float(m.group(1)), float(m.group(2)))
    return rows


def test_export_int8_keeps_map_and_writes_agreeing_files(trained, cli):
    weights = trained["weights"]
    # the default 7-bit weights: exact on every CPU (8-bit ones saturate ONNX Runtime without VNNI, conftest.py)
    rc, out = cli(
        "export", "--weights", weights, "--img", "64", "--int8", "--data", trained["data"],
        "--calib-images", "16", "--workers", "0",
    )  # fmt: skip
    assert rc == 0, out[-3000:]
    assert "PTQ: calibrated" in out and "on 16 images" in out
    maps = _table(out)
    fp32, qdq, qlinear = maps["FP32"], maps["int8 QDQ"], maps["int8 QLinear"]
    assert fp32[0] >= 0.8, maps  # a model worth quantizing (0.998 / 0.715 here)
    assert qdq[0] >= fp32[0] - 0.03 and qdq[1] >= fp32[1] - 0.05, maps  # measured: -0.002 / -0.019
    assert qlinear == pytest.approx(qdq, abs=0.005), maps
    folder = weights.parent
    files = [folder / "best.onnx", folder / "best.int8.onnx", folder / "best.int8.qlinear.onnx"]
    formats = [{p.key: p.value for p in onnx.load(f).metadata_props}["format"] for f in files]
    assert formats[:2] == ['"fp32"', '"qdq"'], formats
    types = [n.op_type for n in onnx.load(files[2]).graph.node]
    # every conv but the first (a MaxPool follows it: float with --first-conv auto) and the 2 Detect-head convs
    assert types.count("QLinearConv") == 10 and types[0] == "Conv"
    image = cv2.imread(str(next((folder.parent / "shapes/images/train").glob("*.jpg"))))  # 64x64: no letterbox
    x = np.ascontiguousarray(image[None, :, :, ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    runs = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"images": x}) for f in files]
    for a, b, ref in zip(runs[1], runs[2], runs[0], strict=True):
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()  # QDQ and QLinear: the same integers
        assert np.abs(a - ref).mean() < 0.1 * np.abs(ref).mean()  # and close to FP32


def test_ptq_quantizes_the_first_conv_unless_a_maxpool_follows_it():
    from sparseyolo.exporters.ptq import ptq_submodules
    from sparseyolo.models.yolo import build_model

    tiny, v3 = build_model("yolov3-tiny", nc=3), build_model("yolov3", nc=3)  # model.1: MaxPool / a stride-2 conv
    assert ptq_submodules(tiny)[0] == "model.1" and ptq_submodules(tiny, "int8")[0] == "model.0"
    assert ptq_submodules(v3)[0] == "model.0" and ptq_submodules(v3, "float")[0] == "model.1"
    assert ptq_submodules(v3)[-1] == f"model.{len(v3.model) - 2}"  # the Detect head stays float
    with pytest.raises(CalibrationError, match="--first-conv must be one of auto, int8, float"):
        ptq_submodules(tiny, "fp16")


def test_export_first_conv_int8_quantizes_the_image_conv_too(trained, cli, tmp_path):
    weights = tmp_path / "best.pt"
    shutil.copy(trained["weights"], weights)
    rc, out = cli(
        "export", "--weights", weights, "--img", "64", "--int8", "--first-conv", "int8", "--data", trained["data"],
        "--calib-images", "4", "--workers", "0", "--no-eval",
    )  # fmt: skip
    assert rc == 0, out[-3000:]
    types = [n.op_type for n in onnx.load(tmp_path / "best.int8.qlinear.onnx").graph.node]
    assert types.count("QLinearConv") == 11 and "Conv" not in types[:3]


def test_quantize_post_training_api(trained):
    from sparseyolo.exporters.ptq import quantize_post_training

    model = trained["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = (torch.rand(12, 3, 64, 64) * 255).to(torch.uint8)
    q = quantize_post_training(model, images, method="mse", n_images=10, first_conv="int8")
    assert not is_qat_model(model) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert q.ptq_report.images == 10 and q.ptq_report.method == "mse"
    head = q.model[-1]
    assert not any(isinstance(m, (ActivationQuantizer, WeightQuantizer)) for m in head.modules())
    quantizers = [m for m in q.modules() if isinstance(m, (ActivationQuantizer, WeightQuantizer))]
    assert quantizers and not any(bool(m.observer_enabled) for m in quantizers)
    first = q.model[0].input_quant  # reads the image: exactly [0, 1], scale 1/255 (the uint8-input form)
    assert float(first.scale) == pytest.approx(1 / 255) and int(first.zero_point) == 0
    assert all(m.weight_fake_quant.per_channel for m in q.modules() if hasattr(m, "weight_fake_quant"))
    q8 = quantize_post_training(model, images, weight_bits=8, bias_correction=False, first_conv="int8")
    default = quantize_post_training(model, images)  # the first conv stays float, the second reads int8
    assert not any(isinstance(m, (ActivationQuantizer, WeightQuantizer)) for m in default.model[0].modules())
    assert hasattr(default.model[2], "weight_fake_quant") and is_qat_model(default)
    for net, largest in ((q, 63), (q8, 127)):  # default 7: integers within -63..63 in the 8-bit grid
        conv = net.model[0]
        w = conv.conv.weight * conv.folded_scale().reshape(-1, 1, 1, 1)
        ints = torch.round(w / conv.weight_fake_quant.scale.reshape(-1, 1, 1, 1)).abs().amax(dim=(1, 2, 3))
        assert torch.all(ints == largest) and conv.weight_fake_quant.quant_max == 127
    with pytest.raises(CalibrationError, match="weight-bits"):
        quantize_post_training(model, images, weight_bits=6)
    with pytest.raises(CalibrationError, match="already quantized"):
        quantize_post_training(q, images)
    with pytest.raises(CalibrationError, match="calib-images"):
        quantize_post_training(model, images, n_images=0)


# --------------------------------------------------------------------------- bad flags


def _one_line_error(rc: int, out: str, *needles: str) -> str:
    assert rc == 2, out[-2000:]
    line = next(ln for ln in out.splitlines() if "sparseyolo export: error:" in ln)
    for needle in needles:
        assert needle in line, line
    assert "Traceback" not in out
    return line


def test_int8_flag_errors(trained, tmp_path, cli):
    w, data = trained["weights"], trained["data"]
    _one_line_error(*cli("export", "--weights", w, "--int8"), "--int8 needs --data")
    _one_line_error(*cli("export", "--weights", w, "--int8", "--data", data, "--calib-images", "0"), "--calib-images")
    _one_line_error(*cli("export", "--weights", w, "--data", data), "--data is only used with --int8")
    _one_line_error(*cli("export", "--weights", w, "--int8", "--data", data, "--percentile", "0"), "--percentile")
    _one_line_error(*cli("export", "--weights", w, "--int8", "--data", data, "--format", "darknet"), "darknet")
    qat = qat_checkpoint(trained["model"], tmp_path / "qat.pt")
    _one_line_error(*cli("export", "--weights", qat, "--int8", "--data", data), "already quantization-aware")
    rc, out = cli("export", "--weights", w, "--int8", "--data", data, "--calib-method", "kl")
    assert rc == 2 and "invalid choice" in out


def test_calibration_loader_caps_workers_at_the_cpu_count(trained, monkeypatch):
    """--workers 4 on a 2-core machine must not start 4 loader processes (torch warns, and they compete)."""
    from sparseyolo.exporters.ptq import calibration_loader

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert calibration_loader(trained["data"], 64, n_images=4, workers=4).num_workers == 2
    assert calibration_loader(trained["data"], 64, n_images=4, workers=0).num_workers == 0
