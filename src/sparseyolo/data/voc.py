"""Pascal VOC (XML) -> YOLO (txt) conversion: splits, class names, counts and problems, the data YAML.

Reading one annotation file and the box convention: :mod:`sparseyolo.data.voc_xml`.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sparseyolo.data.voc_layout import VocLayout, as_layout, check_val_fraction, detect_layout, random_split
from sparseyolo.data.voc_xml import VocAnnotation, parse_voc_xml, voc_box_to_yolo
from sparseyolo.utils.errors import DataError
from sparseyolo.utils.logging import LOGGER

VOC_NAMES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
STANDARD_SPLITS = ("train", "val", "trainval", "test")


@dataclass
class SplitCounts:
    images: int = 0
    boxes: int = 0
    difficult: int = 0  # difficult boxes seen (kept or dropped, see ConversionReport.difficult_mode)
    zero_area: int = 0
    per_class: Counter = field(default_factory=Counter)


@dataclass
class ConversionReport:
    out: Path
    names: list[str]
    difficult_mode: str
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    zero_area: list[str] = field(default_factory=list)  # "file.xml: name (xmin,ymin,xmax,ymax)"
    missing_images: list[str] = field(default_factory=list)
    bad_annotations: list[str] = field(default_factory=list)  # "file.xml (reason)": unreadable or missing
    filename_mismatch: list[str] = field(default_factory=list)  # "a.xml says b.jpg"
    images_without_xml: list[str] = field(default_factory=list)
    clipped: int = 0
    yaml_path: Path | None = None

    def lines(self) -> list[str]:
        """Human-readable counts, one line per split, plus problems."""
        out = []
        verb = "kept" if self.difficult_mode == "keep" else "dropped"
        for split, c in self.splits.items():
            per = ", ".join(f"{n}={c.per_class[n]}" for n in self.names if c.per_class[n])
            out.append(
                f"{split}: {c.images} images, {c.boxes} boxes kept, {c.difficult} difficult {verb}, "
                f"{c.zero_area} zero-area dropped; per class: {per or 'none'}"
            )
        if self.zero_area:
            out.append(
                f"zero-area boxes dropped ({len(self.zero_area)}): {'; '.join(self.zero_area[:10])}"
                + (f" and {len(self.zero_area) - 10} more" if len(self.zero_area) > 10 else "")
            )
        if self.missing_images:
            out.append(
                f"annotations without an image, skipped ({len(self.missing_images)}): "
                + ", ".join(self.missing_images[:10])
            )
        if self.bad_annotations:
            out.append(
                f"unreadable or missing annotations, skipped ({len(self.bad_annotations)}): "
                + ", ".join(self.bad_annotations[:10])
                + (f" and {len(self.bad_annotations) - 10} more" if len(self.bad_annotations) > 10 else "")
            )
        for what, items in (
            ("XML files whose <filename> names another file (converted by the XML's own name)", self.filename_mismatch),
            ("images without an XML file, not converted", self.images_without_xml),
        ):
            if items:
                more = f" and {len(items) - 10} more" if len(items) > 10 else ""
                out.append(f"{what} ({len(items)}): {', '.join(items[:10])}{more}")
        if self.clipped:
            out.append(f"{self.clipped} boxes extended past the image and were clipped to it")
        if self.yaml_path:
            out.append(f"data YAML: {self.yaml_path}")
        return out


def parse_names(spec: str | list[str] | None, default: list[str] | None = VOC_NAMES) -> list[str] | None:
    """``--names``: None -> default, ``auto`` -> None (collect), a file (one per line) or ``a,b,c``."""
    if spec is None:
        return list(default) if default is not None else None
    if isinstance(spec, (list, tuple)):
        return [str(s) for s in spec]
    if spec == "auto":
        return None
    p = Path(spec)
    if p.is_file():
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise DataError(f"--names {spec!r}: no class names given")
    if len(set(names)) != len(names):
        raise DataError(f"--names {spec!r}: duplicate class names")
    return names


def read_split_ids(voc_root: Path | VocLayout, split: str) -> list[str]:
    return as_layout(voc_root).split_ids(split)


def available_splits(voc_root: Path | VocLayout) -> list[str]:
    """Standard split files present under ImageSets/Main (per-class lists are ignored)."""
    return as_layout(voc_root).available_splits(STANDARD_SPLITS)


def _image_size(ann: VocAnnotation, image: Path) -> tuple[int, int]:
    if ann.width and ann.height:
        return ann.width, ann.height
    from PIL import Image

    try:
        with Image.open(image) as im:
            return im.size
    except OSError as e:
        raise DataError(f"{ann.xml}: no <size> and the image {image} cannot be read ({e})") from None


def _check_names(anns: dict[str, VocAnnotation], names: list[str] | None) -> list[str]:
    """Fix the class list: verify every XML name is known, or collect them (``names=None``)."""
    if names is None:
        return sorted({o.name for a in anns.values() for o in a.objects})
    known = set(names)
    where: dict[str, list[str]] = {}
    for a in anns.values():
        for o in a.objects:
            if o.name not in known and a.xml.name not in where.setdefault(o.name, []):
                where[o.name].append(a.xml.name)
    if where:
        parts = [
            f"{n!r} in {len(files)} files ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
            for n, files in sorted(where.items())
        ]
        raise DataError(
            f"class names not in the class list [{', '.join(names)}]: {'; '.join(parts)}. "
            f"Pass --names with the dataset's classes in id order (e.g. --names "
            f"{','.join(sorted(where))}) or --names auto"
        )
    return names


def _link_or_copy(src: Path, dst: Path, copy: bool) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(src.resolve(), dst)


Jobs = dict[str, list[tuple[VocLayout, list[str]]]]


def _read_annotations(jobs: Jobs) -> tuple[dict[str, VocAnnotation], list[str]]:
    """Every XML the jobs name, parsed: ``({path: annotation}, ["file.xml (reason)", ...])``.

    A broken or missing annotation is a dataset problem like a corrupt image: skipped and reported,
    so one bad file does not stop a conversion of thousands. Only a dataset with none left is an error.
    """
    anns: dict[str, VocAnnotation] = {}
    bad: dict[str, str] = {}
    for items in jobs.values():
        for layout, ids in items:
            for i in ids:
                key = str(layout.xml(i))
                if key in anns or key in bad:
                    continue
                if not Path(key).is_file():
                    bad[key] = f"{key} (listed in a split but missing)"
                    continue
                try:
                    anns[key] = parse_voc_xml(key)
                except DataError as e:
                    bad[key] = f"{Path(key).name} ({str(e).removeprefix(f'{key}: ')})"
    if not anns and bad:
        raise DataError(f"no readable VOC annotations; {len(bad)} unusable, e.g. {next(iter(bad.values()))}")
    return anns, list(bad.values())


def convert_jobs(
    jobs: dict[str, list[tuple[Path | VocLayout, list[str]]]],
    out: str | os.PathLike,
    names: list[str] | None,
    difficult: str = "drop",
    copy: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert ``{out_split: [(voc_root, [image ids]), ...]}`` into ``out/images|labels/<split>/``.

    All XMLs are read and the class list checked before anything is written.
    """
    from tqdm import tqdm

    if difficult not in ("drop", "keep"):
        raise DataError(f"--difficult must be 'drop' or 'keep', got {difficult!r}")
    out = Path(out)
    jobs = {split: [(as_layout(root), ids) for root, ids in items] for split, items in jobs.items()}
    anns, bad = _read_annotations(jobs)
    names = _check_names(anns, names)
    index = {n: k for k, n in enumerate(names)}
    report = ConversionReport(out, names, difficult, bad_annotations=bad)
    seen_problems: set[str] = set()
    for split, items in jobs.items():
        img_dir, lb_dir = out / "images" / split, out / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lb_dir.mkdir(parents=True, exist_ok=True)
        counts = report.splits.setdefault(split, SplitCounts())
        used: set[str] = set()
        total = sum(len(ids) for _, ids in items)
        bar = tqdm(total=total, desc=f"voc2yolo {split}", disable=not progress or total < 500, leave=False)
        for layout, ids in items:
            for i in ids:
                bar.update()
                ann = anns.get(str(layout.xml(i)))
                if ann is None:  # unreadable or missing: already in report.bad_annotations
                    continue
                image = layout.image(i)
                if image is None:
                    if str(ann.xml) not in seen_problems:
                        report.missing_images.append(f"{i} (no image in {layout.images})")
                        seen_problems.add(str(ann.xml))
                    continue
                if ann.filename and ann.filename not in (image.name, i) and str(ann.xml) not in seen_problems:
                    report.filename_mismatch.append(f"{ann.xml.name} says {ann.filename}")
                    seen_problems.add(str(ann.xml))
                w, h = _image_size(ann, image)
                rows = []
                for o in ann.objects:
                    if o.difficult:
                        counts.difficult += 1
                        if difficult == "drop":
                            continue
                    xmin, ymin, xmax, ymax = o.box
                    if xmax <= xmin or ymax <= ymin:
                        counts.zero_area += 1
                        tag = f"{ann.xml.name}: {o.name} ({xmin:g},{ymin:g},{xmax:g},{ymax:g})"
                        if tag not in seen_problems:
                            report.zero_area.append(tag)
                            seen_problems.add(tag)
                        continue
                    (cx, cy, bw, bh), clipped = voc_box_to_yolo(o.box, w, h)
                    report.clipped += clipped
                    if bw <= 0 or bh <= 0:  # wholly outside the image
                        counts.zero_area += 1
                        continue
                    rows.append(f"{index[o.name]} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
                    counts.per_class[o.name] += 1
                stem = i if i not in used else f"{layout.name}_{i}"  # the same id from two VOC years
                used.add(stem)
                _link_or_copy(image, img_dir / f"{stem}{image.suffix}", copy)
                (lb_dir / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
                counts.images += 1
                counts.boxes += len(rows)
        bar.close()
    return report


def write_data_yaml(
    out: Path, names: list[str], train: str, val: str, test: str | None, filename: str = "data.yaml"
) -> Path:
    """A data YAML for the converted folder (absolute ``path``, splits relative to it)."""
    from sparseyolo.utils.io import atomic_write_text

    data = {"path": str(out.resolve()), "train": f"images/{train}", "val": f"images/{val}"}
    if test:
        data["test"] = f"images/{test}"
    data["nc"] = len(names)
    data["names"] = {k: n for k, n in enumerate(names)}
    return atomic_write_text(out / filename, yaml.safe_dump(data, sort_keys=False))


def default_roles(splits: list[str]) -> tuple[str, str, str | None]:
    """Pick (train, val, test): trainval/test when both exist (the VOC protocol), else train/val/test."""
    if "trainval" in splits and "test" in splits:
        return "trainval", "test", "test"
    train = "train" if "train" in splits else splits[0]
    val = "val" if "val" in splits else ("test" if "test" in splits else train)
    return train, val, "test" if "test" in splits else None


def convert_voc(
    voc_dir: str | os.PathLike | None,
    out: str | os.PathLike,
    splits: list[str] | None = None,
    names: list[str] | None = VOC_NAMES,
    difficult: str = "drop",
    copy: bool = False,
    train: str | None = None,
    val: str | None = None,
    test: str | None = None,
    yaml_name: str = "data.yaml",
    progress: bool = True,
    images: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> ConversionReport:
    """Convert one VOC-style dataset (any layout :func:`detect_layout` knows) to YOLO layout.

    ``splits`` default to the standard split files present. Without split files, ``val_fraction``
    holds out a seeded random share as ``val``; with neither, every annotated image forms one split
    ``all`` used as both train and val, after a loud warning. ``names=None`` collects class names
    from the XMLs (sorted).
    """
    check_val_fraction(val_fraction)
    layout = detect_layout(voc_dir, images, annotations)
    where = voc_dir if voc_dir is not None else layout.annotations
    LOGGER.info(f"{where}: {layout.kind} ({layout.annotations}, {layout.images})")
    every = layout.xml_stems()
    if not every:
        raise DataError(f"{layout.annotations}: no annotations found")
    if not splits:
        splits = layout.available_splits(STANDARD_SPLITS)
    if splits and val_fraction is not None:
        raise DataError(f"{where} has split files ({', '.join(splits)}); --val-fraction is for data without them")
    if splits:
        jobs: Jobs = {s: [(layout, layout.split_ids(s) if s != "all" else every)] for s in splits}
    elif val_fraction is not None:
        train_ids, val_ids = random_split(every, val_fraction, seed)
        LOGGER.info(f"no split files: {len(train_ids)} train / {len(val_ids)} val images (seed {seed})")
        jobs, splits = {"train": [(layout, train_ids)], "val": [(layout, val_ids)]}, ["train", "val"]
    else:
        LOGGER.warning(
            f"WARNING: {where} has no split files and no --val-fraction was given: train and val are the "
            f"same {len(every)} images, so validation will measure memorisation, not accuracy. "
            "Pass --val-fraction 0.2 to hold images out."
        )
        jobs, splits = {"all": [(layout, every)]}, ["all"]
    d_train, d_val, d_test = default_roles(splits)
    train, val = train or d_train, val or d_val
    test = test if test is not None else d_test
    for role, s in (("train", train), ("val", val), ("test", test)):
        if s and s not in splits:
            raise DataError(f"--{role}-split {s!r} is not among the converted splits {splits}")
    report = convert_jobs(jobs, out, names, difficult, copy, progress)
    report.images_without_xml = sorted(set(layout.image_stems()) - set(every))
    report.yaml_path = write_data_yaml(Path(out), report.names, train, val, test, yaml_name)
    return report
