"""``sparseyolo recipe <action>``: tools for SparseML-format recipes.

``check``: a dry run of a recipe on a model, without data (the work is done by
:mod:`sparseyolo.analysis.recipe_check`). ``suggest``: a recipe for a speed-up target, measured on
the engine (:mod:`sparseyolo.analysis.recipe_suggest`). Actions are listed in :data:`ACTIONS`; each has a help
line, an ``add_arguments`` and a ``run``, like the top-level commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

from sparseyolo.cli.recipe_suggest import SUGGEST_HELP, add_suggest_arguments, run_suggest

HELP = (
    "recipe tools: check (dry-run a recipe on a model: schedule, phases, sparsity, FLOPs), "
    "suggest (a pruning recipe for a speed-up target on your engine)"
)

CHECK_HELP = (
    "dry-run a recipe on a model without data: what each modifier matches, the learning rate, target "
    "sparsity and phase of every epoch, QAT start, thinning, final sparsity and FLOPs; exits 2 with "
    "train's error for a broken recipe"
)


class Action(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _add_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE", help="recipe: path (.md / .yaml), YAML text, zoo: stub or built-in name")
    p.add_argument(
        "--recipe-args",
        default=None,
        help="recipe variable overrides, as in train: JSON '{\"num_epochs\": 50}' or num_epochs=50,init_lr=0.01",
    )
    p.add_argument("--cfg", default="", help="model name (yolov3, yolov3-spp, yolov3-tiny) or model YAML")
    p.add_argument(
        "--weights",
        default="",
        help="start from these weights instead (checkpoint, Darknet .weights with --cfg, URL or zoo: stub); "
        "a thinned checkpoint keeps its layer widths",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs to step through (default: the recipe's length, which train runs)",
    )
    p.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="optimizer steps per epoch (train: batches per epoch / gradient accumulation); default 100, "
        "stated in the output",
    )
    p.add_argument("--img", "--img-size", nargs="+", type=int, default=[640], metavar="PX", help="FLOPs input: H [W]")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    p.add_argument("--all-epochs", action="store_true", help="one table row per epoch (default: merge unchanged)")
    p.add_argument(
        "--exact-masks",
        action="store_true",
        help="choose pruned weights by magnitude, as training does (slow on large models; the counts, "
        "and so the report, are the same)",
    )
    p.add_argument("--verbose", action="store_true", help="show the library's log lines")


def _run_check(args: argparse.Namespace) -> int:
    import json
    import logging

    from sparseyolo.analysis.recipe_check import check_recipe, load_check_model
    from sparseyolo.analysis.recipe_check_output import format_check
    from sparseyolo.cli.benchmark import parse_img
    from sparseyolo.utils.errors import ConfigError
    from sparseyolo.utils.io import atomic_write_text

    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise ConfigError(f"--steps-per-epoch must be >= 1, got {args.steps_per_epoch}")
    if args.epochs is not None and args.epochs < 0:
        raise ConfigError(f"--epochs must be >= 0, got {args.epochs}")
    img = parse_img(args.img)
    logger = logging.getLogger("sparseyolo")
    level = logger.level
    if not args.verbose:
        logger.setLevel(logging.WARNING)
    try:
        from sparseyolo.recipe import Recipe, parse_recipe_args

        # the recipe first, as train does: a recipe mistake is reported before the model is built
        recipe = Recipe.load(args.recipe, parse_recipe_args(args.recipe_args))
        model, label = load_check_model(args.cfg, args.weights)
        result = check_recipe(
            recipe,
            model,
            steps_per_epoch=args.steps_per_epoch,
            epochs=args.epochs,
            img=img,
            exact_masks=args.exact_masks,
            model_label=label,
            copy_model=False,  # built for this run only
        )
    finally:
        logger.setLevel(level)
    print(format_check(result, all_epochs=args.all_epochs))
    if args.json:
        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=1) + "\n")
        print(f"written: {args.json}")
    return 0


ACTIONS: dict[str, Action] = {
    "check": Action(CHECK_HELP, _add_check_arguments, _run_check),
    "suggest": Action(SUGGEST_HELP, add_suggest_arguments, run_suggest),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recipe_action", metavar="<action>")
    for name, action in ACTIONS.items():
        p = sub.add_parser(
            name, help=action.help, description=action.help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        action.add_arguments(p)
        p.set_defaults(_recipe_run=action.run)


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "_recipe_run", None)
    if action is None:
        from sparseyolo.utils.errors import ConfigError

        raise ConfigError(f"give an action: {', '.join(ACTIONS)} (sparseyolo recipe check --help)")
    return action(args)
