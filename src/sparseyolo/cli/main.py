"""``sparseyolo <command>``: dispatches to ``sparseyolo.cli.<command>``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Command modules import heavy dependencies (torch, onnx, ...) inside ``run`` so that
``sparseyolo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from sparseyolo import __version__
from sparseyolo.cli.common import HelpFormatter
from sparseyolo.utils.errors import SparseYoloError

# command name -> module under sparseyolo.cli
COMMANDS = {
    "train": "train",
    "val": "val",
    "detect": "detect",
    "export": "export",
    "benchmark": "benchmark",
    "analyze": "analyze",
    "recipe": "recipe",
    "report": "report",
    "data": "data",
    "demo": "demo",
}


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    """One help formatter for a command and its own subcommands (``data voc2yolo``), whatever a command
    module set: every ``--help`` shows defaults the same way."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                _use_formatter(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseyolo",
        description="Train, sparsify, quantize, export and benchmark YOLOv3-family detectors.",
    )
    parser.add_argument("--version", action="version", version=f"sparseyolo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, module_name in COMMANDS.items():
        # every command is part of the package: a missing module is a broken installation, and must
        # fail here rather than leave the command out of --help as if it did not exist
        module = importlib.import_module(f"sparseyolo.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter)
        module.add_arguments(p)
        _use_formatter(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SparseYoloError as e:
        print(f"sparseyolo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparseyolo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
