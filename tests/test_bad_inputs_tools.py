"""``sparseyolo analyze`` / ``report`` with unusable inputs: exit 2, the file named, no traceback."""

from __future__ import annotations

from helpers import _error


def test_analyze_corrupt_files(cli, tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07garbage" * 50)
    rc, log = cli("analyze", onnx, "--no-plot", "--save-dir", tmp_path / "out")
    _error(rc, log, "analyze", str(onnx), "cannot be read as an ONNX model")
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # a zip header and nothing else: a cut-off checkpoint
    rc, log = cli("analyze", pt, "--no-plot", "--save-dir", tmp_path / "out")
    _error(rc, log, "analyze", str(pt))


def test_report_bad_run_folders(cli, tmp_path):
    rc, log = cli("report", tmp_path / "no-run", "--no-export", "--quiet", "--out", tmp_path / "r.md")
    _error(rc, log, "report", str(tmp_path / "no-run"), "not a run folder")
    run = tmp_path / "exp"
    (run / "weights").mkdir(parents=True)
    (run / "opt.yaml").write_text("epochs: 3\nrecipe: [a\n")
    rc, log = cli("report", run, "--no-export", "--quiet", "--out", tmp_path / "r.md")
    msg = _error(rc, log, "report", f"{run / 'opt.yaml'}:", "invalid YAML")
    assert "\n" not in msg.strip()  # one line, not the parser's multi-line dump
