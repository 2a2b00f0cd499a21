"""``sparseyolo val``: mAP of a checkpoint, Darknet weights or ONNX model on a dataset split."""

from __future__ import annotations

import argparse

HELP = "evaluate a model (.pt, Darknet .weights, .onnx) on a dataset: P, R, mAP@0.5, mAP@0.5:0.95"

ONNX_ENGINES = ("onnxruntime", "openvino", "deepsparse", "onnxruntime-reference")


def add_onnx_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine`` (one runtime for an .onnx file) and ``--exact-file``; shared by val and detect."""
    parser.add_argument(
        "--engine",
        type=str.lower,
        choices=ONNX_ENGINES,
        default=None,
        help="runtime for .onnx files (default onnxruntime); an int8 export (W.onnx QDQ / W.qlinear.onnx) "
        "runs in the form that engine runs fastest, and the log says which file ran. onnxruntime-reference: "
        "a QDQ file's int8 arithmetic without int8 kernels, on any CPU (what VNNI / AMX CPUs compute; slow)",
    )
    parser.add_argument(
        "--exact-file",
        action="store_true",
        help="run the .onnx file named, never its other int8 form",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights", required=True, help="checkpoint .pt, Darknet .weights (+ --cfg), .onnx, URL or zoo: stub"
    )
    parser.add_argument("--cfg", default=None, help="model config for Darknet .weights (e.g. yolov3-tiny)")
    parser.add_argument("--data", required=True, help="dataset YAML")
    parser.add_argument(
        "--img", "--img-size", "--imgsz", dest="img_size", type=int, default=416, help="inference size (pixels)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--conf", "--conf-thres", dest="conf_thres", type=float, default=0.001, help="confidence threshold"
    )
    parser.add_argument("--iou", "--iou-thres", dest="iou_thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--task", default="val", choices=("val", "test", "train"), help="dataset split")
    parser.add_argument("--device", default="", help="cuda device, e.g. 0, or cpu (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=8, help="dataloader workers")
    parser.add_argument("--single-cls", action="store_true", help="treat all classes as one")
    parser.add_argument(
        "--multi-label",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NMS keeps every class scoring above --conf per box (the usual mAP setting); "
        "--no-multi-label keeps only the best class",
    )
    parser.add_argument("--verbose", action="store_true", help="print mAP per class")
    parser.add_argument("--save-txt", action="store_true", help="save predictions as YOLO txt labels")
    parser.add_argument("--save-conf", action="store_true", help="add confidences to --save-txt labels")
    parser.add_argument(
        "--save-json",
        action="store_true",
        help="save predictions.json (COCO results) and score it with faster-coco-eval",
    )
    parser.add_argument("--project", default="runs/val", help="save results to project/name")
    parser.add_argument("--name", default="exp", help="save results to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    parser.add_argument(
        "--rect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rectangular batches (fewer padded pixels); --no-rect letterboxes to a square",
    )
    parser.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    parser.add_argument("--noplots", action="store_true", help="do not save plots")
    add_onnx_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import sparseyolo.api as api
    from sparseyolo.cli.common import flags

    options = flags(args)
    api.val(options.pop("weights"), options.pop("data"), **options)
    return 0
