"""Options that several commands share, defined once so their spelling and help agree."""

from __future__ import annotations

import argparse

ENGINE_CHOICES = "onnxruntime | openvino | deepsparse"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The help formatter of every ``sparseyolo`` command (``cli.main`` sets it on each subparser).

    Appends "(default: X)" to an option's help only when it tells the reader something: not for
    None / False / empty / SUPPRESS defaults, not for on/off flags, and not when the help text already
    says what the default is (it mentions "default"), so no help line reads
    "(default 1 or the model's static batch) (default: None)". A description or epilog written with
    line breaks keeps them; one without is wrapped to the terminal as usual.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if "default" in help.lower() or not informative_default(action):
            return help
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return help + " (default: %(default)s)"
        return help

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return super()._fill_text(text, width, indent)  # the author's line breaks
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def informative_default(action: argparse.Action) -> bool:
    """Whether "(default: X)" would tell the reader anything about ``action``."""
    d = action.default
    if action.nargs == 0 or d is None or d is False or d is argparse.SUPPRESS:
        return False
    return not (isinstance(d, str | list | tuple | dict) and len(d) == 0)


def add_engines_argument(parser: argparse.ArgumentParser, dest: str = "engine") -> None:
    """``--engine`` / ``--engines``, repeatable or comma-separated; parse with ``parse_engines``."""
    parser.add_argument(
        "--engine",
        "--engines",
        action="append",
        dest=dest,
        metavar="NAME",
        help=f"{ENGINE_CHOICES}; repeat or comma-separate (default: onnxruntime)",
    )


def add_img_hw_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--img`` / ``--img-size``: one value (square) or H W, default None; parse with ``parse_img``."""
    parser.add_argument("--img", "--img-size", nargs="+", type=int, default=None, dest="img", metavar="PX", help=help)


def add_timing_arguments(parser: argparse.ArgumentParser, per: str) -> None:
    """``--threads``, ``--time`` and ``--warmup`` of an interleaved benchmark (``per``: "model", "run")."""
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per engine (default: engine's choice)")
    parser.add_argument("--time", type=float, default=10.0, help=f"measured seconds per {per} and engine")
    parser.add_argument("--warmup", type=float, default=2.0, help=f"warm-up seconds per {per} and engine")


def flags(args: argparse.Namespace) -> dict:
    """A command's flags as keyword arguments of its Python API function (argparse internals dropped)."""
    return {k: v for k, v in vars(args).items() if k != "command" and not k.startswith("_")}
