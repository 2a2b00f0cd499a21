"""``sparseyolo export``: checkpoint -> ONNX (FP32, or QDQ + QLinearConv for a QAT checkpoint)."""

from __future__ import annotations

import argparse

HELP = "export a checkpoint to ONNX (FP32; QDQ and QLinearConv int8 for quantized checkpoints)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="checkpoint (.pt) or Darknet .weights (with --cfg)")
    parser.add_argument("--cfg", default=None, help="model config for Darknet .weights (name or YAML)")
    parser.add_argument(
        "--img-size",
        "--img",
        "--imgsz",
        nargs="+",
        type=int,
        default=[512, 512],
        dest="img_size",
        help="image size h w (one value: square); rounded up to the max stride",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the exported graph")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch and image size axes")
    parser.add_argument("--simplify", action="store_true", help="simplify the graph with onnxsim (if installed)")
    parser.add_argument(
        "--include-nms",
        action="store_true",
        help="decode boxes and run NMS in the graph: one (batch, max-det, 6) output "
        "(ONNX Runtime / OpenVINO; DeepSparse 1.8 cannot compile such graphs)",
    )
    parser.add_argument("--max-det", type=int, default=300, help="--include-nms: boxes kept per image")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="--include-nms: score threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="--include-nms: NMS IoU threshold")
    parser.add_argument("--opset", type=int, default=13, help="ONNX opset (13..17; 13 loads everywhere)")
    parser.add_argument("--device", default="cpu", help="device to trace on: cpu or cuda[:N]")
    parser.add_argument(
        "--uint8-input",
        action="store_true",
        help="quantized models: take uint8 pixels (0-255) and drop the input QuantizeLinear",
    )
    parser.add_argument(
        "--qlinear-ops",
        default="Conv",
        help="quantized models: ops converted to the integer domain in the .qlinear.onnx file. Conv "
        "(default) is the form DeepSparse runs fastest; Conv,Add,LeakyRelu,Concat,MaxPool,Resize,Pad "
        "converts all (Add, LeakyRelu, Concat become com.microsoft QLinear* contrib ops)",
    )
    parser.add_argument(
        "--pack-sparse",
        action="store_true",
        help="also write W.packed.onnx: sparse FP32 weights stored as their non-zero values plus "
        "a 1-bit mask, rebuilt when the file loads (same outputs, smaller to ship)",
    )
    parser.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "darknet"],
        help="onnx, or darknet: W.cfg + W.weights with the model's actual (thinned) filter counts",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from sparseyolo.export.onnx import export_onnx
    from sparseyolo.export.qlinear import export_qlinear
    from sparseyolo.export.size import size_table
    from sparseyolo.quantization import is_qat_model
    from sparseyolo.utils.errors import SparseYoloError
    from sparseyolo.utils.logging import LOGGER

    if len(args.img_size) not in (1, 2):
        raise SparseYoloError(f"--img-size takes one or two integers, got {args.img_size}")
    img_size = tuple(args.img_size) * (2 if len(args.img_size) == 1 else 1)
    device = _device(args.device, torch)
    weights, model = _load(args.weights, args.cfg)
    model = model.to(device).float().eval()
    if args.format == "darknet":
        return _darknet(model, weights, img_size, is_qat_model(model), LOGGER)
    out = weights.with_suffix(".onnx")
    qat = is_qat_model(model)
    export_onnx(
        model,
        out,
        img_size=img_size,
        batch_size=args.batch_size,
        dynamic=args.dynamic,
        simplify=args.simplify,
        include_nms=args.include_nms,
        opset=args.opset,
        device=device,
        uint8_input=args.uint8_input,
        max_det=args.max_det,
        conf_thres=args.conf_thres,
        iou_thres=args.iou_thres,
    )
    files = [out]
    if qat:
        ops = [o.strip() for o in args.qlinear_ops.split(",") if o.strip()]
        qlinear = weights.with_suffix(".qlinear.onnx")
        export_qlinear(out, qlinear, ops)
        files.append(qlinear)
    if args.pack_sparse:
        files += _pack(out, weights.with_suffix(".packed.onnx"), LOGGER)
    LOGGER.info(f"export: wrote {', '.join(str(f) for f in files)}\n")
    # the seed's "size on disk" column is the ONNX file; gzip -9 of a large .pt would only add minutes
    print(size_table(files))
    return 0


def _darknet(model, weights, img_size, qat: bool, logger) -> int:
    from sparseyolo.models.darknet import save_darknet
    from sparseyolo.utils.errors import SparseYoloError

    if qat:
        raise SparseYoloError(f"{weights}: a quantization-aware model has no Darknet form; export it to ONNX")
    if model.decode != "darknet":
        logger.warning(
            f"export: {weights.name} decodes boxes as {model.decode!r}; Darknet's [yolo] layer decodes them "
            "its own way, so Darknet itself will place this model's boxes differently (the weights and "
            "raw outputs are exact; sparseyolo reads the pair back with --cfg)"
        )
    out = weights.with_suffix(".weights") if weights.suffix != ".weights" else weights.with_suffix(".export.weights")
    cfg, written = save_darknet(model, out, img_size=max(img_size))
    logger.info(f"export: wrote {cfg} and {written}")
    return 0


def _pack(src, dst, logger) -> list:
    from sparseyolo.export.packed import MIN_SPARSITY, pack_sparse_file

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
