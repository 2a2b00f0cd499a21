"""``sparseyolo analyze``: per-layer parameters, sparsity, FLOPs and quantization; optional one-shot
pruning sensitivity with a suggested SparseML-format recipe."""

from __future__ import annotations

import argparse

from sparseyolo.cli.common import add_img_hw_argument

HELP = "per-layer sparsity / FLOPs / quantization of a .pt or .onnx model; --sensitivity suggests a pruning recipe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, metavar="W.pt|W.onnx", help="checkpoint or ONNX file")
    parser.add_argument("--weights", default=None, help="same as the positional argument")
    parser.add_argument("--cfg", default=None, help="model config for Darknet .weights")
    add_img_hw_argument(parser, "input size for FLOPs: one value or H W (default 512, or an ONNX model's static size)")
    parser.add_argument("--save-dir", default=None, help="output folder (default runs/analyze/expN)")
    parser.add_argument("--no-plot", action="store_true", help="skip the sparsity bar chart")
    s = parser.add_argument_group("pruning sensitivity (.pt only)")
    s.add_argument("--sensitivity", action="store_true", help="prune each layer alone and measure the score drop")
    s.add_argument("--data", default=None, help="data YAML whose val split scores the model")
    s.add_argument("--sens-images", type=int, default=64, help="validation images used per score")
    s.add_argument(
        "--sens-levels", type=float, nargs="+", default=[0.4, 0.6, 0.75, 0.85, 0.95], help="sparsities tried per layer"
    )
    s.add_argument("--sens-metric", default="mAP50", choices=["mAP50", "mAP50-95", "fitness"], help="score")
    s.add_argument(
        "--sens-tolerance",
        type=float,
        default=0.05,
        help="relative score drop a layer may cause at its suggested sparsity",
    )
    s.add_argument("--sens-min-params", type=int, default=0, help="skip layers with fewer weights")
    s.add_argument("--batch-size", type=int, default=16, help="validation batch size")
    s.add_argument("--epochs", type=int, default=300, help="num_epochs of the suggested recipe")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sparseyolo.analysis.layers import analyze_module, analyze_onnx
    from sparseyolo.analysis.layers_output import analysis_table, save_analysis, summary_line
    from sparseyolo.cli.benchmark import parse_img
    from sparseyolo.runtime.loading import load_torch_model
    from sparseyolo.utils.errors import SparseYoloError
    from sparseyolo.utils.io import increment_path

    spec = args.model or args.weights
    if not spec:
        raise SparseYoloError("give a model: sparseyolo analyze W.pt|W.onnx")
    img = parse_img(args.img)
    path = Path(spec)
    if args.sensitivity and path.suffix.lower() == ".onnx":
        raise SparseYoloError(f"{path}: --sensitivity needs a PyTorch checkpoint (.pt), not ONNX")
    if args.sensitivity and not args.data:
        raise SparseYoloError("--sensitivity needs --data D.yaml (its val split scores each pruned model)")
    model = None
    if path.suffix.lower() == ".onnx":
        analysis = analyze_onnx(path, img)
    else:
        model, _ = load_torch_model(spec, cfg=args.cfg)
        analysis = analyze_module(model, img or (512, 512), source=str(spec))
    save_dir = Path(args.save_dir) if args.save_dir else increment_path("runs/analyze/exp")
    files = save_analysis(analysis, save_dir, plot=not args.no_plot)
    print(analysis_table(analysis))
    print("\n" + summary_line(analysis))
    print(f"results saved to {save_dir} ({', '.join(p.name for p in files.values())})")
    if args.sensitivity:
        from sparseyolo.cli.sensitivity import run_sensitivity

        run_sensitivity(model, args, save_dir, img or (512, 512))
    return 0
