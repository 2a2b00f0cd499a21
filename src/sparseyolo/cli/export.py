"""``sparseyolo export``: checkpoint -> ONNX (FP32, or QDQ + QLinearConv for a QAT checkpoint; with
``--int8 --data D.yaml``, post-training quantization of a float checkpoint)."""

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
    ptq = parser.add_argument_group(
        "post-training quantization (--int8)",
        "int8 without training: writes W.onnx (FP32), W.int8.onnx (QDQ) and W.int8.qlinear.onnx, calibrated "
        "on images of --data, and compares FP32 and int8 mAP on its val split (docs/quantization.md)",
    )
    ptq.add_argument(
        "--int8", action="store_true", help="post-training int8 quantization of a float checkpoint (needs --data)"
    )
    ptq.add_argument("--data", default=None, help="--int8: data YAML of the calibration images and the mAP check")
    ptq.add_argument("--calib-images", type=int, default=128, help="--int8: number of calibration images")
    ptq.add_argument(
        "--calib-split", default="train", choices=["train", "val", "test"], help="--int8: split to calibrate on"
    )
    ptq.add_argument(
        "--calib-method",
        default="mse",
        choices=["mse", "percentile", "minmax"],
        help="--int8: activation range from the calibration histograms: mse (least expected quantization "
        "error; the best on YOLOv3-tiny, docs/quantization.md), percentile (clip at --percentile) or minmax",
    )
    ptq.add_argument("--percentile", type=float, default=99.99, help="--int8 --calib-method percentile: the clip")
    ptq.add_argument(
        "--no-bias-correction",
        action="store_true",
        help="--int8: keep conv biases as they are (default: subtract each conv's mean output shift caused by "
        "weight quantization, measured on the calibration images)",
    )
    ptq.add_argument(
        "--weight-bits",
        type=int,
        default=7,
        choices=[7, 8],
        help="--int8: 7 keeps the int8 weights within -63..63, which every int8 kernel computes exactly; 8 uses "
        "-127..127, which ONNX Runtime's int8 convolutions on x86 CPUs without VNNI/AMX saturate (a BCCD model: "
        "mAP@0.5 0.36 -> 0.09 there), for engines known not to (docs/quantization.md)",
    )
    ptq.add_argument(
        "--first-conv",
        default="auto",
        choices=["auto", "int8", "float"],
        help="--int8: the first conv (on the 3-channel image) in int8 or float; auto: float when a MaxPool "
        "follows it (YOLOv3-tiny: ONNX Runtime runs the model 1.11x faster so), int8 otherwise (YOLOv3, "
        "YOLOv3-SPP) (docs/quantization.md)",
    )
    ptq.add_argument(
        "--no-eval", action="store_true", help="--int8: skip the FP32 vs int8 mAP comparison on the val split"
    )
    ptq.add_argument("--workers", type=int, default=4, help="--int8: data loader processes (calibration, mAP)")


def run(args: argparse.Namespace) -> int:
    from sparseyolo.api.exporting import MAP_HEADER, export_weights
    from sparseyolo.cli.common import flags
    from sparseyolo.exporters.size import size_table
    from sparseyolo.utils.tables import markdown_table

    options = flags(args)
    outcome = export_weights(options.pop("weights"), **options)
    # the seed's "size on disk" column is the ONNX file; gzip -9 of a large .pt would only add minutes
    onnx_files = [f for f in outcome.files if f.suffix == ".onnx"]
    if onnx_files:
        print(size_table(onnx_files))
    if outcome.map_rows:
        print("\nmAP on the val split (ONNX Runtime):\n" + markdown_table(MAP_HEADER, outcome.map_rows, align="llrrr"))
    return 0
