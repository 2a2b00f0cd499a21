"""One Pascal VOC annotation (XML): its objects, and their boxes in YOLO's normalised form.

Box convention. VOC ``<bndbox>`` values are 1-based, inclusive pixel indices: ``xmin=1, xmax=W``
spans the whole image width. Pixel ``i`` covers the continuous interval ``[i - 1, i]``, so the
box's edges are ``x1 = xmin - 1`` and ``x2 = xmax`` (same for y), clipped to ``[0, W]``, and::

    cx = (xmin - 1 + xmax) / 2 / W        w = (xmax - xmin + 1) / W
    cy = (ymin - 1 + ymax) / 2 / H        h = (ymax - ymin + 1) / H

A box with ``xmax <= xmin`` or ``ymax <= ymin`` (a click or a line, such as the zero-width boxes in
BCCD) has no area as drawn by the annotator; it is dropped and reported.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from sparseyolo.utils.errors import DataError


@dataclass
class VocObject:
    name: str
    difficult: bool
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written in the XML


@dataclass
class VocAnnotation:
    xml: Path
    width: int | None
    height: int | None
    objects: list[VocObject]
    filename: str | None = None  # the XML's <filename>, as the annotation tool wrote it


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def parse_voc_xml(xml_path: str | os.PathLike) -> VocAnnotation:
    """Read one VOC annotation file; raises :class:`DataError` naming the file for bad content."""
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{xml_path}: cannot parse VOC XML ({e})") from None
    size = root.find("size")
    try:
        w, h = int(float(_text(size, "width") or 0)), int(float(_text(size, "height") or 0))
    except ValueError:
        raise DataError(f"{xml_path}: <size> must hold numbers") from None
    objects = []
    for k, obj in enumerate(root.iter("object"), 1):
        name = _text(obj, "name")
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise DataError(f"{xml_path}: <object> #{k} lacks <name> or <bndbox>")
        try:
            box = tuple(float(_text(bb, t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise DataError(f"{xml_path}: <object> #{k} ({name}) has a missing or non-numeric bndbox value") from None
        difficult = (_text(obj, "difficult") or "0") not in ("0", "false", "")
        objects.append(VocObject(name, difficult, box))
    return VocAnnotation(xml_path, w or None, h or None, objects, _text(root, "filename"))


def voc_box_to_yolo(
    box: tuple[float, float, float, float], width: float, height: float
) -> tuple[tuple[float, float, float, float], bool]:
    """VOC (xmin, ymin, xmax, ymax), 1-based inclusive -> normalised (cx, cy, w, h); also says if clipped."""
    xmin, ymin, xmax, ymax = box
    x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax, ymax
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    clipped = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
    return ((cx1 + cx2) / 2 / width, (cy1 + cy2) / 2 / height, (cx2 - cx1) / width, (cy2 - cy1) / height), clipped
