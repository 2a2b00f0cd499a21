"""The bench/ scripts still run (tiny sizes, no timing claims: the numbers are not checked)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparseyolo.utils.errors import SparseYoloError

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_probe_conv_stack_has_the_requested_zeros(tmp_path):
    probe = load_script("sparse_kernel_probe")
    dense, sparse = tmp_path / "d.onnx", tmp_path / "s.onnx"
    probe.conv_stack(dense, 0.0, channels=16, size=8, layers=2, kernel=3)
    probe.conv_stack(sparse, 0.75, channels=16, size=8, layers=2, kernel=3)
    for path, lo, hi in ((dense, 0.0, 0.0), (sparse, 0.74, 0.76)):
        model = onnx.load(path)
        onnx.checker.check_model(model)
        weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("w")]
        assert len(weights) == 2
        for w in weights:
            assert lo <= float(np.mean(w == 0)) <= hi
    # the two files share their non-zero weights: only the zeros differ
    wd = numpy_helper.to_array(onnx.load(dense).graph.initializer[0])
    ws = numpy_helper.to_array(onnx.load(sparse).graph.initializer[0])
    assert np.array_equal(ws[ws != 0], wd[ws != 0])


def test_probe_runs_on_onnxruntime(capsys):
    probe = load_script("sparse_kernel_probe")
    assert (
        probe.main(
            [
                "--engines",
                "onnxruntime",
                "--channels",
                "8",
                "--size",
                "8",
                "--layers",
                "1",
                "--kernels",
                "1",
                "--time",
                "0.2",
                "--warmup",
                "0.05",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1 x Conv 1x1" in out and "sparse/dense" in out


def test_speedup_refuses_a_wrong_number_of_models():
    speedup = load_script("speedup")
    with pytest.raises(SparseYoloError, match="expected 3 or 4 ONNX files"):
        speedup.main(["a.onnx", "b.onnx"])
    with pytest.raises(SparseYoloError, match="--b8 needs as many files"):
        speedup.main(["a.onnx", "b.onnx", "c.onnx", "--b8", "a.onnx", "b.onnx", "c.onnx", "d.onnx"])


def test_run_script_exit_codes(capsys):
    from sparseyolo.utils.errors import run_script

    def bad() -> int:
        raise SparseYoloError("x.yaml:3: unknown key 'foo'")

    with pytest.raises(SystemExit) as e:
        run_script(bad, "tool.py")
    assert e.value.code == 2 and capsys.readouterr().err.strip() == "tool.py: error: x.yaml:3: unknown key 'foo'"
    with pytest.raises(SystemExit) as e:
        run_script(lambda: None, "tool.py")
    assert e.value.code == 0


def test_openvino_placement_writes_the_form_and_times_all_files(tmp_path, capsys):
    pytest.importorskip("openvino")
    import torch

    from sparseyolo.exporters import export_onnx
    from sparseyolo.models import build_model
    from sparseyolo.quantization import QATConfig, prepare_qat

    model = build_model("yolov3-tiny", nc=2, width_multiple=0.25).eval()
    prepare_qat(model, [f"model.{i}" for i in range(len(model.model) - 1)], QATConfig())
    model.train()
    model(torch.rand(2, 3, 64, 64))  # observers see data
    model.eval()
    qdq = export_onnx(model, tmp_path / "q.onnx", img_size=64)
    script = load_script("openvino_placement")
    assert script.main([str(qdq), "--time", "0.2", "--warmup", "0.05", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "q.openvino.onnx").is_file()
    assert "Q/DQ pairs bypassed" in out and "subgraphs" in out and "q.openvino.onnx" in out


def test_nncf_ptq_leaves_out_the_detect_convs(tmp_path):
    """bench/nncf_ptq.py keeps the Detect head in float, as our PTQ does: it must find exactly its convs
    (NNCF itself is not installed here; the comparison runs in its own venv)."""
    from sparseyolo.exporters import export_onnx
    from sparseyolo.models import build_model

    model = build_model("yolov3-tiny", nc=2, width_multiple=0.25).eval()
    path = export_onnx(model, tmp_path / "t.onnx", img_size=64)
    head = load_script("nncf_ptq").detect_convs(onnx.load(path))
    n_out = len(model.model[-1].m)
    assert len(head) == n_out == 2 and all(f"/model.{len(model.model) - 1}/m." in name for name in head)
    with pytest.raises(SystemExit, match="not a sparseyolo export"):
        load_script("nncf_ptq").detect_convs(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])))
