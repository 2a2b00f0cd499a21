"""Loading dataset images, optionally cached in RAM (resized) or on disk (decoded ``.npy``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from sparseyolo.data.labels import writable_dir
from sparseyolo.utils.errors import DataError
from sparseyolo.utils.logging import LOGGER


def _npy_dir_fallback() -> Path:
    from sparseyolo.utils.downloads import cache_dir

    return cache_dir() / "images"


def jpeg_complete(data: bytes) -> bool:
    """False for a JPEG cut short: no end-of-image marker after the start of its first scan.

    Inside a scan's entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker,
    so an ``FF D9`` after the first start-of-scan is the end-of-image marker (progressive files have
    further scans, and files may carry data after it). Data that is not a JPEG, or a header this walk
    does not follow, is left to the decoder (True).
    """
    if data[:2] != b"\xff\xd8":
        return True
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return True
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", pos) != -1
        elif 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False  # cut short inside the header


class ImageCache:
    """``get(i)`` -> (BGR image resized so its long side is ``img_size``, (h0, w0), (h, w)).

    ``mode``: None (decode every time), ``"ram"`` (keep resized images in memory) or ``"disk"``
    (keep decoded originals as ``.npy`` beside the images, or in the sparseyolo cache folder when the
    image folder is read-only). ``True`` means ``"ram"``.
    """

    def __init__(
        self, files: list[str], img_size: int, augment: bool, mode: str | bool | None = None, prefix: str = ""
    ):
        if mode is True:
            mode = "ram"
        if mode not in (None, False, "ram", "disk"):
            raise DataError(f"cache must be 'ram', 'disk' or None, got {mode!r}")
        self.files, self.img_size, self.augment, self.mode = files, img_size, augment, mode or None
        self.ram: list[tuple | None] = [None] * len(files)
        self.npy: list[Path | None] = [None] * len(files)
        if self.mode:
            self._fill(prefix)

    def _fill(self, prefix: str) -> None:
        from tqdm import tqdm

        nbytes = 0
        for i in tqdm(
            range(len(self.files)),
            desc=f"{prefix}caching images ({self.mode})",
            leave=False,
            disable=len(self.files) < 200,
        ):
            if self.mode == "disk":
                self.npy[i] = self._write_npy(self.files[i])
            else:
                self.ram[i] = self._load(i)
                nbytes += self.ram[i][0].nbytes
        if self.mode == "ram":
            LOGGER.info(f"{prefix}cached {len(self.files)} images in RAM ({nbytes / 1e9:.2f} GB)")

    def _npy_path(self, f: str) -> Path:
        beside = Path(f).with_suffix(".npy")
        if writable_dir(beside.parent):
            return beside
        digest = hashlib.sha1(str(Path(f).resolve()).encode()).hexdigest()[:16]
        return _npy_dir_fallback() / f"{Path(f).stem}_{digest}.npy"

    def _write_npy(self, f: str) -> Path:
        p = self._npy_path(f)
        if p.is_file() and p.stat().st_mtime >= Path(f).stat().st_mtime:
            return p
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, self._decode(f))
        os.replace(tmp, p)
        return p

    def _decode(self, f: str) -> np.ndarray:
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError as e:
            raise DataError(f"image could not be read (changed since the label scan?): {f} ({e.strerror})") from e
        # OpenCV decodes a JPEG cut short without an error (the missing part comes out grey)
        if not jpeg_complete(data):
            raise DataError(f"image is truncated (changed since the label scan?): {f}")
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # BGR, EXIF orientation applied
        if img is None:
            raise DataError(f"image could not be read (changed since the label scan?): {f}")
        return img

    def _load(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        f = self.files[i]
        img = np.load(self.npy[i]) if self.npy[i] is not None else self._decode(f)
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            # INTER_AREA is best for shrinking; training with augmentation uses the faster linear
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            img = cv2.resize(img, (max(1, round(w0 * r)), max(1, round(h0 * r))), interpolation=interp)
        return img, (h0, w0), img.shape[:2]

    def get(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        cached = self.ram[i]
        if cached is not None:
            return cached[0].copy(), cached[1], cached[2]
        return self._load(i)
