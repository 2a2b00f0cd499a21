"""``sparseyolo export`` end to end on small checkpoints."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import qat_checkpoint

from sparseyolo.cli.main import main


@pytest.fixture(scope="module")
def tiny_model():
    from sparseyolo.models import build_model

    torch.manual_seed(0)
    return build_model("yolov3-tiny", nc=2, width_multiple=0.25, names=["cat", "dog"]).eval()


def test_export_fp32_checkpoint(tiny_model, tmp_path, capsys, caplog):
    from sparseyolo.models.checkpoint import save_checkpoint

    weights = save_checkpoint(tmp_path / "best.pt", model=tiny_model)
    rc = main(["export", "--weights", str(weights), "--img-size", "70", "64"])
    assert rc == 0
    out = tmp_path / "best.onnx"
    proto = onnx.load(out)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 96, 64]  # 70 rounded up to the max stride 32
    assert "multiple" in caplog.text
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["names"] == ["cat", "dog"] and meta["format"] == "fp32"
    assert not (tmp_path / "best.qlinear.onnx").exists()
    table = capsys.readouterr().out
    assert "best.onnx" in table and "gzip -9" in table


def test_export_qat_checkpoint_writes_qdq_and_qlinear(tiny_model, tmp_path, capsys):
    weights = qat_checkpoint(tiny_model, tmp_path / "q.pt", batches=2)
    rc = main(["export", "--weights", str(weights), "--img-size", "64", "--uint8-input"])
    assert rc == 0
    qdq, qlin = tmp_path / "q.onnx", tmp_path / "q.qlinear.onnx"
    assert qdq.exists() and qlin.exists()
    x = (np.random.default_rng(0).random((1, 3, 64, 64)) * 255).astype(np.uint8)
    outs = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x}) for p in (qdq, qlin)
    ]
    for a, b in zip(*outs, strict=False):
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()
    types = [n.op_type for n in onnx.load(qlin).graph.node]
    # the default form converts Conv only (DeepSparse's fastest); the rest stays QDQ around float ops
    assert types.count("QLinearConv") == 11
    assert not {"QLinearAdd", "QLinearLeakyRelu", "QLinearConcat"} & set(types) and "LeakyRelu" in types
    table = capsys.readouterr().out
    assert "q.qlinear.onnx" in table
    all_ops = "Conv,Add,LeakyRelu,Concat,MaxPool,Resize,Pad"
    assert main(["export", "--weights", str(weights), "--img-size", "64", "--qlinear-ops", all_ops]) == 0
    types = [n.op_type for n in onnx.load(qlin).graph.node]
    assert types.count("QLinearConv") == 11 and types.count("QLinearLeakyRelu") == 11


@pytest.mark.parametrize("cpu", ["avx2", "vnni"])
def test_qat_export_notes_saturation_for_8_bit_weights_without_vnni(tiny_model, tmp_path, caplog, monkeypatch, cpu):
    import sparseyolo.runtime.forms as forms

    monkeypatch.setattr(forms, "cpu_class", lambda flags=None: cpu)
    for bits in (8, 7):
        weights = qat_checkpoint(tiny_model, tmp_path / f"q{bits}.pt", weight_bits=bits, per_channel=bits == 7)
        caplog.clear()
        assert main(["export", "--weights", str(weights), "--img-size", "64"]) == 0
        noted = "saturate 8-bit weights here" in caplog.text and "onnxruntime-reference" in caplog.text
        assert noted == (cpu == "avx2" and bits == 8), (cpu, bits, caplog.text[-400:])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    rc = main(["export", "--weights", str(bad)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "broken.pt" in err and "error" in err
    rc = main(["export", "--weights", str(tmp_path / "missing.pt")])
    assert rc == 2


def test_simplify_without_onnxsim_warns(tiny_model, tmp_path, caplog, monkeypatch):
    import sys

    from sparseyolo.models.checkpoint import save_checkpoint

    monkeypatch.setitem(sys.modules, "onnxsim", None)  # behave as if it were not installed
    weights = save_checkpoint(tmp_path / "s.pt", model=tiny_model)
    rc = main(["export", "--weights", str(weights), "--img-size", "64", "--simplify", "--dynamic"])
    assert rc == 0 and (tmp_path / "s.onnx").exists()
    assert "onnxsim" in caplog.text
