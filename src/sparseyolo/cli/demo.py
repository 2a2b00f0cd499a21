"""``sparseyolo demo``: dataset -> dense baseline -> channel-pruned int8 run -> ONNX -> benchmark -> report,
on a built-in shapes dataset, with no data, weights or network needed."""

from __future__ import annotations

import argparse

HELP = "run the whole workflow (train, prune, quantize, export, benchmark, report) on a built-in dataset"

EPILOG = """\
Stages: 1 shapes dataset, 2 dense half-width YOLOv3-tiny baseline from scratch, 3 the
yolov3-tiny.channel_pruned_quantized recipe from the baseline's best.pt (45% of the channels
cut out, then int8 QAT), 4 ONNX export at the training size (for mAP) and at --bench-img (for speed; QDQ and
QLinearConv for the QAT run), 5 mAP of each ONNX, interleaved ONNX Runtime benchmark and the report
table (also in OUT/report.md, OUT/report.json, OUT/report.png).
About 3.5 minutes on 2 idle CPU cores; --fast is a smoke run of under a minute (meaningless mAP).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sparseyolo.demo.settings import DemoConfig

    d = DemoConfig()
    parser.epilog = EPILOG
    parser.add_argument("--out", default=d.out, help="output folder (a previous demo there is replaced)")
    parser.add_argument("--epochs", type=int, default=None, help=f"baseline epochs (default {d.epochs})")
    parser.add_argument(
        "--sparse-epochs",
        type=int,
        default=None,
        help=f"epochs of the recipe run, at least 3 (default {d.sparse_epochs})",
    )
    parser.add_argument(
        "--img",
        "--img-size",
        dest="img",
        type=int,
        default=None,
        help=f"image size for data, training and mAP (default {d.img})",
    )
    parser.add_argument(
        "--bench-img",
        type=int,
        default=None,
        help=f"export and benchmark size of the speed figures (default {d.bench_img})",
    )
    parser.add_argument("--width", type=float, default=None, help=f"YOLOv3-tiny width multiple (default {d.width:g})")
    parser.add_argument("--threads", type=int, default=d.threads, help="CPU threads (training and ONNX Runtime)")
    parser.add_argument("--workers", type=int, default=None, help=f"data loader workers (default {d.workers})")
    parser.add_argument(
        "--bench-time",
        type=float,
        default=None,
        help=f"measured benchmark seconds per model (default {d.bench_time:g})",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the dataset and the training runs")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="smoke-test sizes: a few tiny images, 1-2 epochs per stage (checks the pipeline only)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep an earlier demo in --out and reuse its finished stages instead of starting over",
    )


def run(args: argparse.Namespace) -> int:
    from sparseyolo.demo import demo_config, run_demo, summary

    cfg = demo_config(
        out=args.out,
        epochs=args.epochs,
        sparse_epochs=args.sparse_epochs,
        img=args.img,
        bench_img=args.bench_img,
        width=args.width,
        threads=args.threads,
        workers=args.workers,
        bench_time=args.bench_time,
        seed=args.seed,
        fast=args.fast,
        keep=args.keep,
    )
    result = run_demo(cfg)
    print(summary(result))
    return 0
