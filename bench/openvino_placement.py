"""Does OpenVINO run our QDQ file faster with NNCF-style quantizer placement?

Writes ``W.openvino.onnx`` (``sparseyolo.exporters.openvino_form``: the conv-output and MaxPool-output
Q/DQ pairs bypassed) next to each QDQ file given, prints what OpenVINO compiles each file to (separate
``Subgraph`` kernels are quantizers it could not fold; u8 vs f32 convolutions), then benchmarks the
files interleaved on OpenVINO (and ONNX Runtime with ``--engines``). Add an NNCF file to compare.

    python bench/openvino_placement.py fp32.onnx best.int8.onnx [nncf.onnx] --time 30
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path


def runtime_summary(path: Path, threads: int = 1) -> dict[str, int]:
    """Counts of OpenVINO's executed layers: ``Subgraph`` kernels and convolutions by precision."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": threads})
    counts: collections.Counter[str] = collections.Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind == "Subgraph":
            counts["subgraphs"] += 1
        elif kind == "Convolution":
            counts[f"conv {info['runtimePrecision'].astype(str)}"] += 1
    return dict(sorted(counts.items()))


def write_openvino_form(path: Path) -> Path | None:
    """``W.openvino.onnx`` for a QDQ file ``W.onnx`` (None for other files)."""
    import onnx

    from sparseyolo.exporters.openvino_form import OPENVINO_SUFFIX, openvino_form

    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    if "QuantizeLinear" not in ops or path.name.endswith(OPENVINO_SUFFIX):
        return None
    removed = openvino_form(model)
    out = path.with_name(path.stem + OPENVINO_SUFFIX)
    onnx.save(model, str(out))
    print(f"{out.name}: {removed} Q/DQ pairs bypassed")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="ONNX files: fp32 first, then QDQ int8 (and NNCF) files")
    p.add_argument("--engines", default="openvino", help="engines to time (default: openvino)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time", type=float, default=20.0, help="measured seconds per model and engine")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    files = list(args.models)
    for path in args.models:
        made = write_openvino_form(path)
        if made is not None:
            files.append(made)
    for path in files:
        print(f"{path.name}: {runtime_summary(path)}")

    from sparseyolo.cli.main import main as cli

    cmd = ["benchmark", *map(str, files), "--engines", args.engines, "--threads", str(args.threads)]
    cmd += ["--time", str(args.time), "--warmup", str(args.warmup), "--exact-file", "--quiet"]
    if args.json:
        cmd += ["--json", str(args.json)]
    return cli(cmd)


if __name__ == "__main__":
    sys.exit(main())
