"""User-facing errors.

Anything raised as a :class:`SparseYoloError` is a problem with the user's input (a file, a key,
a flag). The CLI prints its message without a traceback; library users can catch it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn


class SparseYoloError(Exception):
    """An error caused by user input, with a message that says what and where."""


class ConfigError(SparseYoloError):
    """A malformed config, recipe, data YAML or hyperparameter file."""


class DataError(SparseYoloError):
    """Unusable dataset content (missing images, no labels, ...)."""


class WeightsError(SparseYoloError):
    """A weights file or checkpoint that cannot be loaded."""


class DownloadError(SparseYoloError):
    """A download that failed, was cut short, or had the wrong checksum."""


def where(path: object, line: int | None = None, key: str | None = None) -> str:
    """Format a location like ``file.yaml:12 (key 'lr0')`` for error messages."""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if key is not None:
        text += f" (key {key!r})"
    return text


def run_script(main: Callable[[], int | None], prog: str) -> NoReturn:
    """Entry point of a stand-alone script (``bench/*.py``): exit with ``main()``'s code, or print a
    :class:`SparseYoloError` as ``prog: error: message`` and exit 2, as the CLI does."""
    import sys

    try:
        code = main()
    except SparseYoloError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code or 0)
