"""Options that several commands share, defined once so their spelling and help agree."""

from __future__ import annotations

import argparse

ENGINE_CHOICES = "onnxruntime | openvino | deepsparse"


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
