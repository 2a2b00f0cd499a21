"""NNCF's post-training int8 of one of our FP32 ONNX exports, on the same calibration images as
``sparseyolo export --int8``: the peer figure that docs/quantization.md compares our PTQ with.

NNCF is not a dependency of sparseyolo. Run this in a separate venv that holds nncf, torch==2.13.0 and
sparseyolo itself (for the calibration loader, so both tools see the same letterboxed images):

    python -m venv /tmp/venv-nncf
    /tmp/venv-nncf/bin/pip install nncf openvino torch==2.13.0 -e .
    /tmp/venv-nncf/bin/python bench/nncf_ptq.py best.onnx --data data.yaml --img 416 --out best.nncf.onnx
    sparseyolo val --weights best.nncf.onnx --data data.yaml --img 416

By default the Detect head's convolutions stay in float, as our PTQ leaves them (``--quantize-head``
quantizes them too). Prints the time ``nncf.quantize`` took.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path


def detect_convs(model) -> list[str]:  # noqa: ANN001 - an onnx.ModelProto
    """Names of the Conv nodes of the last module (the Detect head: ``/model.N/m.i/Conv``)."""
    index = {}
    for node in model.graph.node:
        m = re.match(r"/model\.(\d+)/", node.name)
        if node.op_type == "Conv" and m:
            index[node.name] = int(m.group(1))
    if not index:
        raise SystemExit("no /model.N/ Conv nodes: not a sparseyolo export; pass --quantize-head")
    last = max(index.values())
    return [name for name, i in index.items() if i == last]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", type=Path, help="FP32 ONNX file written by sparseyolo export")
    p.add_argument("--data", required=True, help="data YAML of the calibration images")
    p.add_argument("--img", type=int, default=640, help="the file's square input size")
    p.add_argument("--calib-images", type=int, default=128)
    p.add_argument("--calib-split", default="train", choices=["train", "val", "test"])
    p.add_argument("--preset", default="mixed", choices=["mixed", "performance"])
    p.add_argument("--quantize-head", action="store_true", help="quantize the Detect convs too")
    p.add_argument("--out", type=Path, default=None, help="output file (default: W.nncf.onnx)")
    args = p.parse_args(argv)

    import nncf
    import onnx

    from sparseyolo.exporters.ptq import calibration_loader

    model = onnx.load(str(args.onnx))
    input_name = model.graph.input[0].name
    loader = calibration_loader(args.data, args.img, args.calib_images, split=args.calib_split, batch_size=1)
    dataset = nncf.Dataset(loader, lambda batch: {input_name: (batch[0].float() / 255.0).numpy()})
    ignored = nncf.IgnoredScope() if args.quantize_head else nncf.IgnoredScope(names=detect_convs(model))
    preset = nncf.QuantizationPreset.MIXED if args.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    start = time.perf_counter()
    quantized = nncf.quantize(model, dataset, preset=preset, subset_size=len(loader.dataset), ignored_scope=ignored)
    seconds = time.perf_counter() - start
    out = args.out or args.onnx.with_suffix(".nncf.onnx")
    onnx.save(quantized, str(out))
    n_q = sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    print(
        f"{out}: nncf {nncf.__version__} preset {args.preset}, {len(loader.dataset)} calibration images, "
        f"{n_q} QuantizeLinear, nncf.quantize took {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
