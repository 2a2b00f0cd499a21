"""``sparseyolo detect``: run a detector on images and save annotated copies, txt labels, COCO JSON."""

from __future__ import annotations

import argparse

from sparseyolo.cli.val import add_onnx_engine_arguments

HELP = "detect objects in an image, a folder or a glob with a .pt / Darknet .weights / .onnx model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights", required=True, help="checkpoint .pt, Darknet .weights (+ --cfg), .onnx, URL or zoo: stub"
    )
    parser.add_argument("--cfg", default=None, help="model config for Darknet .weights (e.g. yolov3-tiny)")
    parser.add_argument("--source", required=True, help="image file, folder or glob pattern (quote it)")
    parser.add_argument("--data", default=None, help="optional dataset YAML to take class names from")
    parser.add_argument(
        "--img", "--img-size", "--imgsz", dest="img_size", type=int, default=416, help="inference size (pixels)"
    )
    parser.add_argument(
        "--conf", "--conf-thres", dest="conf_thres", type=float, default=0.25, help="confidence threshold"
    )
    parser.add_argument("--iou", "--iou-thres", dest="iou_thres", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these class ids")
    parser.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    parser.add_argument("--save-txt", action="store_true", help="save YOLO txt labels")
    parser.add_argument("--save-conf", action="store_true", help="add confidences to --save-txt labels")
    parser.add_argument("--save-json", action="store_true", help="save predictions.json (COCO results)")
    parser.add_argument("--nosave", action="store_true", help="do not save annotated images")
    parser.add_argument("--line-thickness", type=int, default=3, help="box line width (pixels)")
    parser.add_argument("--project", default="runs/detect", help="save results to project/name")
    parser.add_argument("--name", default="exp", help="save results to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    parser.add_argument("--device", default="", help="cuda device, e.g. 0, or cpu (default: cuda if available)")
    parser.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    add_onnx_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import sparseyolo.api as api
    from sparseyolo.cli.common import flags

    options = flags(args)
    api.detect(options.pop("weights"), options.pop("source"), **options)
    return 0
