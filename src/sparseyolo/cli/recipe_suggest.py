"""``sparseyolo recipe suggest``: a pruning recipe (channels, and weight sparsity where it pays) for a
speed-up target on the engine you deploy to, and ``--verify RUN_DIR`` to compare the predicted speed-up
with the trained model's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparseyolo.cli.common import ENGINE_CHOICES

SUGGEST_HELP = "suggest a pruning recipe that meets --target-speedup on --engine (measured, not guessed)"


def add_suggest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, help="the trained dense model (.pt) to prune")
    p.add_argument("--data", default=None, help="data YAML: the val images score each pruned variant")
    p.add_argument("--engine", default="onnxruntime", help=f"the engine you deploy to: {ENGINE_CHOICES}")
    p.add_argument("--target-speedup", type=float, default=2.0, help="images/s vs. the dense FP32 model")
    p.add_argument("--int8", action="store_true", help="the deployed model is int8: time int8 variants, add QAT")
    p.add_argument("--img", type=int, default=416, help="input size the latency is measured at")
    p.add_argument(
        "--weight-sparsity",
        choices=("auto", "on", "off"),
        default="auto",
        help="also choose per-layer weight sparsity (unstructured; [1, 4] blocks with --int8): auto = only if the "
        "engine runs a model with 80%% zeros at least 1.1x faster (DeepSparse does; ONNX Runtime, OpenVINO do not)",
    )
    p.add_argument("--round-to", type=int, default=8, help="kept channel counts are multiples of this")
    p.add_argument("--epochs", type=int, default=40, help="epochs of the suggested recipe")
    p.add_argument("--score-images", type=int, default=64, help="validation images per sensitivity score")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: the engine's choice)")
    p.add_argument("--time", type=float, default=1.0, help="seconds per variant and round (plans: 2x, 4 rounds)")
    p.add_argument("--save-dir", default=None, help="output folder (default runs/suggest/expN)")
    p.add_argument("--verify", default=None, metavar="RUN_DIR", help="time a run trained with a suggested recipe")
    p.add_argument("--suggestion", default=None, help="with --verify: the suggest.json (default: beside the recipe)")


def run_suggest(args: argparse.Namespace) -> int:
    from sparseyolo.analysis.recipe_suggest import Suggestion, suggest
    from sparseyolo.analysis.recipe_suggest_output import recipe_text
    from sparseyolo.analysis.recipe_suggest_verify import find_suggestion, verify
    from sparseyolo.analysis.scoring import detection_scorer
    from sparseyolo.runtime.engines import get_engine
    from sparseyolo.runtime.loading import load_torch_model
    from sparseyolo.utils.errors import SparseYoloError
    from sparseyolo.utils.io import atomic_write_text, increment_path

    if args.verify:
        path = Path(args.suggestion) if args.suggestion else find_suggestion(Path(args.verify))
        s = Suggestion.from_dict(json.loads(Path(path).read_text()))
        v = verify(args.verify, s, threads=args.threads, time_s=max(2 * args.time, 2.5))
        print(f"{s.engine}{' int8' if s.int8 else ''} at {s.img} px, vs. the dense FP32 model ({v.fp32_ms:.1f} ms):")
        print(
            f"  predicted speed-up {v.predicted_speedup:.2f}x, measured {v.measured_speedup:.2f}x "
            f"({v.trained_ms:.1f} ms; medians of {len(v.round_speedups)} interleaved rounds, which read "
            f"{min(v.round_speedups):.2f}-{max(v.round_speedups):.2f}x); prediction error {v.error:+.1%}"
        )
        return 0
    if not args.weights or not args.data:
        raise SparseYoloError("recipe suggest needs --weights (the trained dense model) and --data (to score on)")
    ok, why = get_engine(args.engine).available()
    if not ok:
        raise SparseYoloError(f"--engine {args.engine}: {why}")
    model, _ = load_torch_model(args.weights)
    score = detection_scorer(args.data, args.img, args.score_images)
    s = suggest(
        model,
        score,
        str(args.weights),
        engine=args.engine,
        target_speedup=args.target_speedup,
        int8=args.int8,
        img=args.img,
        round_to=args.round_to,
        threads=args.threads,
        time_s=args.time,
        weight_sparsity=args.weight_sparsity,
    )
    save_dir = Path(args.save_dir) if args.save_dir else increment_path(Path("runs/suggest") / "exp")
    save_dir.mkdir(parents=True, exist_ok=True)
    recipe = atomic_write_text(save_dir / "recipe.md", recipe_text(s, epochs=args.epochs))
    atomic_write_text(save_dir / "suggest.json", json.dumps(s.to_dict(), indent=2))
    removed = [c for c in s.groups if c.fraction]
    sparse = [x for x in s.layers if x.sparsity]
    weights_note = f"{len(sparse)} of {len(s.layers)} weights made sparse ({s.mask_type}); " if s.layers else ""
    print(
        f"predicted {s.predicted_speedup:.2f}x vs. the dense FP32 model on {s.engine} (target {s.target_speedup:g}x); "
        f"{len(removed)} of {len(s.groups)} channel groups thinned; {weights_note}predicted score loss "
        f"{s.predicted_score_loss:.3f} of {s.baseline_score:.3f}"
    )
    print(f"recipe: {recipe}\nsuggest.json: {save_dir / 'suggest.json'}")
    print(
        f"train it: sparseyolo train --weights {args.weights} --data {args.data} --img {args.img} "
        f"--hyp pruned{'_quantized' if s.int8 else ''} --recipe {recipe}"
    )
    return 0
