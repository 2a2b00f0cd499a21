"""Pascal VOC -> YOLO conversion on real VOC2012 and BCCD annotations."""

import io
import shutil
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from sparseyolo.cli.main import main
from sparseyolo.data.config import load_data_config
from sparseyolo.data.dataset import YoloDataset
from sparseyolo.data.voc import VOC_NAMES, convert_voc

VOC_CLASSES_FILE = "darknet-cfg/voc.names"


def expected_rows(xml: Path, names: list[str], keep_difficult: bool) -> np.ndarray:
    """The documented convention, computed independently: 1-based inclusive pixels ->
    edges (xmin - 1, xmax), normalised centre and size."""
    root = ET.parse(xml).getroot()
    W, H = float(root.find("size/width").text), float(root.find("size/height").text)
    rows = []
    for obj in root.findall("object"):
        if obj.find("difficult") is not None and obj.find("difficult").text.strip() == "1" and not keep_difficult:
            continue
        b = {k: float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")}
        if b["xmax"] <= b["xmin"] or b["ymax"] <= b["ymin"]:
            continue
        x1, y1 = max(b["xmin"] - 1, 0), max(b["ymin"] - 1, 0)
        x2, y2 = min(b["xmax"], W), min(b["ymax"], H)
        rows.append(
            [
                names.index(obj.find("name").text.strip()),
                (x1 + x2) / 2 / W,
                (y1 + y2) / 2 / H,
                (x2 - x1) / W,
                (y2 - y1) / H,
            ]
        )
    return np.array(rows).reshape(-1, 5)


@pytest.mark.parametrize("difficult, n_boxes", [("drop", 273 - 38), ("keep", 273)])
def test_voc2012_sample_cli(shared_dir, tmp_path, capsys, difficult, n_boxes):
    voc = shared_dir / "data/voc2012-sample"
    out = tmp_path / "voc"
    assert main(["data", "voc2yolo", "--voc", str(voc), "--out", str(out), "--difficult", difficult]) == 0
    printed = capsys.readouterr().out
    verb = "dropped" if difficult == "drop" else "kept"
    assert f"all: 100 images, {n_boxes} boxes kept, 38 difficult {verb}, 0 zero-area dropped" in printed
    cfg = load_data_config(out / "data.yaml")
    assert cfg["names"] == VOC_NAMES == (shared_dir / VOC_CLASSES_FILE).read_text().split()
    assert cfg["train"] == cfg["val"] == str(out / "images/all")
    total, classes = 0, set()
    for xml in sorted((voc / "Annotations").glob("*.xml")):
        got = np.loadtxt(out / "labels/all" / f"{xml.stem}.txt", ndmin=2).reshape(-1, 5)
        want = expected_rows(xml, VOC_NAMES, difficult == "keep")
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-6, rtol=0), xml.name
        assert (out / "images/all" / f"{xml.stem}.jpg").is_symlink()
        total += len(got)
        classes |= set(got[:, 0].astype(int).tolist())
    assert total == n_boxes and classes == set(range(20))


def test_bccd_splits_zero_area_and_training_yaml(shared_dir, tmp_path, capsys, caplog):
    voc = shared_dir / "data/bccd"
    out = tmp_path / "bccd"
    assert main(["data", "voc2yolo", "--voc", str(voc), "--out", str(out), "--names", "RBC,WBC,Platelets"]) == 0
    printed = capsys.readouterr().out
    for split, n in {"train": 205, "val": 87, "trainval": 292, "test": 72}.items():
        assert f"{split}: {n} images" in printed
        assert len(list((out / f"labels/{split}").glob("*.txt"))) == n
    assert "BloodImage_00338.xml" in printed and "BloodImage_00343.xml" in printed
    assert "zero-area boxes dropped (2)" in printed
    cfg = load_data_config(out / "data.yaml")
    assert cfg["names"] == ["RBC", "WBC", "Platelets"]
    assert (Path(cfg["train"]).name, Path(cfg["val"]).name, Path(cfg["test"]).name) == ("trainval", "test", "test")
    n = 0
    for xml in sorted((voc / "Annotations").glob("*.xml")):
        split = "test" if (out / "labels/test" / f"{xml.stem}.txt").exists() else "trainval"
        got = np.loadtxt(out / f"labels/{split}" / f"{xml.stem}.txt", ndmin=2).reshape(-1, 5)
        assert np.allclose(got, expected_rows(xml, cfg["names"], False), atol=1e-6, rtol=0), xml.name
        n += len(got)
    assert n == 4888 - 2
    with caplog.at_level("WARNING", logger="sparseyolo"):
        ds = YoloDataset(cfg["train"], img_size=128, nc=3)
    assert len(ds) == 292 and sum(map(len, ds.labels)) == 3941 and not caplog.records


def test_unknown_names_error_and_auto(shared_dir, tmp_path, capsys):
    voc = shared_dir / "data/bccd"
    assert main(["data", "voc2yolo", "--voc", str(voc), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'WBC'" in err and "BloodImage_00001.xml" in err and "--names" in err
    assert not (tmp_path / "a/labels").exists()  # nothing written before the names are checked
    report = convert_voc(voc, tmp_path / "b", splits=["test"], names=None, progress=False)
    assert report.names == ["Platelets", "RBC", "WBC"] and report.splits["test"].images == 72


def test_size_from_image_copy_and_splits_flag(shared_dir, tmp_path):
    src = shared_dir / "data/voc2012-sample"
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    stems = sorted(p.stem for p in (src / "Annotations").glob("*.xml"))[:3]
    for s in stems:
        shutil.copy(src / "JPEGImages" / f"{s}.jpg", voc / "JPEGImages")
        tree = ET.parse(src / "Annotations" / f"{s}.xml")
        root = tree.getroot()
        root.remove(root.find("size"))  # force reading the size from the image
        tree.write(voc / "Annotations" / f"{s}.xml")
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/mine.txt").write_text("\n".join(stems) + "\n")
    report = convert_voc(voc, tmp_path / "out", splits=["mine"], copy=True, progress=False)
    assert report.splits["mine"].images == 3
    for s in stems:
        img = tmp_path / "out/images/mine" / f"{s}.jpg"
        assert img.is_file() and not img.is_symlink()
        got = np.loadtxt(tmp_path / "out/labels/mine" / f"{s}.txt", ndmin=2)
        assert np.allclose(got, expected_rows(src / "Annotations" / f"{s}.xml", VOC_NAMES, False), atol=1e-6)
    data = yaml.safe_load((tmp_path / "out/data.yaml").read_text())
    assert data["train"] == data["val"] == "images/mine" and "test" not in data


# ------------------------------------------------------------------------------------------------
# get-voc against a loopback HTTP server


def _add_voc(tar, src: Path, year: str, split: str, stems: list[str]) -> None:
    base = f"VOCdevkit/VOC{year}"
    for s in stems:
        tar.add(src / "Annotations" / f"{s}.xml", f"{base}/Annotations/{s}.xml")
        tar.add(src / "JPEGImages" / f"{s}.jpg", f"{base}/JPEGImages/{s}.jpg")
    data = ("\n".join(stems) + "\n").encode()
    info = tarfile.TarInfo(f"{base}/ImageSets/Main/{split}.txt")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_get_voc_downloads_extracts_and_converts(shared_dir, http_dir, tmp_path, capsys):
    src = shared_dir / "data/voc2012-sample"
    stems = sorted(p.stem for p in (src / "Annotations").glob("*.xml"))
    served, url = http_dir
    url += "mirror/"
    (served / "mirror").mkdir()
    sets = {
        "VOCtrainval_06-Nov-2007.tar": ("2007", "trainval", stems[:2]),
        "VOCtest_06-Nov-2007.tar": ("2007", "test", stems[2:5]),
        "VOCtrainval_11-May-2012.tar": ("2012", "trainval", stems[5:8]),
    }
    for name, (year, split, ss) in sets.items():
        with tarfile.open(served / "mirror" / name, "w") as tar:
            _add_voc(tar, src, year, split, ss)
    root = tmp_path / "VOC"
    assert main(["data", "get-voc", "--dir", str(root), "--url-base", url, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "train: 5 images" in printed and "val: 3 images" in printed
    cfg = load_data_config(root / "voc.yaml")
    assert cfg["names"] == VOC_NAMES and Path(cfg["val"]) == Path(cfg["test"]) == root / "images/val"
    assert sorted(p.stem for p in Path(cfg["train"]).iterdir()) == sorted(stems[:2] + stems[5:8])
    assert sorted(p.stem for p in (root / "labels/val").iterdir()) == sorted(stems[2:5])
    for s in stems[:2]:
        got = np.loadtxt(root / "labels/train" / f"{s}.txt", ndmin=2).reshape(-1, 5)
        assert np.allclose(got, expected_rows(src / "Annotations" / f"{s}.xml", VOC_NAMES, False), atol=1e-6)
    assert not list((root / "archives").glob("*.tar"))  # archives removed after extraction
    # a second run reuses the extracted data without downloading
    for f in (served / "mirror").iterdir():
        f.unlink()
    assert main(["data", "get-voc", "--dir", str(root), "--url-base", url, "--quiet"]) == 0


def test_get_voc_refuses_path_traversal(shared_dir, http_dir, tmp_path, capsys):
    served, url = http_dir
    url += "mirror/"
    (served / "mirror").mkdir()
    with tarfile.open(served / "mirror" / "VOCtrainval_06-Nov-2007.tar", "w") as tar:
        _add_voc(tar, shared_dir / "data/voc2012-sample", "2007", "trainval", ["2007_000027"])
        payload = b"owned\n"
        info = tarfile.TarInfo("VOCdevkit/../../escaped.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    root = tmp_path / "deep/VOC"
    assert main(["data", "get-voc", "--dir", str(root), "--url-base", url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "refusing" in err and "escaped.txt" in err
    assert not (tmp_path / "deep/escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not (root / "VOCdevkit").exists()  # nothing extracted from the hostile archive
