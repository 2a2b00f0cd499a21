"""Post-training quantization (PTQ) of a detector: int8 from a float checkpoint, no training.

The float model is given the QAT structure the shipped quantized recipes use
(:func:`sparseyolo.quantization.prepare_qat` on every layer but the Detect head, conv+BN folded), its
activation ranges are calibrated on a few hundred images at most and its conv biases corrected
(:func:`sparseyolo.quantization.calibration.calibrate`), and every observer is frozen. The result is
an ordinary fake-quantized model: :func:`sparseyolo.exporters.onnx.export_onnx` writes it as QDQ and
:func:`sparseyolo.exporters.qlinear.export_qlinear` as QLinearConv, exactly as for a QAT checkpoint.

```python
from sparseyolo.exporters.ptq import calibration_loader, quantize_post_training
loader = calibration_loader("bccd.yaml", img_size=416, n_images=128)
qmodel = quantize_post_training(model, loader, method="mse")   # model itself is not changed
export_onnx(qmodel, "best.int8.onnx", img_size=416)
```
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from sparseyolo.quantization import QATConfig, is_qat_model, prepare_qat
from sparseyolo.quantization.calibration import CalibrationReport, calibrate
from sparseyolo.quantization.histogram import DEFAULT_PERCENTILE, CalibrationError, check_method
from sparseyolo.utils.logging import LOGGER

DEFAULT_CALIB_IMAGES = 128
CALIB_BATCH_SIZE = 8
IMAGE_RANGE = (0.0, 1.0)  # the model input: pixels / 255 (exactly the uint8-input form's scale 1/255)


def ptq_config(**overrides: object) -> QATConfig:
    """The PTQ scheme: int8 symmetric per-channel weights, uint8 asymmetric per-tensor activations,
    Conv+BN folded (the shipped QAT recipes' scheme, with per-channel weight scales, which PTQ needs
    more than QAT does: no training adapts the weights to one scale per layer)."""
    values: dict[str, object] = {"weight_bits": 8, "activation_bits": 8, "per_channel": True, "fuse": "conv_bn_relus"}
    values.update(overrides)
    return QATConfig.from_dict(values, where="PTQ config")


FIRST_CONV_CHOICES = ("auto", "int8", "float")


def ptq_submodules(model: nn.Module, first_conv: str = "auto") -> list[str]:
    """Every layer of a DetectionModel but the Detect head (``model.0`` .. ``model.N-2``): the head's 1x1
    output convs stay float. ``first_conv`` decides whether ``model.0``, the conv on the 3-channel
    image, is quantized: ``int8``, ``float``, or ``auto``: float when a MaxPool follows it (YOLOv3-tiny),
    int8 otherwise (YOLOv3, YOLOv3-SPP). Why: ONNX Runtime runs a 3-channel int8 conv slowly; a float one
    pays for quantizing its output, which the export does after the MaxPool, on a quarter of the values
    (docs/quantization.md, "ONNX Runtime: the first conv": 1.11x on dense YOLOv3-tiny, and without a
    MaxPool 0.97x on YOLOv3-SPP)."""
    if first_conv not in FIRST_CONV_CHOICES:
        raise CalibrationError(f"--first-conv must be one of {', '.join(FIRST_CONV_CHOICES)}, got {first_conv!r}")
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or len(layers) < 2:
        return [name for name, m in model.named_children()] or [""]
    if first_conv == "auto":
        first_conv = "float" if len(layers) > 2 and isinstance(layers[1], nn.MaxPool2d) else "int8"
    first = 1 if first_conv == "float" and len(layers) > 2 else 0
    return [f"model.{i}" for i in range(first, len(layers) - 1)]


def check_calib_images(n: object) -> int:
    """``n`` if it is an integer >= 1, else a CalibrationError."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CalibrationError(f"--calib-images must be an integer >= 1, got {n!r}")
    return n


def calibration_loader(
    data: str | Path,
    img_size: int,
    n_images: int = DEFAULT_CALIB_IMAGES,
    split: str = "train",
    batch_size: int = CALIB_BATCH_SIZE,
    stride: int = 32,
    workers: int = 0,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """A loader over ``n_images`` images of the data YAML's ``split`` (a seeded random subset when the
    split has more), letterboxed to a square ``img_size`` without augmentation, as fixed-shape ONNX
    files are validated. Batches are ``(uint8 images, targets, paths, shapes)``."""
    from sparseyolo.data.config import load_data_config
    from sparseyolo.data.dataset import create_dataloader

    check_calib_images(n_images)
    cfg = load_data_config(data)
    source = cfg.get(split)
    if not source:
        raise CalibrationError(f"{data}: no {split!r} split to calibrate on")
    _, dataset = create_dataloader(
        source, img_size, batch_size, stride, workers=0, prefix="calibration: ", nc=len(cfg["names"])
    )
    n = min(n_images, len(dataset))
    if n < n_images:
        LOGGER.info(f"calibration: the {split} split has {len(dataset)} images; using all of them")
    g = torch.Generator().manual_seed(seed)
    index = sorted(torch.randperm(len(dataset), generator=g)[:n].tolist())
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, index),
        batch_size=min(batch_size, n),
        shuffle=False,
        num_workers=min(max(0, workers), os.cpu_count() or 1, 8),  # as create_dataloader caps them
        collate_fn=dataset.collate_fn,
    )


def _image_batches(source: object, limit: int | None, device: torch.device) -> Iterator[torch.Tensor]:
    """Float ``(B, 3, H, W)`` batches in [0, 1] on ``device`` from a loader, an iterable of batches or
    one tensor of images (uint8 0-255 or float 0-1), at most ``limit`` images in all."""
    if isinstance(source, torch.Tensor):
        if source.dim() == 3:
            source = source.unsqueeze(0)
        items: Iterable[object] = source.split(CALIB_BATCH_SIZE)
    else:
        items = source  # type: ignore[assignment]
    seen = 0
    for item in items:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise CalibrationError(f"calibration batches must be image tensors, got {type(x).__name__}")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise CalibrationError(f"calibration images must be (batch, 3, height, width), got shape {list(x.shape)}")
        if limit is not None:
            x = x[: max(0, limit - seen)]
            if len(x) == 0:
                return
        x = x.to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        seen += len(x)
        yield x


def quantize_post_training(
    model: nn.Module,
    calib_loader_or_images: object,
    method: str = "mse",
    percentile: float = DEFAULT_PERCENTILE,
    bias_correction: bool = True,
    n_images: int | None = None,
    weight_bits: int = 7,
    config: QATConfig | None = None,
    submodules: list[str] | None = None,
    first_conv: str = "auto",
    device: str | torch.device | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Post-training int8 quantization of a float detector; returns the calibrated fake-quantized model.

    - ``calib_loader_or_images``: a DataLoader (e.g. :func:`calibration_loader`; the first element of
      each batch is the image tensor), any iterable of image batches, or one ``(N, 3, H, W)`` tensor;
      uint8 pixels are divided by 255, float images are taken as already in [0, 1].
    - ``method``: how activation ranges are chosen from the calibration histograms: ``mse`` (the
      range with the least expected quantization error; the best measured, docs/quantization.md),
      ``percentile`` (clip at the ``100 - percentile`` / ``percentile`` quantiles; default 99.99) or
      ``minmax``.
    - ``bias_correction``: subtract each quantized conv's mean output shift caused by weight
      quantization (measured on the calibration images) from its bias.
    - ``n_images``: use at most this many images of the source (None: all it yields).
    - ``weight_bits``: 7 (default) keeps the int8 weights within -63..63 (larger scales, same graph),
      which every int8 kernel computes exactly; 8 uses -127..127, which ONNX Runtime's int8
      convolutions on x86 CPUs without VNNI/AMX saturate (see docs/quantization.md).
    - ``config`` / ``submodules``: the quantization scheme and the layers to quantize; defaults
      :func:`ptq_config` and :func:`ptq_submodules` (everything but the Detect head, and the first
      conv as ``first_conv`` says: ``auto``, ``int8`` or ``float``).
    - ``inplace``: quantize ``model`` itself instead of a deep copy.

    The model runs in eval mode on ``device`` (default: where its parameters are). The returned model
    carries the :class:`CalibrationReport` as ``.ptq_report`` and exports with
    :func:`sparseyolo.exporters.onnx.export_onnx` (QDQ) and :func:`sparseyolo.exporters.qlinear.export_qlinear`.
    """
    check_method(method, percentile)
    if n_images is not None:
        check_calib_images(n_images)
    if weight_bits not in (7, 8):
        raise CalibrationError(f"--weight-bits must be 7 or 8, got {weight_bits!r}")
    if is_qat_model(model):
        raise CalibrationError(
            "the model is already quantized (a QAT checkpoint); export it without --int8 to write its int8 files"
        )
    net = model if inplace else copy.deepcopy(model)
    if device is None:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
    device = torch.device(device)
    net = net.to(device).float().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    layers = submodules if submodules is not None else ptq_submodules(net, first_conv)
    prepare_qat(net, layers, config or ptq_config())
    net.eval()
    start = time.perf_counter()
    report = calibrate(
        net,
        _image_batches(calib_loader_or_images, n_images, device),
        method=method,
        percentile=percentile,
        bias_correction=bias_correction,
        input_range=IMAGE_RANGE,
        weight_quant_max=2 ** (weight_bits - 1) - 1,
    )
    report.seconds = time.perf_counter() - start  # with the image loading
    net.ptq_report = report
    shifts = sorted(report.bias_shift.values())
    LOGGER.info(
        f"PTQ: calibrated {len(report.ranges)} activation ranges ({method}"
        f"{f' {percentile:g}' if method == 'percentile' else ''}; {weight_bits}-bit weights) on "
        f"{report.images} images in {report.seconds:.1f} s"
        + (
            f"; bias correction of {len(shifts)} convs (largest mean shift {shifts[-1]:.3g})"
            if bias_correction and shifts
            else ""
        )
    )
    return net


__all__ = [
    "DEFAULT_CALIB_IMAGES",
    "FIRST_CONV_CHOICES",
    "CalibrationError",
    "CalibrationReport",
    "calibration_loader",
    "check_calib_images",
    "ptq_config",
    "ptq_submodules",
    "quantize_post_training",
]
