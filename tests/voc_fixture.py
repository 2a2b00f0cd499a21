"""Small generated datasets for tests that must run without ../shared.

``make_voc`` writes a tiny Pascal VOC folder (Annotations/*.xml, JPEGImages/*.jpg, optional
ImageSets/Main split files) with the quirks of the real ones: ``difficult`` flags (``1``, ``0`` and
absent), zero-area boxes (a click: ``xmax == xmin``, as in BCCD), a box spanning the whole image
(1-based inclusive pixels), a box running past the image edge, ``<part>`` boxes inside ``person``
objects (not objects themselves) and per-class split lists beside the standard ones.

``make_yolo_folder`` writes YOLO ``images/<split>`` + ``labels/<split>`` with images of varied sizes
and aspect ratios (as coco128 has), several boxes each, for dataset / augmentation tests.

Import from test files as ``from voc_fixture import make_voc`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

VOC_SUBSET = ("person", "dog", "car", "bicycle", "cat")  # all in sparseyolo's VOC_NAMES


@dataclass
class VocFolder:
    """What ``make_voc`` wrote; counts are over all annotations (every split)."""

    root: Path
    names: list[str]
    stems: list[str]
    splits: dict[str, list[str]] = field(default_factory=dict)  # ImageSets/Main/<split>.txt contents
    objects: int = 0  # every <object>, difficult and zero-area ones included
    difficult: int = 0  # objects with <difficult>1</difficult> (none of them zero-area)
    zero_area: list[str] = field(default_factory=list)  # XML file names holding a zero-area box
    clipped: int = 0  # boxes that run past the image edge

    def kept(self, stems: Sequence[str] | None = None, keep_difficult: bool = False) -> int:
        """Boxes a conversion keeps for these images (default: all)."""
        n = 0
        for s in self.stems if stems is None else stems:
            for obj in _objects(self.root / "Annotations" / f"{s}.xml"):
                n += obj["area"] and (keep_difficult or not obj["difficult"])
        return n


def _objects(xml: Path) -> list[dict]:
    import xml.etree.ElementTree as ET

    out = []
    for obj in ET.parse(xml).getroot().findall("object"):
        b = [float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
        d = obj.find("difficult")
        out.append({"difficult": d is not None and d.text == "1", "area": b[2] > b[0] and b[3] > b[1]})
    return out


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    img = np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3)) + rng.normal(0, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _xml(stem: str, w: int, h: int, objects: list[dict], write_size: bool, folder: str) -> str:
    lines = [
        "<annotation>",
        f"\t<folder>{folder}</folder>",
        f"\t<filename>{stem}.jpg</filename>",
        "\t<source>",
        "\t\t<database>sparseyolo generated</database>",
        "\t\t<annotation>PASCAL VOC style</annotation>",
        "\t</source>",
    ]
    if write_size:
        lines += [
            "\t<size>",
            f"\t\t<width>{w}</width>",
            f"\t\t<height>{h}</height>",
            "\t\t<depth>3</depth>",
            "\t</size>",
        ]
    lines.append("\t<segmented>0</segmented>")
    for o in objects:
        lines += ["\t<object>", f"\t\t<name>{o['name']}</name>", "\t\t<pose>Unspecified</pose>"]
        lines.append("\t\t<truncated>0</truncated>")
        if o["difficult"] is not None:
            lines.append(f"\t\t<difficult>{o['difficult']}</difficult>")
        lines.append("\t\t<bndbox>")
        lines += [f"\t\t\t<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), o["box"], strict=True)]
        lines.append("\t\t</bndbox>")
        if o.get("part"):  # person layout: a part has its own <bndbox> but is not an object
            x1, y1, x2, y2 = o["part"]
            lines += ["\t\t<part>", "\t\t\t<name>head</name>", "\t\t\t<bndbox>"]
            lines += [f"\t\t\t\t<xmin>{x1}</xmin>", f"\t\t\t\t<ymin>{y1}</ymin>"]
            lines += [f"\t\t\t\t<xmax>{x2}</xmax>", f"\t\t\t\t<ymax>{y2}</ymax>"]
            lines += ["\t\t\t</bndbox>", "\t\t</part>"]
        lines.append("\t</object>")
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _voc_splits(stems: list[str]) -> dict[str, list[str]]:
    """The VOC layout: every 4th image (image 0 first) in test, the rest alternately train / val."""
    test = stems[::4]
    rest = [s for s in stems if s not in test]
    train, val = rest[::2], rest[1::2]
    return {"train": train, "val": val, "trainval": sorted(train + val), "test": test}


def make_voc(
    root: str | Path,
    n_images: int = 8,
    names: Sequence[str] = VOC_SUBSET,
    splits: str | dict[str, Sequence[int]] | None = None,
    prefix: str = "2007_",
    difficult_every: int = 4,
    zero_area: Sequence[int] = (),
    write_size: bool = True,
    max_objects: int = 4,
    size_range: tuple[int, int] = (48, 112),
    seed: int = 0,
) -> VocFolder:
    """Write a VOC folder at ``root``; returns a :class:`VocFolder`.

    Image 0 holds one object of every class (so a split containing it has all names); its first box
    spans the whole image (``xmin=1, xmax=W``) and the last image has a box running past the right
    edge. Every ``difficult_every``-th object is ``difficult`` (0: none); every 5th object has no
    ``<difficult>`` tag at all (= not difficult). ``zero_area`` lists images that get an extra
    zero-width box. ``splits``: None (no ImageSets), ``"voc"`` (train / val / trainval / test, image
    0 in test, plus a per-class list ``<name>_train.txt``) or ``{split: [image indices]}``.
    Images are JPEGs of random size in ``size_range`` with the boxes drawn in.
    """
    root = Path(root)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(names)
    stems = [f"{prefix}{i:06d}" for i in range(n_images)]
    info = VocFolder(root, names, stems)
    k = 0  # running object counter
    for i, stem in enumerate(stems):
        w, h = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        img = Image.fromarray(_background(rng, h, w))
        draw = ImageDraw.Draw(img)
        n = len(names) if i == 0 else int(rng.integers(1, max_objects + 1))
        objects = []
        for j in range(n):
            cls = names[j] if i == 0 else names[int(rng.integers(len(names)))]
            bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
            xmin, ymin = int(rng.integers(1, w - bw + 1)), int(rng.integers(1, h - bh + 1))
            box = [xmin, ymin, xmin + bw, ymin + bh]
            if i == 0 and j == 0:
                box = [1, 1, w, h]
            if i == n_images - 1 and j == 0:
                box[2] = w + 7  # runs past the edge: clipped to the image
                info.clipped += 1
            tagged = k % 5 != 4  # every 5th object has no <difficult> tag: not difficult
            difficult = "1" if tagged and difficult_every and k % difficult_every == difficult_every - 1 else "0"
            info.difficult += difficult == "1"
            part = None
            if cls == "person":
                part = [box[0], box[1], box[0] + max(1, bw // 3), box[1] + max(1, bh // 3)]
            objects.append({"name": cls, "box": box, "difficult": difficult if tagged else None, "part": part})
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.rectangle([box[0] - 1, box[1] - 1, min(box[2], w) - 1, box[3] - 1], fill=colour)
            k += 1
        if i in zero_area:
            x, y = int(rng.integers(2, w - 1)), int(rng.integers(2, h // 2))
            objects.append({"name": names[-1], "box": [x, y, x, y + h // 3], "difficult": "0", "part": None})
            info.zero_area.append(f"{stem}.xml")
            k += 1
        info.objects += len(objects)
        img.save(root / "JPEGImages" / f"{stem}.jpg", quality=90)
        (root / "Annotations" / f"{stem}.xml").write_text(_xml(stem, w, h, objects, write_size, root.name))
    if splits is not None:
        info.splits = _voc_splits(stems) if splits == "voc" else {s: [stems[i] for i in v] for s, v in splits.items()}
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        for split, ids in info.splits.items():
            (main / f"{split}.txt").write_text("".join(f"{s}\n" for s in ids))
        if splits == "voc":  # per-class membership lists, which converters must ignore
            first = info.splits["train"]
            (main / f"{names[0]}_train.txt").write_text("".join(f"{s} {1 if s == first[0] else -1}\n" for s in first))
    return info


# ------------------------------------------------------------------------------------------------
# YOLO folders with images of varied sizes

COCO_LIKE_SIZES = [  # (height, width): landscape, portrait and square, as coco128 mixes them
    (240, 320),
    (320, 240),
    (200, 300),
    (300, 200),
    (256, 256),
    (180, 320),
    (320, 213),
    (225, 300),
    (150, 200),
    (288, 216),
    (250, 320),
    (320, 180),
    (210, 280),
    (280, 210),
    (160, 240),
    (300, 300),
]


def make_yolo_folder(
    root: str | Path,
    split: str = "train",
    n: int = 12,
    sizes: Sequence[tuple[int, int]] = COCO_LIKE_SIZES,
    nc: int = 80,
    unlabeled: Sequence[int] = (),
    min_objects: int = 2,
    max_objects: int = 5,
    seed: int = 0,
) -> Path:
    """Write ``root/images/<split>/img_XXXX.jpg`` and ``root/labels/<split>/img_XXXX.txt``; returns
    the images folder. Image ``i`` has size ``sizes[i % len(sizes)]`` and ``min_objects`` to
    ``max_objects`` filled boxes (image 0 at least 3) of classes in ``range(nc)``, drawn into it, valid
    and distinct; images listed in ``unlabeled`` get no label file (no objects)."""
    root = Path(root)
    img_dir, lb_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lb_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        img = Image.fromarray(_background(rng, h, w))
        draw = ImageDraw.Draw(img)
        rows = []
        for _ in range(max(3 if i == 0 else 0, int(rng.integers(min_objects, max_objects + 1)))):
            bw, bh = int(rng.integers(w // 8, w // 2)), int(rng.integers(h // 8, h // 2))
            x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            draw.rectangle([x1, y1, x1 + bw - 1, y1 + bh - 1], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            cls = int(rng.integers(nc))
            rows.append(f"{cls} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        stem = f"img_{i:04d}"
        img.save(img_dir / f"{stem}.jpg", quality=90)
        if i not in unlabeled:
            (lb_dir / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
    return img_dir
