#!/usr/bin/env python
"""Acceptance benchmark: YOLOv3-SPP dense vs. pruned vs. pruned-int8 ONNX on every engine, interleaved,
at 512x512 with 2 threads, batch 1 and 8; prints images/s and the ratio to ONNX Runtime dense.

    python bench/speedup.py dense.onnx pruned.onnx pruned_int8.onnx [pruned_int8.qlinear.onnx] \\
        [--b8 dense_b8.onnx pruned_b8.onnx pruned_int8_b8.onnx [pruned_int8_b8.qlinear.onnx]] \\
        [--json bench/speedup.json]

The optional fourth model is the QLinearConv form of the int8 export (the form DeepSparse runs natively).

Exports with a static batch of 1 cannot run batch 8: export with ``--dynamic`` or pass batch-8 exports
with ``--b8``. DeepSparse runs in its own venv (scripts/setup_deepsparse.sh).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")

from sparseyolo.timing import benchmark, parse_engines, results_table  # noqa: E402
from sparseyolo.timing.output import results_json, results_notes  # noqa: E402
from sparseyolo.utils.errors import SparseYoloError, run_script  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "models", nargs="+", metavar="ONNX", help="DENSE PRUNED PRUNED_INT8 [PRUNED_INT8_QLINEAR] ONNX files"
    )
    p.add_argument(
        "--b8",
        nargs="+",
        default=None,
        metavar="ONNX",
        help="batch-8 exports in the same order (default: the same files, which then need a " "dynamic batch)",
    )
    p.add_argument("--engines", default="onnxruntime,openvino,deepsparse", help="comma list; first = ratio base")
    p.add_argument("--img", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--time", type=float, default=10.0, help="measured seconds per model and engine")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--json", default=None, help="write all results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    engines = parse_engines([args.engines])
    labels = ["dense", "pruned", "pruned-int8", "int8-qlinear"]
    for files in (args.models, args.b8):
        if files is not None and len(files) not in (3, 4):
            raise SparseYoloError(
                f"expected 3 or 4 ONNX files (dense, pruned, pruned-int8 [, qlinear]), "
                f"got {len(files)}: {' '.join(files)}"
            )
    if args.b8 is not None and len(args.b8) != len(args.models):
        raise SparseYoloError(f"--b8 needs as many files as the batch-1 list ({len(args.models)})")
    labels = labels[: len(args.models)]
    doc = {}
    for bs in args.batch_sizes:
        models = args.b8 if (bs == 8 and args.b8) else args.models
        print(
            f"\n## batch {bs}, {args.img}x{args.img}, {args.threads} threads "
            f"(x base = images/s / {engines[0]} {labels[0]})\n"
        )
        results = benchmark(
            models,
            engines,
            batch_size=bs,
            img=(args.img, args.img),
            threads=args.threads,
            time_s=args.time,
            warmup_s=args.warmup,
        )
        print(results_table(results))
        if results_notes(results):
            print("\n" + results_notes(results))
        for i, r in enumerate(results):  # engine-major, models in the order given
            if r.status == "ok" and r.ratio is not None:
                print(
                    f"  {labels[i % len(labels)]:12s} {r.engine:12s} "
                    f"{r.images_per_s:8.1f} img/s  {r.ratio:5.2f}x {engines[0]} dense"
                )
        doc[f"batch{bs}"] = json.loads(
            results_json(results, {"batch_size": bs, "img": args.img, "threads": args.threads, "time_s": args.time})
        )
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    run_script(main, "speedup.py")
