"""Atomic file writes: a crash never leaves a half-written checkpoint or results file.

Every write goes to a hidden temporary file in the destination folder (``.NAME.XXXX.tmp``), is
fsynced, then renamed over the destination with ``os.replace``: readers see the old file or the
new one, never a mix. A failed write removes its temporary file; a process killed mid-write
(SIGKILL, power cut) can leave one behind, never a half-written file under the final name.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparseyolo.utils.errors import SparseYoloError

# errno values that mean "the disk (or the user's quota) is full"
_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


class DiskFullError(SparseYoloError, OSError):
    """A write failed because the disk or quota is full; the destination file was left as it was.

    Both a :class:`SparseYoloError` (the CLI prints one line) and an :class:`OSError` (``errno``
    and ``filename`` are set) so that code catching either keeps working.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, code: int = errno.ENOSPC):
        super().__init__(message)
        self.errno, self.strerror, self.filename = (
            code,
            _FULL.get(code, os.strerror(code)),
            (str(path) if path is not None else None),
        )

    def __str__(self) -> str:  # OSError would print "[Errno 28] ..." instead of the message
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return type(self), (str(self), self.filename, self.errno)


def disk_full_errno(exc: BaseException | None) -> int | None:
    """``ENOSPC`` / ``EDQUOT`` if ``exc`` or an exception it was raised from is a full-disk error.

    ``torch.save`` to a buffered file reports a full disk as a ``RuntimeError`` ("unexpected pos")
    whose ``__context__`` is the ``OSError``, so the whole chain is searched.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        # fsync the directory so the rename itself survives a power cut
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        code = disk_full_errno(e) if isinstance(e, Exception) and not isinstance(e, DiskFullError) else None
        if code is not None:
            kept = f"the previous {path.name} is intact" if existed else f"{path.name} was not written"
            raise DiskFullError(f"{_FULL[code]} while writing {path}; {kept}", path, code) from e
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic_write(path, lambda f: f.write(text), "w")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    import torch

    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def increment_path(path: str | os.PathLike, exist_ok: bool = False, mkdir: bool = True) -> Path:
    """``runs/train/exp`` -> ``exp``, ``exp2``, ``exp3``... (first free name) unless ``exist_ok``.

    With ``mkdir`` (the default) the folder is claimed atomically: ``mkdir`` without ``exist_ok``
    either creates it or fails because it exists, so two processes started at once with the same
    ``--project/--name`` get two different folders. Without ``mkdir`` the name is only a guess
    that another process may take before the caller creates it.
    """
    path = Path(path)
    if exist_ok:
        if mkdir:
            path.mkdir(parents=True, exist_ok=True)
        return path
    if not mkdir:
        n = 2
        candidate = path
        while candidate.exists():
            candidate, n = Path(f"{path}{n}"), n + 1
        return candidate
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = path if n == 1 else Path(f"{path}{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
