#!/usr/bin/env python
"""Where an int8 YOLO's first conv puts its time on ONNX Runtime, and what ONNX Runtime's own graph
rewrites do to a float first conv.

Builds a random-weight model (speed depends on the layer widths only), thins every prunable channel
group by each ``--fractions`` value (the lowest-L1 channels, kept counts multiples of 8), exports it
int8 twice (the first conv in int8, and in float), and times every file on ONNX Runtime interleaved,
``--rounds`` rounds (every other one in reverse order), with the default session options and with
``QDQPropagationTransformer`` disabled. Prints each file's median latency, the ratio to the dense FP32
file, and the first conv's share of the int8-stem file's time (ONNX Runtime's profiler).

    python bench/int8_stem.py --cfg yolov3-tiny --img 416 --fractions 0 0.3 0.5 --threads 2

Why: ONNX Runtime's int8 conv runs a 3-channel input slowly, so the first conv is a fixed cost that
channel pruning does not shrink. A float first conv avoids it. Before stop 38 ONNX Runtime's QDQ
propagation then moved the next layer's QuantizeLinear in front of the MaxPool, which ran as a slow
uint8 MaxPool on the full-size map; the export now runs that MaxPool before the activation
(``exporters/pool_order.py``), which stops the propagation, so the rows with ``QDQPropagationTransformer``
off should now time like the default ones. Findings: docs/quantization.md, "ONNX Runtime: the first
conv", and docs/results.md (stops 37 and 38).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sparseyolo.analysis.recipe_suggest import prunable_groups, thinned_copy  # noqa: E402
from sparseyolo.analysis.recipe_suggest_timing import export_variant  # noqa: E402
from sparseyolo.models.yolo import build_model  # noqa: E402
from sparseyolo.runtime.sessions import ort_session  # noqa: E402
from sparseyolo.sparsity.channel_graph import trace_channel_groups  # noqa: E402
from sparseyolo.utils.errors import run_script  # noqa: E402
from sparseyolo.utils.system import machine_line  # noqa: E402

NO_PROPAGATION = ("QDQPropagationTransformer",)


def time_ms(sess, x: np.ndarray, seconds: float) -> float:
    feed = {sess.get_inputs()[0].name: x}
    end = time.perf_counter() + max(0.5, seconds / 4)  # warm-up
    while time.perf_counter() < end:
        sess.run(None, feed)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def first_conv_share(path: Path, threads: int, x: np.ndarray, runs: int = 20) -> float:
    """The fraction of kernel time spent in the first conv node (by ONNX Runtime's profiler)."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = ort_session(path, threads, profile_prefix=str(Path(tmp) / "p"))
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    spent: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            spent["stem" if e["name"].startswith("/model.0/") else "rest"] += e["dur"]
    return spent["stem"] / max(1, sum(spent.values()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="yolov3-tiny")
    p.add_argument("--img", type=int, default=416)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--time", type=float, default=3.0, help="seconds per file and round")
    p.add_argument(
        "--save-dir",
        type=Path,
        default=None,
        help="keep the ONNX files here (e.g. for `sparseyolo benchmark --engine openvino`)",
    )
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = build_model(args.cfg, nc=3).eval()
    graph = trace_channel_groups(model)
    groups = prunable_groups(model, graph)
    x = np.random.default_rng(0).random((1, 3, args.img, args.img), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.save_dir or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        files = {"dense FP32": (export_variant(model, out / "dense_fp32.onnx", args.img, False, "onnxruntime"), ())}
        for f in args.fractions:
            thin = thinned_copy(model, graph, {g.group: f for g in groups}, groups, 8) if f > 0 else model
            for stem_int8 in (True, False):
                name = f"{f:.0%} channels, int8, first conv {'int8' if stem_int8 else 'float'}"
                path = export_variant(
                    thin,
                    out / f"cut{round(100 * f)}_first_conv_{'int8' if stem_int8 else 'float'}.onnx",
                    args.img,
                    True,
                    "onnxruntime",
                    stem_int8,
                )
                files[name] = (path, ())
                files[name + f", {NO_PROPAGATION[0]} off"] = (path, NO_PROPAGATION)
        timed: dict[str, list[float]] = {k: [] for k in files}
        names = list(files)
        for r in range(args.rounds):
            for name in names[:: -1 if r % 2 else 1]:
                path, disabled = files[name]
                timed[name].append(time_ms(ort_session(path, args.threads, disabled_optimizers=disabled), x, args.time))
        base = statistics.median(timed["dense FP32"])
        print(f"\n{machine_line()}; onnxruntime, {args.threads} threads, {args.img} px, batch 1")
        print(f"{args.rounds} interleaved rounds of {args.time:g} s per file; medians of the rounds' p50 latencies\n")
        print("| file | ms | vs dense FP32 | first conv's share |")
        print("|---|---|---|---|")
        for name in names:
            path, disabled = files[name]
            ms = statistics.median(timed[name])
            share = "" if disabled else f"{first_conv_share(path, args.threads, x):.0%}"
            print(f"| {name} | {ms:.2f} | {base / ms:.2f}x | {share} |")
    return 0


if __name__ == "__main__":
    run_script(main, "bench/int8_stem.py")
