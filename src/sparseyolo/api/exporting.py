"""``sparseyolo export`` as a function: a checkpoint (or Darknet weights) to ONNX files.

FP32 with BN folded; a QAT checkpoint as QDQ plus its QLinear form; with ``int8`` and ``data``,
post-training quantization of a float checkpoint (:mod:`sparseyolo.exporters.ptq`) with an FP32 vs int8
mAP comparison on the data's val split; ``format="darknet"`` writes ``.cfg`` + ``.weights``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.logging import LOGGER

MAP_HEADER = ["model", "file", "mAP@0.5", "mAP@0.5:0.95", "change vs FP32"]


@dataclass
class ExportOptions:
    """The flags of ``sparseyolo export`` (same names and defaults)."""

    weights: str = ""
    cfg: str | None = None
    img_size: Any = (512, 512)
    batch_size: int = 1
    dynamic: bool = False
    simplify: bool = False
    include_nms: bool = False
    max_det: int = 300
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    opset: int = 13
    device: str = "cpu"
    uint8_input: bool = False
    qlinear_ops: str = "Conv"
    pack_sparse: bool = False
    format: str = "onnx"
    int8: bool = False
    data: str | None = None
    calib_images: int = 128
    calib_split: str = "train"
    calib_method: str = "mse"
    percentile: float = 99.99
    no_bias_correction: bool = False
    no_eval: bool = False
    workers: int = 4
    weight_bits: int = 7  # exact on every CPU; 8 for VNNI targets (docs/quantization.md)
    first_conv: str = "auto"  # PTQ: the 3-channel first conv in int8 or float (auto: float before a MaxPool)


@dataclass
class ExportOutcome:
    """The files written, and with ``int8`` the mAP rows (``MAP_HEADER``) of FP32 and int8 files."""

    files: list[Path]
    map_rows: list[list[str]] = field(default_factory=list)


def export_weights(weights: str | Path, **options: Any) -> ExportOutcome:
    """Export ``weights``; ``options`` are the CLI flags by their Python names (see :class:`ExportOptions`)."""
    import torch

    from sparseyolo.exporters.onnx import export_onnx
    from sparseyolo.exporters.qlinear import export_qlinear
    from sparseyolo.quantization import is_qat_model

    unknown = set(options) - {f.name for f in fields(ExportOptions)}
    if unknown:
        raise TypeError(f"export() got unknown options {sorted(unknown)}; see sparseyolo export --help")
    o = ExportOptions(weights=str(weights), **options)
    sizes = [o.img_size] if isinstance(o.img_size, int) else list(o.img_size)
    if len(sizes) not in (1, 2):
        raise SparseYoloError(f"--img-size takes one or two integers, got {o.img_size}")
    img_size = tuple(int(s) for s in sizes) * (2 if len(sizes) == 1 else 1)
    _check_int8_flags(o)
    device = _device(o.device, torch)
    weights, model = _load(o.weights, o.cfg)
    model = model.to(device).float().eval()
    if o.format == "darknet":
        return _darknet(model, weights, img_size, is_qat_model(model), LOGGER)
    if o.int8:
        return _int8(o, model, weights, img_size, device, LOGGER)
    out = weights.with_suffix(".onnx")
    export_onnx(model, out, **_onnx_options(o, img_size, device), uint8_input=o.uint8_input)
    files = [out]
    if is_qat_model(model):
        qlinear = weights.with_suffix(".qlinear.onnx")
        export_qlinear(out, qlinear, [op.strip() for op in o.qlinear_ops.split(",") if op.strip()])
        files.append(qlinear)
    if o.pack_sparse:
        files += _pack(out, weights.with_suffix(".packed.onnx"), LOGGER)
    LOGGER.info(f"export: wrote {', '.join(str(f) for f in files)}\n")
    if is_qat_model(model) and _max_weight_int(model) > 64:
        _note_saturation(
            LOGGER, "QAT with weight_bits: 7 and per_channel: true in the recipe's QuantizationModifier gives files"
        )
    return ExportOutcome(files)


def _max_weight_int(model) -> int:
    """The largest integer magnitude a QAT model's weight quantizers allow."""
    from sparseyolo.quantization import WeightQuantizer

    return max((max(-q.quant_min, q.quant_max) for q in model.modules() if isinstance(q, WeightQuantizer)), default=0)


def _note_saturation(logger, exact_files: str) -> None:
    """On a CPU without VNNI / AMX: say that ONNX Runtime's int8 kernels saturate 8-bit weights here,
    how to measure what VNNI CPUs compute, and which files compute exactly everywhere."""
    from sparseyolo.runtime.forms import cpu_class

    if cpu_class() == "avx2":
        logger.warning(
            "note: this CPU has no VNNI/AMX int8 instructions: ONNX Runtime's int8 convolutions saturate 8-bit "
            "weights here, which can cost int8 mAP that VNNI CPUs do not lose (`val --engine "
            f"onnxruntime-reference` measures what they compute); {exact_files} that compute exactly on every "
            "CPU (docs/quantization.md)"
        )


def _onnx_options(o: ExportOptions, img_size, device) -> dict[str, Any]:
    """The ``export_onnx`` keywords every ONNX file of one export shares (FP32, QAT and PTQ alike)."""
    return dict(
        img_size=img_size,
        batch_size=o.batch_size,
        dynamic=o.dynamic,
        simplify=o.simplify,
        include_nms=o.include_nms,
        opset=o.opset,
        device=device,
        max_det=o.max_det,
        conf_thres=o.conf_thres,
        iou_thres=o.iou_thres,
    )


def _check_int8_flags(o: ExportOptions) -> None:
    """The post-training quantization flags' one-line errors, before any file is loaded."""
    from sparseyolo.utils.errors import SparseYoloError

    if not o.int8:
        if o.data is not None:
            raise SparseYoloError("--data is only used with --int8 (post-training quantization)")
        return
    if o.data is None:
        raise SparseYoloError("--int8 needs --data D.yaml: post-training quantization calibrates on its images")
    if o.format != "onnx":
        raise SparseYoloError("--int8 writes ONNX files; it cannot be combined with --format darknet")
    if o.calib_images < 1:
        raise SparseYoloError(f"--calib-images must be >= 1, got {o.calib_images}")
    if not 50.0 < o.percentile <= 100.0:
        raise SparseYoloError(f"--percentile must be in (50, 100], got {o.percentile}")
    if o.workers < 0:
        raise SparseYoloError(f"--workers must be >= 0, got {o.workers}")


def _int8(o: ExportOptions, model, weights, img_size, device, logger) -> ExportOutcome:
    """``--int8``: FP32 ONNX, post-training quantization, QDQ + QLinear ONNX, then FP32 vs int8 mAP."""
    from sparseyolo.data.config import load_data_config
    from sparseyolo.exporters.onnx import check_img_size, export_onnx
    from sparseyolo.exporters.ptq import calibration_loader, quantize_post_training
    from sparseyolo.exporters.qlinear import export_qlinear
    from sparseyolo.quantization import is_qat_model
    from sparseyolo.utils.errors import SparseYoloError

    if is_qat_model(model):
        raise SparseYoloError(
            f"{weights} is already quantization-aware (QAT); export it without --int8 to write its int8 files"
        )
    data = load_data_config(o.data)
    if len(getattr(model, "names", [])) and len(model.names) != len(data["names"]):
        raise SparseYoloError(
            f"{weights} predicts {len(model.names)} classes but {o.data} lists {len(data['names'])}; "
            "pass the model's data YAML"
        )
    stride = int(max(model.stride.tolist())) if hasattr(model, "stride") else 32
    img_size = check_img_size(img_size, stride)
    common = _onnx_options(o, img_size, device)
    fp32 = export_onnx(model, weights.with_suffix(".onnx"), **common)
    loader = calibration_loader(
        o.data, max(img_size), o.calib_images, split=o.calib_split, stride=stride, workers=o.workers
    )
    qmodel = quantize_post_training(
        model,
        loader,
        method=o.calib_method,
        percentile=o.percentile,
        bias_correction=not o.no_bias_correction,
        n_images=o.calib_images,
        weight_bits=o.weight_bits,
        first_conv=o.first_conv,
        device=device,
    )
    qdq = export_onnx(qmodel, weights.with_suffix(".int8.onnx"), uint8_input=o.uint8_input, **common)
    ops = [op.strip() for op in o.qlinear_ops.split(",") if op.strip()]
    qlinear = weights.with_suffix(".int8.qlinear.onnx")
    export_qlinear(qdq, qlinear, ops)
    files = [fp32, qdq, qlinear]
    if o.pack_sparse:
        files += _pack(fp32, weights.with_suffix(".packed.onnx"), logger)
    report = qmodel.ptq_report
    logger.info(
        f"export: wrote {', '.join(str(f) for f in files)}; calibration: {report.images} {o.calib_split} "
        f"images, {o.calib_method}, {report.seconds:.1f} s\n"
    )
    outcome = ExportOutcome(files)
    if o.no_eval:
        return outcome
    if not data.get("val"):
        logger.info(f"export: {o.data} has no val split; no mAP comparison")
        return outcome
    outcome.map_rows = _compare_map([("FP32", fp32), ("int8 QDQ", qdq), ("int8 QLinear", qlinear)], o, img_size)
    if o.weight_bits == 8:
        _note_saturation(logger, "--weight-bits 7 (the default) makes files")
    return outcome


def _compare_map(files: list, o: ExportOptions, img_size) -> list[list[str]]:
    """mAP@0.5 and mAP@0.5:0.95 of each exported file on the val split: rows of ``MAP_HEADER``."""
    import tempfile

    from sparseyolo.runtime.val import run as val_run

    rows, base = [], None
    with tempfile.TemporaryDirectory(prefix="sparseyolo-ptq-val-") as tmp:
        for label, path in files:
            metrics, _, _ = val_run(
                path,
                o.data,
                img_size=max(img_size),
                batch_size=8,
                task="val",
                device="cpu",
                project=tmp,
                name=label.replace(" ", "_"),
                workers=o.workers,
                plots=False,
            )
            m50, m5095 = float(metrics["mAP50"]), float(metrics["mAP50-95"])
            base = base or (m50, m5095)
            delta = "" if label == "FP32" else f"{m50 - base[0]:+.4f} / {m5095 - base[1]:+.4f}"
            rows.append([label, path.name, f"{m50:.4f}", f"{m5095:.4f}", delta])
    return rows


def _darknet(model, weights, img_size, qat: bool, logger) -> ExportOutcome:
    from sparseyolo.models.darknet import save_darknet
    from sparseyolo.utils.errors import SparseYoloError

    if qat:
        raise SparseYoloError(f"{weights}: a quantization-aware model has no Darknet form; export it to ONNX")
    if model.decode == "v5":
        logger.info(
            f"export: {weights.name} decodes boxes as trained here ('v5'); the cfg says so in AlexeyAB Darknet's "
            "terms (logistic detection convs, [yolo] new_coords=1, scale_x_y=2), which --cfg reads back"
        )
    out = weights.with_suffix(".weights") if weights.suffix != ".weights" else weights.with_suffix(".export.weights")
    cfg, written = save_darknet(model, out, img_size=max(img_size))
    logger.info(f"export: wrote {cfg} and {written}")
    return ExportOutcome([Path(cfg), Path(written)])


def _pack(src, dst, logger) -> list:
    from sparseyolo.exporters.packed import MIN_SPARSITY, pack_sparse_file

    packed = pack_sparse_file(src, dst)
    if not packed:
        logger.warning(
            f"--pack-sparse: {src} has no float weight with at least {MIN_SPARSITY:.0%} zeros; "
            f"{dst.name} not written (quantized files already store 1 byte per weight)"
        )
        return []
    logger.info(f"--pack-sparse: packed {len(packed)} sparse weights into {dst}")
    return [dst]


def _device(spec: str, torch):
    from sparseyolo.utils.errors import SparseYoloError

    spec = str(spec).strip().lower()
    if spec.isdigit():
        spec = f"cuda:{spec}"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise SparseYoloError(f"--device {spec!r} is not a device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SparseYoloError(f"--device {spec}: CUDA is not available on this machine")
    return device


def _load(spec: str, cfg):
    """``(local weights path, model)`` from a checkpoint, Darknet weights, URL or zoo stub.

    The loader re-applies the QAT structure recorded in a checkpoint and raises ``WeightsError``
    for missing or corrupt files.
    """
    from sparseyolo.models.weights import load_model, resolve_weights

    path = resolve_weights(spec)
    model, _ckpt = load_model(path, cfg=cfg)
    return path, model
