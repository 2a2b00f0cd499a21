"""``sparseyolo data voc2yolo`` on a VOC folder with a cut-off XML and an annotation without its image:
both are skipped and reported in the summary, the rest is converted (exit 0, no traceback)."""

from __future__ import annotations

from helpers import _error
from voc_fixture import make_voc


def test_voc2yolo_skips_broken_annotations(tmp_path, cli):
    voc = make_voc(tmp_path / "voc", n_images=4)
    ids = voc.stems
    xml = voc.root / "Annotations" / f"{ids[1]}.xml"
    assert len(xml.read_bytes()) > 400
    xml.write_bytes(xml.read_bytes()[:300])  # cut off mid-file
    (voc.root / "JPEGImages" / f"{ids[2]}.jpg").unlink()
    out = tmp_path / "yolo"
    rc, log = cli("data", "voc2yolo", "--voc", voc.root, "--out", out, "--quiet")
    assert rc == 0, log[-3000:]
    assert "Traceback" not in log
    summary = [ln for ln in log.splitlines() if "unreadable" in ln]
    assert len(summary) == 1 and f"{ids[1]}.xml" in summary[0] and "cannot parse VOC XML" in summary[0], log
    assert f"{ids[2]} (no image in" in log
    assert sorted(p.stem for p in (out / "labels/all").glob("*.txt")) == [ids[0], ids[3]]
    assert (out / "data.yaml").is_file()


def test_voc2yolo_with_no_readable_annotation_is_an_error(tmp_path, cli):
    voc = make_voc(tmp_path / "voc", n_images=4)
    for xml in (voc.root / "Annotations").glob("*.xml"):
        xml.write_text("<annotation><size>")
    rc, log = cli("data", "voc2yolo", "--voc", voc.root, "--out", tmp_path / "yolo", "--quiet")
    _error(rc, log, "data", "no readable VOC annotations", ".xml")
