"""Stage bookkeeping for the demo: headings, timing, and turning any failure into a clear error
that names the stage (a :class:`DemoStageError`, printed by the CLI without a traceback)."""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from sparseyolo.utils.errors import SparseYoloError

RULE = "=" * 78


class DemoStageError(SparseYoloError):
    """A demo stage failed; the message names the stage and the cause."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage '{stage}' failed: {message}")
        self.stage = stage


class StageRunner:
    """Prints ``[i/n] title`` headings, times each stage, and wraps failures in :class:`DemoStageError`.

    Unexpected exceptions (bugs, out-of-memory, ...) also stop the demo with the stage's name; their
    traceback goes to ``error_log`` so the console stays readable.
    """

    def __init__(self, total: int, error_log: Path, echo=print):
        self.total, self.error_log, self.echo = total, Path(error_log), echo
        self.index = 0
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, key: str, title: str) -> Iterator[None]:
        self.index += 1
        self.echo(f"\n{RULE}\n[{self.index}/{self.total}] {title}\n{RULE}", flush=True)
        t0 = time.perf_counter()
        try:
            yield
        except DemoStageError:
            raise
        except SparseYoloError as e:
            raise DemoStageError(key, str(e)) from e
        except Exception as e:  # noqa: BLE001 - any failure must name the stage, never pass silently
            self.error_log.parent.mkdir(parents=True, exist_ok=True)
            self.error_log.write_text(traceback.format_exc())
            raise DemoStageError(key, f"{type(e).__name__}: {e} (traceback in {self.error_log})") from e
        self.times[key] = time.perf_counter() - t0
        self.echo(f"[{self.index}/{self.total}] {key}: done in {format_seconds(self.times[key])}", flush=True)


def format_seconds(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{s:.1f}s"
