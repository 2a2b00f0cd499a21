"""``sparseyolo data voc2yolo`` on a VOC copy with a cut-off XML and an annotation without its image:
both are skipped and reported in the summary, the rest is converted (exit 0, no traceback)."""

from __future__ import annotations

import shutil

from test_bad_inputs import _error, cli  # noqa: F401,F811  (shared fixture)

IDS = ("2007_000027", "2007_000032", "2007_000033", "2007_000039")


def _voc_copy(shared_dir, root):
    src = shared_dir / "data/voc2012-sample"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i in IDS:
        shutil.copy(src / "Annotations" / f"{i}.xml", root / "Annotations")
        shutil.copy(src / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
    return root


def test_voc2yolo_skips_broken_annotations(shared_dir, tmp_path, cli):
    voc = _voc_copy(shared_dir, tmp_path / "voc")
    xml = voc / "Annotations" / f"{IDS[1]}.xml"
    xml.write_bytes(xml.read_bytes()[:300])  # cut off mid-file
    (voc / "JPEGImages" / f"{IDS[2]}.jpg").unlink()
    out = tmp_path / "yolo"
    rc, log = cli("data", "voc2yolo", "--voc", voc, "--out", out, "--quiet")
    assert rc == 0, log[-3000:]
    assert "Traceback" not in log
    summary = [ln for ln in log.splitlines() if "unreadable" in ln]
    assert len(summary) == 1 and f"{IDS[1]}.xml" in summary[0] and "cannot parse VOC XML" in summary[0], log
    assert f"{IDS[2]} (no image in" in log
    assert sorted(p.stem for p in (out / "labels/all").glob("*.txt")) == [IDS[0], IDS[3]]
    assert (out / "data.yaml").is_file()


def test_voc2yolo_with_no_readable_annotation_is_an_error(shared_dir, tmp_path, cli):
    voc = _voc_copy(shared_dir, tmp_path / "voc")
    for xml in (voc / "Annotations").glob("*.xml"):
        xml.write_text("<annotation><size>")
    rc, log = cli("data", "voc2yolo", "--voc", voc, "--out", tmp_path / "yolo", "--quiet")
    _error(rc, log, "data", "no readable VOC annotations", ".xml")
