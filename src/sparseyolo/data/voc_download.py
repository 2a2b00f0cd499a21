"""``sparseyolo data get-voc``: download PASCAL VOC 2007 + 2012 and convert them to YOLO layout.

Split protocol (as the YOLOv3 ``get_voc.sh`` script): train = VOC2007 trainval + VOC2012 trainval
(16,551 images), val = test = VOC2007 test (4,952 images); difficult boxes dropped by default.
"""

from __future__ import annotations

import os
from pathlib import Path

from sparseyolo.data.voc import VOC_NAMES, ConversionReport, convert_jobs, read_split_ids, write_data_yaml
from sparseyolo.utils.errors import DataError
from sparseyolo.utils.logging import LOGGER

# pjreddie's mirror keeps all three official tars side by side (the Oxford host splits them by year)
DEFAULT_URL_BASE = "https://pjreddie.com/media/files/"
VOC_ARCHIVES = ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar", "VOCtrainval_11-May-2012.tar")
# sha256 of each archive, once someone has hashed the official files (none of them is pinned yet: we
# could not download them to verify). Until then every download logs that it is not verified.
VOC_SHA256: dict[str, str] = {}


def fetch_and_extract(
    url_base: str, root: Path, archives: tuple[str, ...] = VOC_ARCHIVES, keep: bool = False, progress: bool = True
) -> None:
    """Download each archive into ``root/archives`` and extract it into ``root`` (once).

    An archive without a pinned sha256 (``VOC_SHA256``) is downloaded with a warning that it is not
    verified; extraction refuses members that would land outside ``root`` either way."""
    from sparseyolo.utils.downloads import download, safe_extract

    base = url_base if url_base.endswith("/") else url_base + "/"
    for name in archives:
        marker = root / f".extracted-{name}"
        if marker.is_file():
            LOGGER.info(f"{name}: already extracted")
            continue
        tar = download(base + name, root / "archives" / name, sha256=VOC_SHA256.get(name), progress=progress)
        safe_extract(tar, root, progress=progress)
        marker.write_text("ok\n")
        if not keep:
            tar.unlink()


def get_voc(
    root: str | os.PathLike = "datasets/VOC",
    url_base: str = DEFAULT_URL_BASE,
    difficult: str = "drop",
    copy: bool = False,
    keep_archives: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Download, extract and convert VOC; writes ``root/voc.yaml`` and returns the counts."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fetch_and_extract(url_base, root, keep=keep_archives, progress=progress)
    devkit = root / "VOCdevkit"
    voc07, voc12 = devkit / "VOC2007", devkit / "VOC2012"
    for d in (voc07, voc12):
        if not (d / "Annotations").is_dir():
            raise DataError(f"expected {d}/Annotations after extraction; are the archives the official VOC tars?")
    jobs = {
        "train": [(voc07, read_split_ids(voc07, "trainval")), (voc12, read_split_ids(voc12, "trainval"))],
        "val": [(voc07, read_split_ids(voc07, "test"))],
    }
    report = convert_jobs(jobs, root, VOC_NAMES, difficult=difficult, copy=copy, progress=progress)
    report.yaml_path = write_data_yaml(root, VOC_NAMES, "train", "val", "val", filename="voc.yaml")
    return report
