"""Finding images, pairing them with YOLO label files, checking both, and caching the result.

A label file holds one ``cls cx cy w h`` row per object (normalised to [0, 1]). The checks here
never raise for bad content: a problem image (or row) is recorded in a :class:`Problems` report that
the dataset logs once, as one summary.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sparseyolo.utils.errors import DataError
from sparseyolo.utils.logging import LOGGER

IMG_FORMATS = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm"}
CACHE_VERSION = 1
COORD_TOL = 1e-6  # tolerated overshoot of normalised coordinates from float rounding in label tools

# problem kinds that remove the whole image, and those that only drop a row
IMAGE_PROBLEMS = (
    "missing image",
    "corrupt image",
    "unreadable label file",
    "wrong column count",
    "non-numeric value",
    "coordinate outside [0, 1]",
    "negative class id",
    "class id >= nc",
)
ROW_PROBLEMS = ("duplicate row", "zero-size box")


class Problems:
    """Collects label problems by kind and formats one summary."""

    def __init__(self) -> None:
        self.items: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, what: str) -> None:
        self.items[kind].append(what)

    def extend(self, other: dict[str, list[str]]) -> None:
        for kind, whats in other.items():
            self.items[kind].extend(whats)

    def __bool__(self) -> bool:
        return any(self.items.values())

    def summary(self, max_names: int = 5) -> str:
        parts = []
        for kind in (
            IMAGE_PROBLEMS + ROW_PROBLEMS + tuple(k for k in self.items if k not in IMAGE_PROBLEMS + ROW_PROBLEMS)
        ):
            whats = self.items.get(kind)
            if not whats:
                continue
            unit = "rows dropped" if kind in ROW_PROBLEMS else "images skipped"
            shown = ", ".join(whats[:max_names])
            more = f" and {len(whats) - max_names} more" if len(whats) > max_names else ""
            parts.append(f"{kind} ({len(whats)} {unit}): {shown}{more}")
        return "; ".join(parts)


def img2label_paths(img_paths: list[str]) -> list[str]:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt`` (the last ``/images/`` is replaced)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    out = []
    for p in img_paths:
        head, sep, tail = p.rpartition(sa)
        base = (head + sb + tail) if sep else p
        out.append(os.path.splitext(base)[0] + ".txt")
    return out


def list_images(path: str | os.PathLike | list, problems: Problems) -> list[str]:
    """Image files from a folder (recursive), a .txt list, an image file, or a list of those.

    Entries of a .txt that do not exist are reported as ``missing image``; a missing folder or
    list file raises :class:`DataError` naming it.
    """
    sources = path if isinstance(path, (list, tuple)) else [path]
    files: list[str] = []
    for src in sources:
        p = Path(os.path.expanduser(str(src)))
        if p.is_dir():
            files += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMG_FORMATS and f.is_file())
        elif p.is_file() and p.suffix.lower() == ".txt":
            for n, line in enumerate(p.read_text().splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                f = Path(line)
                if not f.is_absolute():  # relative entries are relative to the list file
                    f = p.parent / f
                f = Path(os.path.normpath(f))
                if f.suffix.lower() not in IMG_FORMATS:
                    problems.add("corrupt image", f"{p.name}:{n} ({f.name}: not an image format)")
                elif not f.is_file():
                    problems.add("missing image", f"{p.name}:{n} ({f})")
                else:
                    files.append(str(f))
        elif p.is_file() and p.suffix.lower() in IMG_FORMATS:
            files.append(str(p))
        else:
            raise DataError(f"dataset path not found or not a folder / .txt list / image: {p}")
    return files


def _exif_hw(im: Image.Image) -> tuple[int, int]:
    """Height, width after EXIF rotation (cv2.imread applies it too)."""
    w, h = im.size
    try:
        orientation = im.getexif().get(274)
    except Exception:  # malformed EXIF must not reject an otherwise good image
        orientation = None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def check_image(img_file: str) -> tuple[tuple[int, int] | None, str | None]:
    """Fully decode an image (catches truncated files); returns ((h, w), None) or (None, reason)."""
    try:
        with Image.open(img_file) as im:
            hw = _exif_hw(im)
            im.load()  # full decode: raises on truncated data
        if hw[0] < 10 or hw[1] < 10:
            return None, f"{Path(img_file).name} (size {hw[1]}x{hw[0]} < 10 px)"
        return hw, None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        reason = str(e).replace(f"'{img_file}'", "").replace(str(img_file), "").strip() or type(e).__name__
        return None, f"{Path(img_file).name} ({reason})"


def parse_label_file(lb_file: str) -> tuple[list[list[float]], dict[str, list[str]], str | None]:
    """Parse one label file. Returns (rows, row problems, image problem kind or None).

    Image problems carry the file name, line and value so the user can fix the file.
    """
    problems: dict[str, list[str]] = defaultdict(list)
    name = Path(lb_file).name
    if not os.path.isfile(lb_file):
        return [], problems, None  # no label file: an image without objects
    try:
        text = Path(lb_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        problems["unreadable label file"].append(f"{name} ({e})")
        return [], problems, "unreadable label file"
    rows: list[list[float]] = []
    seen: set[tuple[float, ...]] = set()
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            problems["wrong column count"].append(f"{name}:{n} ({len(parts)} columns, expected 5)")
            return [], problems, "wrong column count"
        try:
            values = [float(v) for v in parts]
        except ValueError:
            problems["non-numeric value"].append(f"{name}:{n} ({line.strip()!r})")
            return [], problems, "non-numeric value"
        if not all(np.isfinite(values)):
            problems["non-numeric value"].append(f"{name}:{n} ({line.strip()!r})")
            return [], problems, "non-numeric value"
        cls = values[0]
        if cls < 0 or cls != int(cls):
            kind = "negative class id" if cls < 0 else "non-numeric value"
            problems[kind].append(f"{name}:{n} (class {parts[0]})")
            return [], problems, kind
        bad = [v for v in values[1:] if v < -COORD_TOL or v > 1 + COORD_TOL]
        if bad:
            problems["coordinate outside [0, 1]"].append(f"{name}:{n} ({bad[0]:g})")
            return [], problems, "coordinate outside [0, 1]"
        values = [cls] + [min(max(v, 0.0), 1.0) for v in values[1:]]
        if values[3] <= 0 or values[4] <= 0:
            problems["zero-size box"].append(f"{name}:{n}")
            continue
        key = tuple(values)
        if key in seen:
            problems["duplicate row"].append(f"{name}:{n}")
            continue
        seen.add(key)
        rows.append(values)
    return rows, problems, None


def _verify(pair: tuple[str, str]) -> dict:
    img_file, lb_file = pair
    hw, img_err = check_image(img_file)
    if img_err:
        return {"ok": False, "problems": {"corrupt image": [img_err]}}
    rows, problems, bad = parse_label_file(lb_file)
    return {"ok": bad is None, "shape": list(hw), "labels": rows, "problems": dict(problems)}


def _stat(path: str) -> list:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [None, None]


def files_hash(img_files: list[str], label_files: list[str]) -> str:
    """A fingerprint of names, sizes and modification times of all images and label files."""
    h = hashlib.sha256()
    for f in img_files + label_files:
        h.update(json.dumps([f, _stat(f)]).encode())
    return h.hexdigest()


def cache_path_for(source, label_files: list[str]) -> Path | None:
    """Where the label cache lives: ``list.cache`` beside a single .txt list, otherwise
    ``.../labels/train2017.cache`` beside the labels folder of the first image."""
    if not label_files:
        return None
    src = source[0] if isinstance(source, (list, tuple)) and len(source) == 1 else source
    if isinstance(src, (str, os.PathLike)) and Path(src).is_file() and Path(src).suffix == ".txt":
        return Path(src).with_suffix(".cache")
    return Path(label_files[0]).parent.with_suffix(".cache")


def _load_cache(path: Path, fingerprint: str) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != CACHE_VERSION or data.get("hash") != fingerprint:
        return None
    return data


def writable_dir(path: str | os.PathLike) -> bool:
    """True if we may write into ``path``. A folder without any write permission bits counts as
    read-only even for root (who could write anyway): reference data must stay untouched."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(path, os.W_OK)


def _save_cache(path: Path, data: dict) -> None:
    from sparseyolo.utils.io import atomic_write_text

    if not writable_dir(path.parent):
        LOGGER.debug(f"label cache not written: {path.parent} is read-only")
        return
    try:
        atomic_write_text(path, json.dumps(data))
        LOGGER.debug(f"label cache written to {path}")
    except OSError as e:  # read-only dataset folders (e.g. shared data) are normal
        LOGGER.debug(f"label cache not written ({path}: {e})")


def scan_labels(
    img_files: list[str], label_files: list[str], prefix: str = "", workers: int = 4, cache_file: Path | None = None
) -> tuple[dict, bool]:
    """Verify every (image, label) pair, reading / writing the JSON label cache ``cache_file``.

    Returns ``({img_file: entry}, from_cache)`` where entry = {ok, shape, labels, problems}.
    """
    from tqdm import tqdm

    fingerprint = files_hash(img_files, label_files)
    cpath = cache_file
    use_cache = cpath is not None
    if use_cache and cpath is not None:
        cached = _load_cache(cpath, fingerprint)
        if cached is not None:
            return cached["entries"], True
    pairs = list(zip(img_files, label_files, strict=False))
    entries: dict[str, dict] = {}
    with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as pool:
        results = pool.map(_verify, pairs)
        bar = tqdm(results, total=len(pairs), desc=f"{prefix}scanning labels", disable=len(pairs) < 200, leave=False)
        for (img_file, _), entry in zip(pairs, bar, strict=False):
            entries[img_file] = entry
    if use_cache and cpath is not None:
        _save_cache(cpath, {"version": CACHE_VERSION, "hash": fingerprint, "entries": entries})
    return entries, False
