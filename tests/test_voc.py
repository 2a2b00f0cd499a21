"""Pascal VOC -> YOLO conversion: generated VOC folders (tests/voc_fixture.py) for splits, difficult
flags, zero-area boxes, name checks and get-voc; one end-to-end run on the real VOC2012 sample."""

import io
import shutil
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from voc_fixture import make_voc

from sparseyolo.cli.main import main
from sparseyolo.data.config import load_data_config
from sparseyolo.data.dataset import YoloDataset
from sparseyolo.data.voc import VOC_NAMES, convert_voc

VOC_CLASSES_FILE = "darknet-cfg/voc.names"


def read_rows(path: Path) -> np.ndarray:
    """A YOLO label file as an (n, 5) array; an empty file (every box dropped) gives (0, 5)."""
    return np.array([ln.split() for ln in path.read_text().splitlines() if ln.strip()], float).reshape(-1, 5)


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


@pytest.mark.real_data  # real VOC2012 XML end to end, and darknet's voc.names agrees with VOC_NAMES
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


@pytest.mark.parametrize("difficult", ["drop", "keep"])
def test_voc2yolo_cli_difficult_and_zero_area(tmp_path, capsys, difficult):
    voc = make_voc(tmp_path / "src", n_images=10, zero_area=(3, 7))
    assert voc.difficult > 0 and len(voc.zero_area) == 2 and voc.clipped == 1
    out = tmp_path / "voc"
    assert main(["data", "voc2yolo", "--voc", str(voc.root), "--out", str(out), "--difficult", difficult]) == 0
    printed = capsys.readouterr().out
    verb = "dropped" if difficult == "drop" else "kept"
    n_boxes = voc.kept(keep_difficult=difficult == "keep")
    assert f"all: 10 images, {n_boxes} boxes kept, {voc.difficult} difficult {verb}, 2 zero-area dropped" in printed
    assert "1 boxes extended past the image and were clipped to it" in printed
    cfg = load_data_config(out / "data.yaml")
    assert cfg["names"] == VOC_NAMES
    assert cfg["train"] == cfg["val"] == str(out / "images/all")
    total, classes = 0, set()
    for xml in sorted((voc.root / "Annotations").glob("*.xml")):
        got = read_rows(out / "labels/all" / f"{xml.stem}.txt")
        want = expected_rows(xml, VOC_NAMES, difficult == "keep")
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-6, rtol=0), xml.name
        assert (out / "images/all" / f"{xml.stem}.jpg").is_symlink()
        total += len(got)
        classes |= set(got[:, 0].astype(int).tolist())
    assert total == n_boxes and classes == {VOC_NAMES.index(n) for n in voc.names}
    # image 0's first box is the whole image (1-based inclusive pixels): exactly the unit box
    assert np.allclose(read_rows(out / "labels/all" / f"{voc.stems[0]}.txt")[0], [14, 0.5, 0.5, 1, 1])


def test_splits_zero_area_and_training_yaml(tmp_path, capsys, caplog):
    # BCCD-like: its own class names, the four standard splits, two zero-width boxes
    voc = make_voc(tmp_path / "src", n_images=14, names=["RBC", "WBC", "Platelets"], splits="voc", zero_area=(2, 5))
    out = tmp_path / "bccd"
    assert main(["data", "voc2yolo", "--voc", str(voc.root), "--out", str(out), "--names", "RBC,WBC,Platelets"]) == 0
    printed = capsys.readouterr().out
    counts = {s: len(ids) for s, ids in voc.splits.items()}
    assert counts == {"train": 5, "val": 5, "trainval": 10, "test": 4}
    for split, n in counts.items():
        assert f"{split}: {n} images" in printed
        assert len(list((out / f"labels/{split}").glob("*.txt"))) == n
    assert voc.zero_area[0] in printed and voc.zero_area[1] in printed
    assert "zero-area boxes dropped (2)" in printed
    assert "RBC_train" not in printed and not (out / "labels/RBC_train").exists()  # per-class lists ignored
    cfg = load_data_config(out / "data.yaml")
    assert cfg["names"] == ["RBC", "WBC", "Platelets"]
    assert (Path(cfg["train"]).name, Path(cfg["val"]).name, Path(cfg["test"]).name) == ("trainval", "test", "test")
    n = 0
    for xml in sorted((voc.root / "Annotations").glob("*.xml")):
        split = "test" if (out / "labels/test" / f"{xml.stem}.txt").exists() else "trainval"
        got = read_rows(out / f"labels/{split}" / f"{xml.stem}.txt")
        assert np.allclose(got, expected_rows(xml, cfg["names"], False), atol=1e-6, rtol=0), xml.name
        n += len(got)
    assert n == voc.kept() == voc.objects - voc.difficult - 2
    with caplog.at_level("WARNING", logger="sparseyolo"):
        ds = YoloDataset(cfg["train"], img_size=64, nc=3)
    assert len(ds) == 10 and sum(map(len, ds.labels)) == voc.kept(voc.splits["trainval"]) and not caplog.records


def test_unknown_names_error_and_auto(tmp_path, capsys):
    voc = make_voc(tmp_path / "src", n_images=8, names=["RBC", "WBC", "Platelets"], splits="voc", prefix="Blood_")
    assert main(["data", "voc2yolo", "--voc", str(voc.root), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'WBC'" in err and f"{voc.stems[0]}.xml" in err and "--names" in err
    assert not (tmp_path / "a/labels").exists()  # nothing written before the names are checked
    report = convert_voc(voc.root, tmp_path / "b", splits=["test"], names=None, progress=False)
    assert report.names == ["Platelets", "RBC", "WBC"] and report.splits["test"].images == len(voc.splits["test"])


def test_size_from_image_copy_and_splits_flag(tmp_path):
    src = make_voc(tmp_path / "src", n_images=3).root
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
        got = read_rows(tmp_path / "out/labels/mine" / f"{s}.txt")
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


def test_get_voc_downloads_extracts_and_converts(http_dir, tmp_path, capsys):
    src = make_voc(tmp_path / "src", n_images=8).root
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
        got = read_rows(root / "labels/train" / f"{s}.txt")
        assert np.allclose(got, expected_rows(src / "Annotations" / f"{s}.xml", VOC_NAMES, False), atol=1e-6)
    assert not list((root / "archives").glob("*.tar"))  # archives removed after extraction
    # a second run reuses the extracted data without downloading
    for f in (served / "mirror").iterdir():
        f.unlink()
    assert main(["data", "get-voc", "--dir", str(root), "--url-base", url, "--quiet"]) == 0


def test_get_voc_refuses_path_traversal(http_dir, tmp_path, capsys):
    voc = make_voc(tmp_path / "src", n_images=1)
    served, url = http_dir
    url += "mirror/"
    (served / "mirror").mkdir()
    with tarfile.open(served / "mirror" / "VOCtrainval_06-Nov-2007.tar", "w") as tar:
        _add_voc(tar, voc.root, "2007", "trainval", voc.stems)
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
