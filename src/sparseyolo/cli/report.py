"""``sparseyolo report``: the results table of a series of training runs (mAP, size, speed per engine)."""

from __future__ import annotations

import argparse

from sparseyolo.cli.common import add_engines_argument, add_timing_arguments

HELP = "results table (mAP, gzip size, img/s per engine, epochs, wall time) for training runs, with a plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training run folders (runs/train/expN)")
    add_engines_argument(parser, dest="engines")
    parser.add_argument(
        "--img",
        "--img-size",
        type=int,
        default=None,
        dest="img",
        help="benchmark / export size (default: the ONNX file's own static size, 512 for exports)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="benchmark batch size (default 1)")
    add_timing_arguments(parser, per="run")
    parser.add_argument("--baseline", default="first", help="first | last | run name | index")
    parser.add_argument("--data", default=None, help="re-validate each ONNX on this data YAML for mAP")
    parser.add_argument(
        "--map-engine",
        default=None,
        metavar="NAME",
        help="with --data: engine that runs the re-validation, onnxruntime | openvino | deepsparse "
        "(default onnxruntime); each row's own file runs",
    )
    parser.add_argument("--no-export", action="store_true", help="do not export runs that lack an .onnx file")
    parser.add_argument("--out", default=None, help="write the Markdown table here (e.g. docs/results.md)")
    parser.add_argument("--json", default=None, help="write all numbers as JSON here")
    parser.add_argument("--plot", default=None, help="write the mAP vs. speed-up plot here (PNG)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from sparseyolo.analysis.report import build_report
    from sparseyolo.analysis.report_output import pick_baseline, plot_report, report_json, report_notes, report_table
    from sparseyolo.cli.benchmark import check_positive
    from sparseyolo.runtime.engines import parse_engines
    from sparseyolo.utils.io import atomic_write_text

    check_positive(args)
    engines = parse_engines(args.engines)
    map_engine = None
    if args.map_engine:
        from sparseyolo.utils.errors import SparseYoloError

        names = parse_engines(args.map_engine)  # unknown names list close matches
        if len(names) != 1:
            raise SparseYoloError(f"--map-engine takes one engine, got {args.map_engine!r}")
        map_engine = names[0]
        if not args.data:
            raise SparseYoloError(f"--map-engine {map_engine} needs --data (the dataset to re-validate on)")
    pick_baseline([SimpleNamespace(name=Path(d).name, dir=Path(d)) for d in args.runs], args.baseline)  # fail early
    runs = build_report(
        args.runs,
        engines,
        img=args.img,
        batch_size=args.batch_size,
        threads=args.threads,
        time_s=args.time,
        warmup_s=args.warmup,
        export=not args.no_export,
        data=args.data,
        progress=not args.quiet,
        map_engine=map_engine,
    )
    base = pick_baseline(runs, args.baseline)
    text = report_table(runs, engines, base) + "\n\n" + report_notes(runs, engines, base) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"table written to {args.out}")
    if args.json:
        atomic_write_text(args.json, json.dumps(report_json(runs, engines, base), indent=2))
    if args.plot:
        print(f"plot written to {plot_report(runs, engines, base, args.plot)}")
    return 0
