"""voc2yolo on VOC-style data as it comes: flat annotations/ + images/, XML beside images, named folders,
seeded val splits, and the warnings for train == val."""

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sparseyolo.cli.main import main

XML = """<annotation><filename>{filename}</filename><size><width>64</width><height>48</height><depth>3</depth></size>
<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
</annotation>"""


def make_flat(root: Path, n: int = 10, images: str = "images", annotations: str = "annotations") -> Path:
    """``n`` annotated images, plus one XML naming another file, one image without XML and one XML
    without an image."""
    img_dir, ann_dir = root / images, root / annotations
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(img_dir / f"im{i:02d}.jpg")
        filename = f"im{i:02d}.jpg" if i != 3 else "IMG_9999.jpg"  # exported from another tool
        (ann_dir / f"im{i:02d}.xml").write_text(XML.format(filename=filename, name="cell" if i % 2 else "dot"))
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(img_dir / "unlabelled.jpg")
    (ann_dir / "orphan.xml").write_text(XML.format(filename="orphan.jpg", name="cell"))
    return root


def _yaml(out: Path) -> dict:
    return yaml.safe_load((out / "data.yaml").read_text())


def _ids(out: Path, split: str) -> list[str]:
    return sorted(p.stem for p in (out / "labels" / split).glob("*.txt"))


def test_flat_layout_with_val_fraction_is_seeded_and_reports_problems(tmp_path, capsys):
    root = make_flat(tmp_path / "flat")
    out = tmp_path / "out"
    args = ["data", "voc2yolo", "--voc", str(root), "--out", str(out), "--names", "auto", "--val-fraction", "0.2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    data = _yaml(out)
    assert data["train"] == "images/train" and data["val"] == "images/val" and data["names"] == {0: "cell", 1: "dot"}
    train, val = _ids(out, "train"), _ids(out, "val")
    assert len(train) == 8 and len(val) == 2 and not set(train) & set(val)
    assert "train: 8 images" in text and "val: 2 images" in text
    assert "annotations without an image, skipped (1): orphan" in text
    assert "images without an XML file, not converted (1): unlabelled" in text
    assert "names another file" in text and "im03.xml says IMG_9999.jpg" in text
    # the same seed gives the same split; another seed another one
    again = tmp_path / "again"
    assert main(args[:5] + [str(again)] + args[6:]) == 0
    assert _ids(again, "val") == val
    other = tmp_path / "other"
    assert main(args[:5] + [str(other)] + args[6:] + ["--seed", "3"]) == 0
    assert _ids(other, "val") != val


def test_xml_beside_images_and_named_folders(tmp_path, capsys):
    beside = make_flat(tmp_path / "beside", n=4, images=".", annotations=".")
    assert main(["data", "voc2yolo", "--voc", str(beside), "--out", str(tmp_path / "o1"), "--names", "auto",
                 "--val-fraction", "0.25", "--quiet"]) == 0  # fmt: skip
    assert len(_ids(tmp_path / "o1", "train")) == 3
    named = make_flat(tmp_path / "named", n=4, images="pics", annotations="xml")
    assert main(["data", "voc2yolo", "--images", str(named / "pics"), "--annotations", str(named / "xml"),
                 "--out", str(tmp_path / "o2"), "--names", "cell,dot", "--val-fraction", "0.5"]) == 0  # fmt: skip
    assert len(_ids(tmp_path / "o2", "val")) == 2


def test_no_split_and_no_fraction_warns_and_train_warns_again(tmp_path, capsys, caplog, shapes_data):
    root = make_flat(tmp_path / "flat", n=6)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        assert main(["data", "voc2yolo", "--voc", str(root), "--out", str(out), "--names", "auto"]) == 0
    assert "train and val are the same 7 images" in caplog.text and "--val-fraction 0.2" in caplog.text
    data = _yaml(out)
    assert data["train"] == data["val"] == "images/all"
    caplog.clear()
    from sparseyolo.engine import train

    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        train(data=str(out / "data.yaml"), cfg=shapes_data["cfg"], weights="", epochs=1, img_size=64,
              batch_size=4, workers=0, project=str(tmp_path / "runs"), name="overlap", noplots=True,
              tensorboard=False)  # fmt: skip
    assert "6 of the 6 val images are also training images" in caplog.text


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--val-fraction", "1.5"], "--val-fraction must lie between 0 and 1 (e.g. 0.2), got 1.5"),
        (["--images", "{root}/images", "--annotations", "{root}/empty"], "holds no .xml annotation files"),
        (["--voc", "{root}/images"], "not a VOC-style dataset"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, extra, needle):
    root = make_flat(tmp_path / "flat", n=3)
    (root / "empty").mkdir()
    if "--voc" not in extra and "--images" not in extra:
        extra = ["--voc", str(root), *extra]
    args = ["data", "voc2yolo", "--out", str(tmp_path / "out"), *(a.format(root=root) for a in extra)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
