"""``sparseyolo benchmark``: images/s and latency of ONNX models on ONNX Runtime, OpenVINO and DeepSparse."""

from __future__ import annotations

import argparse

from sparseyolo.cli.common import HelpFormatter, add_engines_argument, add_img_hw_argument, add_timing_arguments

HELP = "benchmark ONNX models (images/s, latency p50/p90/p99) on onnxruntime / openvino / deepsparse, interleaved"

EPILOG = """\
Several models and engines run interleaved in one process (short alternating slices), so the
'x base' ratios (images/s vs. the first model on the first engine) stay honest on a busy machine.
Shapes: dynamic input axes take --batch-size / --img (defaults 1 / 512). If a model has a static
shape, it is used as is when the flag was not given (with a warning); an explicit flag that
conflicts with it is an error naming the model and its shape. uint8-input (QLinear) models get
uint8 data. DeepSparse 1.8 needs its own venv: scripts/setup_deepsparse.sh.
int8 exports: a W.onnx (QDQ) or W.qlinear.onnx named alone runs on each engine in the form that
engine runs fastest (DeepSparse: QLinear, OpenVINO: QDQ, ONNX Runtime: the file named), noted under
the table; name both files, or pass --exact-file, to benchmark each file as named.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = HelpFormatter  # informative defaults only; the epilog's line breaks kept
    parser.add_argument("models", nargs="+", metavar="MODEL.onnx", help="ONNX model files")
    add_engines_argument(parser)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="batch size (default 1 or the model's static batch)"
    )
    add_img_hw_argument(parser, "input size: one value (square) or H W (default 512 or the model's static size)")
    add_timing_arguments(parser, per="model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input data")
    parser.add_argument(
        "--exact-file",
        action="store_true",
        help="benchmark each file as named: never swap an int8 export for its other form",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_img(values: list[int] | None) -> tuple[int, int] | None:
    """``[512]`` -> (512, 512); ``[384, 640]`` -> (384, 640); None stays None."""
    from sparseyolo.utils.errors import SparseYoloError

    if values is None:
        return None
    if len(values) not in (1, 2) or any(v <= 0 for v in values):
        raise SparseYoloError(f"--img takes one or two positive sizes, got {' '.join(map(str, values))}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def check_positive(args: argparse.Namespace) -> None:
    from sparseyolo.utils.errors import SparseYoloError

    if args.batch_size is not None and args.batch_size < 1:
        raise SparseYoloError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise SparseYoloError(f"--threads must be >= 1, got {args.threads}")
    if args.time <= 0 or args.warmup < 0:
        raise SparseYoloError("--time must be > 0 and --warmup >= 0")


def run(args: argparse.Namespace) -> int:
    import sparseyolo.api as api
    from sparseyolo.cli.common import flags
    from sparseyolo.runtime.engines import parse_engines
    from sparseyolo.timing.output import results_json, results_notes, results_table
    from sparseyolo.utils.io import atomic_write_text

    check_positive(args)
    engines = parse_engines(args.engine)
    img = parse_img(args.img)
    options = flags(args)
    models, _ = options.pop("models"), options.pop("engine")
    results = api.benchmark(models, engines, **{**options, "img": img})
    print(results_table(results))
    swapped = list(dict.fromkeys(r.form_note for r in results if r.given and r.model != r.given))
    if swapped:
        print("\n" + "\n".join(swapped))
    notes = results_notes(results)
    if notes:
        print("\n" + notes)
    versions = {r.engine: r.engine_version for r in results if r.engine_version}
    if versions:
        print(
            "\n"
            + ", ".join(f"{k} {v}" for k, v in versions.items())
            + f"; threads={args.threads or 'default'}, {args.time:g}s per model and engine, interleaved"
        )
    if args.json:
        settings = {
            "engines": engines,
            "batch_size": args.batch_size,
            "img": list(img) if img else None,
            "threads": args.threads,
            "time_s": args.time,
            "warmup_s": args.warmup,
            "seed": args.seed,
            "exact_files": args.exact_file,
        }
        atomic_write_text(args.json, results_json(results, settings))
        print(f"results written to {args.json}")
    return 0 if any(r.status == "ok" for r in results) else 1
