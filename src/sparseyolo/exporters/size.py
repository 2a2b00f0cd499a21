"""Size on disk: raw bytes and gzip -9 compressed bytes (what a download or a container layer costs).

Pruned weights compress well (runs of zeros), so the compressed size is the honest "size on disk"
figure for a sparse model, as in the seed's results table.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

from sparseyolo.utils.errors import SparseYoloError


@dataclass(frozen=True)
class FileSize:
    path: Path
    raw: int
    gzip: int

    @property
    def ratio(self) -> float:
        return self.raw / self.gzip if self.gzip else float("inf")


class _CountingSink:
    """File-like object that only counts the bytes written to it."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def gzip_size(path: str | Path, level: int = 9) -> int:
    """Bytes of ``path`` compressed with gzip at ``level`` (streamed: no copy in memory or on disk)."""
    sink = _CountingSink()
    with (
        open(path, "rb") as src,
        gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=sink, mtime=0) as gz,
    ):
        shutil.copyfileobj(src, gz, 1 << 20)
    return sink.n


def file_size(path: str | Path) -> FileSize:
    """Raw and gzip -9 size of one file."""
    path = Path(path)
    if not path.is_file():
        raise SparseYoloError(f"{path}: no such file")
    return FileSize(path, path.stat().st_size, gzip_size(path))


def human(n: int) -> str:
    """``12345678`` -> ``'11.8 MB'`` (binary units, like du -h)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover


def size_table(paths: list[str | Path]) -> str:
    """A small text table: file, size, gzip -9 size, compression ratio."""
    rows = [file_size(p) for p in paths]
    header = ("File", "Size", "gzip -9", "Ratio")
    body = [(r.path.name, human(r.raw), human(r.gzip), f"{r.ratio:.2f}x") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in body]
    return "\n".join(lines)
