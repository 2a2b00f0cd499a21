#!/usr/bin/env python
"""Does this CPU's DeepSparse (or any engine) run sparse weights faster than dense ones?

Builds two plain conv stacks that differ only in their weights: dense, and 90% unstructured zeros
(smallest magnitudes removed), then benchmarks both interleaved on each engine and prints the
sparse/dense ratio. No YOLO, no export, no training: if an engine shows no gain here, it will show
none on a pruned detector either, and the cause is the engine on this hardware, not the model.

    python bench/sparse_kernel_probe.py [--engines onnxruntime,deepsparse] [--sparsity 0.9] [--time 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparseyolo.timing import benchmark, parse_engines  # noqa: E402
from sparseyolo.utils.errors import run_script  # noqa: E402


def conv_stack(path: Path, sparsity: float, channels: int, size: int, layers: int, kernel: int) -> None:
    """``layers`` x (Conv kxk + Relu) on a [1, C, size, size] input, opset 13 (DeepSparse 1.8 loads it)."""
    rng = np.random.default_rng(0)  # same weights for both files; only the zeros differ
    nodes, inits, x = [], [], "images"
    for i in range(layers):
        w = rng.standard_normal((channels, channels, kernel, kernel)).astype(np.float32)
        if sparsity > 0:
            w[np.abs(w) < np.quantile(np.abs(w), sparsity)] = 0.0
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        p = kernel // 2
        nodes += [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[p, p, p, p]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes,
        "conv_stack",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default="onnxruntime,deepsparse")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--kernels", type=int, nargs="+", default=[3, 1], help="conv kernel sizes to probe")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    args = p.parse_args(argv)
    engines = parse_engines([args.engines])
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.kernels:
            dense, sparse = Path(tmp, f"dense_k{k}.onnx"), Path(tmp, f"sparse_k{k}.onnx")
            conv_stack(dense, 0.0, args.channels, args.size, args.layers, k)
            conv_stack(sparse, args.sparsity, args.channels, args.size, args.layers, k)
            flops = 2 * args.layers * args.channels**2 * k * k * args.size**2
            print(
                f"\n## {args.layers} x Conv {k}x{k}, {args.channels} ch, {args.size}x{args.size} "
                f"({flops / 1e9:.1f} GFLOP dense), {args.sparsity:.0%} zeros, {args.threads} threads"
            )
            results = benchmark(
                [dense, sparse], engines, threads=args.threads, time_s=args.time, warmup_s=args.warmup, progress=False
            )
            for eng in engines:
                rows = [r for r in results if r.engine == eng]
                if any(r.status != "ok" for r in rows):
                    print(f"  {eng:12s} {rows[0].status}: {rows[0].message or rows[1].message}")
                    continue
                d, s = rows
                print(
                    f"  {eng:12s} dense {d.images_per_s:7.2f} it/s ({flops * d.images_per_s / 1e9:5.0f} GFLOP/s)"
                    f"  sparse {s.images_per_s:7.2f} it/s  sparse/dense {s.images_per_s / d.images_per_s:5.2f}x"
                )
    return 0


if __name__ == "__main__":
    run_script(main, "sparse_kernel_probe.py")
