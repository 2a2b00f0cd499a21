"""Where a VOC-style dataset keeps its XML, images and split lists, as datasets actually come.

Recognised without flags, in this order:

* ``Annotations/`` + ``JPEGImages/`` (+ ``ImageSets/Main/*.txt``): the Pascal VOC devkit;
* ``annotations/`` + ``images/``: what LabelImg and many exports produce;
* XML files next to the images in one folder.

``--images DIR --annotations DIR`` name the two folders outright. Without split files, a seeded
random split (``--val-fraction``) holds validation images out of training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from sparseyolo.utils.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass(frozen=True)
class VocLayout:
    """The folders of one VOC-style dataset. ``splits`` is the folder of split lists, if any."""

    annotations: Path
    images: Path
    splits: Path | None = None
    kind: str = "Annotations/ + JPEGImages/"

    @classmethod
    def devkit(cls, root: str | Path) -> VocLayout:
        root = Path(root)
        return cls(root / "Annotations", root / "JPEGImages", root / "ImageSets" / "Main")

    @property
    def name(self) -> str:
        """A short name, used to keep file names apart when two datasets share an id."""
        return self.annotations.parent.name

    def xml(self, stem: str) -> Path:
        return self.annotations / f"{stem}.xml"

    def image(self, stem: str) -> Path | None:
        for ext in IMAGE_EXTS:
            if (self.images / f"{stem}{ext}").is_file():
                return self.images / f"{stem}{ext}"
        return None

    def xml_stems(self) -> list[str]:
        return sorted(p.stem for p in self.annotations.glob("*.xml"))

    def image_stems(self) -> list[str]:
        return sorted({p.stem for p in self.images.iterdir() if p.suffix in IMAGE_EXTS})

    def split_ids(self, split: str) -> list[str]:
        f = (self.splits or self.annotations.parent / "ImageSets" / "Main") / f"{split}.txt"
        if not f.is_file():
            raise DataError(f"split {split!r} not found: {f}")
        return [ln.split()[0] for ln in f.read_text().splitlines() if ln.strip()]

    def available_splits(self, standard: tuple[str, ...]) -> list[str]:
        if self.splits is None:
            return []
        return [s for s in standard if (self.splits / f"{s}.txt").is_file()]


def as_layout(root_or_layout: str | Path | VocLayout) -> VocLayout:
    return root_or_layout if isinstance(root_or_layout, VocLayout) else VocLayout.devkit(root_or_layout)


def _has_xml(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.xml"))


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix in IMAGE_EXTS for p in folder.iterdir())


def detect_layout(
    root: str | Path | None = None, images: str | Path | None = None, annotations: str | Path | None = None
) -> VocLayout:
    """The layout of a dataset folder, or of the folders named by ``--images`` / ``--annotations``."""
    if images is not None or annotations is not None:
        if images is None or annotations is None:
            raise DataError("--images and --annotations go together: name both folders")
        images, annotations = Path(images), Path(annotations)
        for flag, folder in (("--images", images), ("--annotations", annotations)):
            if not folder.is_dir():
                raise DataError(f"{flag} {folder}: no such folder")
        if not _has_xml(annotations):
            raise DataError(f"--annotations {annotations}: the folder holds no .xml annotation files")
        if not _has_images(images):
            raise DataError(f"--images {images}: the folder holds no images ({', '.join(IMAGE_EXTS[:3])}, ...)")
        split_dir = annotations.parent / "ImageSets" / "Main"
        return VocLayout(annotations, images, split_dir if split_dir.is_dir() else None, "--images + --annotations")
    if root is None:
        raise DataError("name the dataset folder (--voc) or both --images and --annotations")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    split_dir = root / "ImageSets" / "Main"
    splits = split_dir if split_dir.is_dir() else None
    for ann, img, kind in (("Annotations", "JPEGImages", "Annotations/ + JPEGImages/"),
                           ("annotations", "images", "annotations/ + images/")):  # fmt: skip
        if (root / ann).is_dir() and (root / img).is_dir():
            if not _has_xml(root / ann):
                raise DataError(f"{root / ann}: the folder holds no .xml annotation files")
            return VocLayout(root / ann, root / img, splits, kind)
    if _has_xml(root) and _has_images(root):
        return VocLayout(root, root, splits, "XML files beside the images")
    raise DataError(
        f"{root}: not a VOC-style dataset: found neither Annotations/ + JPEGImages/, annotations/ + images/, "
        "nor XML files beside the images; name the folders with --images DIR --annotations DIR"
    )


def check_val_fraction(val_fraction: float | None) -> None:
    if val_fraction is not None and not 0.0 < float(val_fraction) < 1.0:
        raise DataError(f"--val-fraction must lie between 0 and 1 (e.g. 0.2), got {val_fraction:g}")


def random_split(stems: list[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(train, val)`` ids: a seeded shuffle, at least one image on each side; same inputs, same split."""
    check_val_fraction(val_fraction)
    if len(stems) < 2:
        raise DataError(f"--val-fraction needs at least 2 annotated images, found {len(stems)}")
    order = sorted(stems)
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])
