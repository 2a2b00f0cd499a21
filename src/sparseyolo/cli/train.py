"""``sparseyolo train``: train or sparsify (with a SparseML recipe) a YOLOv3-family detector.

Multi-GPU: ``torchrun --nproc_per_node N -m sparseyolo train ... --device 0,1,...``.
"""

from __future__ import annotations

import argparse

HELP = "train a detector, optionally with a pruning / quantization recipe"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--weights",
        default="",
        help="initial weights: checkpoint .pt, Darknet .weights, URL or "
        "zoo: stub; '' trains from scratch (needs --cfg)",
    )
    g.add_argument("--cfg", default="", help="model name (yolov3, yolov3-spp, yolov3-tiny) or model YAML")
    g.add_argument("--data", required=False, default="", help="dataset YAML (train/val/nc/names)")
    g.add_argument(
        "--hyp",
        default="scratch",
        help="hyperparameter YAML path or shipped name: scratch, " "finetune, pruned, pruned_quantized",
    )
    g.add_argument("--recipe", default=None, help="SparseML-format recipe (path, YAML text or zoo: stub)")
    g.add_argument(
        "--teacher",
        default=None,
        help="distillation teacher for a recipe's !DistillationModifier (default: the --weights the run "
        "starts from, e.g. the dense baseline)",
    )
    g.add_argument(
        "--recipe-args",
        default=None,
        help="recipe variable overrides: JSON '{\"num_epochs\": 50}' or num_epochs=50,init_lr=0.01",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=300, help="epochs (a recipe sets its own)")
    g.add_argument("--batch-size", type=int, default=16, help="total batch size over all GPUs")
    g.add_argument(
        "--nbs",
        type=int,
        default=None,
        help="nominal batch size: gradients are accumulated to about this many images per optimizer step. "
        "Default: 64 (as in YOLOv3/v5); with --recipe, the batch size (one step per batch, so mask updates "
        "fall between real optimizer steps on small datasets)",
    )
    g.add_argument(
        "--img-size",
        "--img",
        dest="img_size",
        type=int,
        default=640,
        help="train/val image size (rounded up to a multiple of the max stride)",
    )
    g.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default="SGD")
    g.add_argument("--cos-lr", action="store_true", help="cosine LR schedule (default linear)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="class label smoothing epsilon")
    g.add_argument("--freeze", type=int, default=0, help="freeze the first N layers")
    g.add_argument(
        "--rescale-pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scale the --weights' BatchNorm-followed conv weights to a fresh init's RMS (same "
        "outputs), so SGD moves them as in a scratch run; default: on for Darknet .weights, "
        "whose large weights otherwise barely move, off for checkpoints",
    )
    g.add_argument(
        "--patience", type=int, default=100, help="early stop after N epochs without " "improvement (0 = off)"
    )
    g.add_argument("--seed", type=int, default=0, help="global seed (runs are reproducible per seed)")
    g.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        help="resume the given last.pt, or the most recent one under --project, with the run's own "
        "settings: only hardware and output flags (--device, --workers, --cache, --project, "
        "--noplots, --no-tensorboard, --wandb, --nosave, --save-period) may change; any other "
        "flag that differs from the run's is refused",
    )
    g = p.add_argument_group("hardware and data loading")
    g.add_argument("--device", default="", help="cpu, 0, or 0,1,2,3 (with torchrun)")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm (DDP only)")
    g.add_argument("--workers", type=int, default=8, help="data loader workers (per process)")
    g.add_argument(
        "--cache",
        nargs="?",
        const="ram",
        choices=["ram", "disk"],
        default=None,
        help="cache decoded images in RAM or on disk",
    )
    g.add_argument("--no-amp", dest="amp", action="store_false", help="disable mixed precision on CUDA")
    g = p.add_argument_group("output")
    g.add_argument("--project", default="runs/train", help="parent folder of the runs")
    g.add_argument("--name", default="exp", help="run folder name (auto-incremented: exp, exp2, ...)")
    g.add_argument("--exist-ok", action="store_true", help="reuse an existing run folder")
    g.add_argument("--noval", action="store_true", help="validate only after the final epoch")
    g.add_argument("--nosave", action="store_true", help="save only the final checkpoint")
    g.add_argument("--noplots", action="store_true", help="no plots")
    g.add_argument("--save-period", type=int, default=-1, help="also save epochN.pt every N epochs")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="no TensorBoard logs")
    g.add_argument("--wandb", action="store_true", help="log to Weights & Biases (if installed)")
    for action in p._actions:  # remember which flags the command line gives (for --resume)
        if action.dest not in ("help", argparse.SUPPRESS):
            action.__class__ = _recording(type(action))


_RECORDING: dict[type, type] = {}


def _recording(cls: type) -> type:
    """``cls`` whose call also adds its ``dest`` to ``namespace._given``: argparse calls an action only
    for a flag on the command line, so a flag given with its default value still counts as given."""
    if cls not in _RECORDING:

        def __call__(self, parser, namespace, values, option_string=None):
            namespace._given = set(getattr(namespace, "_given", ())) | {self.dest}
            cls.__call__(self, parser, namespace, values, option_string)

        _RECORDING[cls] = type(f"Recording{cls.__name__}", (cls,), {"__call__": __call__})
    return _RECORDING[cls]


def run(args: argparse.Namespace) -> int:
    import sparseyolo.api as api
    from sparseyolo.cli.common import flags
    from sparseyolo.utils.errors import ConfigError

    options = flags(args)
    if options.get("recipe_args"):
        from sparseyolo.recipe.recipe import parse_recipe_args

        options["recipe_args"] = parse_recipe_args(options["recipe_args"])
    else:
        options["recipe_args"] = {}
    if not options["resume"] and not options["data"]:
        raise ConfigError("train: --data is required (a dataset YAML with train/val/nc/names)")
    # on --resume, only the flags on the command line are compared with the run's saved settings
    api.train(**options, _given=getattr(args, "_given", set()))
    return 0
