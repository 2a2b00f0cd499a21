"""Tests for sparseyolo.timing (engines, interleaved runner, CLI) on tiny ONNX models made here."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from helpers import export_onnx, tiny_cnn
from onnx import TensorProto, helper, numpy_helper

from sparseyolo.cli.main import main
from sparseyolo.runtime.engines import get_engine, parse_engines
from sparseyolo.runtime.onnx_info import read_model_info, resolve_input_shapes
from sparseyolo.timing.runner import BenchResult, _run_interleaved, benchmark
from sparseyolo.utils.errors import SparseYoloError

REPO = Path(__file__).resolve().parents[1]


def fully_conv_onnx(path: Path, dynamic_hw: bool = True) -> Path:
    """Conv-only model (any input size) with dynamic batch, H and W."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    axes = {"images": {0: "batch", 2: "h", 3: "w"}} if dynamic_hw else None
    torch.onnx.export(
        m,
        torch.zeros(1, 3, 32, 32),
        str(path),
        dynamo=False,
        opset_version=13,
        input_names=["images"],
        output_names=["out"],
        dynamic_axes=axes,
    )
    return path


def uint8_input_onnx(path: Path) -> Path:
    """uint8 NCHW input -> Cast -> scale -> Conv: like a QLinear export that takes raw pixels."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale")
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], ["fs"]),
        helper.make_node("Conv", ["fs", "w"], ["out"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "u8",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [w, scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bench")
    return {
        "dense": export_onnx(tiny_cnn(), d / "dense.onnx"),
        "sparse": export_onnx(tiny_cnn(sparsity=0.8), d / "sparse.onnx"),
        "static": export_onnx(tiny_cnn(), d / "static.onnx", dynamic=False),
        "conv": fully_conv_onnx(d / "conv.onnx"),
        "u8": uint8_input_onnx(d / "u8.onnx"),
    }


def test_interleaved_two_models_onnxruntime(models):
    res = benchmark(
        [models["dense"], models["sparse"]],
        ["onnxruntime"],
        img=(32, 32),
        threads=1,
        time_s=0.2,
        warmup_s=0.05,
        progress=False,
    )
    assert [r.status for r in res] == ["ok", "ok"]
    for r in res:
        assert r.images_per_s > 0 and r.iterations > 1 and r.seconds >= 0.2
        lat = r.latency_ms
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r.input_shapes == {"images": [1, 3, 32, 32]}
    assert res[0].ratio == pytest.approx(1.0)
    assert res[1].ratio == pytest.approx(res[1].images_per_s / res[0].images_per_s)


def test_batch_and_img_reach_the_model(models):
    (r,) = benchmark(
        [models["conv"]], ["onnxruntime"], batch_size=3, img=(48, 40), time_s=0.05, warmup_s=0, progress=False
    )
    assert r.status == "ok" and r.batch_size == 3 and r.input_shapes["images"] == [3, 3, 48, 40]
    # images/s counts images, not batches
    assert r.images_per_s == pytest.approx(3 * r.iterations / (r.seconds), rel=1e-6)


def test_uint8_model_gets_uint8_data(models):
    info = read_model_info(models["u8"])
    assert info.inputs[0].dtype == "uint8"
    runner = get_engine("onnxruntime").load(models["u8"], 1, 1, {"images": (1, 3, 16, 16)}, {"images": "uint8"})
    assert runner.inputs["images"].dtype == np.uint8 and runner.inputs["images"].max() > 1
    (out,) = runner.run()
    assert out.shape == (1, 4, 16, 16)
    (r,) = benchmark([models["u8"]], ["onnxruntime"], img=(16, 16), time_s=0.05, warmup_s=0, progress=False)
    assert r.status == "ok" and r.input_dtypes == {"images": "uint8"}


def test_static_shape_policy(models, caplog):
    info = read_model_info(models["static"])
    assert info.inputs[0].dims == [1, 3, 32, 32]
    with pytest.raises(SparseYoloError, match=r"static.onnx.*static shape \[1, 3, 32, 32\].*--img=64"):
        resolve_input_shapes(info, None, (64, 64))
    with pytest.raises(SparseYoloError, match=r"--batch-size=8"):
        resolve_input_shapes(info, 8, None)
    with caplog.at_level(logging.WARNING, logger="sparseyolo"):
        shapes = resolve_input_shapes(info, None, None)  # flags not given: the model's shape wins
    assert shapes == {"images": (1, 3, 32, 32)}
    assert "static shape [1, 3, 32, 32]" in caplog.text and "32 (default 512) on axis 2" in caplog.text
    assert resolve_input_shapes(info, 1, (32, 32)) == {"images": (1, 3, 32, 32)}
    dyn = read_model_info(models["conv"])
    assert resolve_input_shapes(dyn, None, None) == {"images": (1, 3, 512, 512)}


def test_interleaving_order():
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def time_slice(self, seconds, min_iters=1):
            calls.append(self.name)
            return [seconds / 2, seconds / 2]

        def close(self):
            pass

    runners = [(BenchResult(model=n, engine="fake", batch_size=2), Fake(n)) for n in "AB"]
    _run_interleaved(runners, time_s=0.1, warmup_s=0.0, progress=False)
    assert calls[:2] == ["A", "B"]  # warm-up
    timed = calls[2:]
    assert len(timed) >= 4 and timed == ["A", "B"] * (len(timed) // 2)
    for res, _ in runners:
        assert res.iterations == len(timed)  # 2 latencies per slice, one slice per round per runner
        assert res.images_per_s == pytest.approx(2 * res.iterations / res.seconds)


def test_missing_engine_is_reported_not_fatal(models, monkeypatch):
    from sparseyolo.runtime import engines

    def missing(self):
        raise ImportError("No module named 'openvino'", name="openvino")

    monkeypatch.setattr(engines.OpenVinoEngine, "_version", missing)
    res = benchmark(
        [models["dense"]], ["openvino", "onnxruntime"], img=(32, 32), time_s=0.05, warmup_s=0, progress=False
    )
    assert res[0].status == "unavailable" and "pip install openvino" in res[0].message
    assert res[1].status == "ok" and res[1].images_per_s > 0


def test_deepsparse_unavailable_without_worker(models, monkeypatch, tmp_path):
    import importlib.util

    if importlib.util.find_spec("deepsparse") is not None:
        pytest.skip("deepsparse importable in this interpreter")
    monkeypatch.setenv("SPARSEYOLO_DEEPSPARSE_PYTHON", str(tmp_path / "nope" / "python"))
    (r,) = benchmark([models["dense"]], ["deepsparse"], img=(32, 32), time_s=0.05, warmup_s=0, progress=False)
    assert r.status == "unavailable" and "setup_deepsparse.sh" in r.message


def test_parse_engines():
    assert parse_engines(["onnxruntime,openvino", "deepsparse", "openvino"]) == [
        "onnxruntime",
        "openvino",
        "deepsparse",
    ]
    assert parse_engines(None) == ["onnxruntime"]
    with pytest.raises(SparseYoloError, match="onnxruntime"):
        parse_engines(["onnxruntim"])


def test_cli_table_and_json(models, tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(
        [
            "benchmark",
            str(models["dense"]),
            str(models["sparse"]),
            "--engine",
            "onnxruntime",
            "--img",
            "32",
            "--time",
            "0.1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "| dense.onnx" in text and "| sparse.onnx" in text and "1.00x" in text
    doc = json.loads(out.read_text())
    assert [Path(r["model"]).name for r in doc["results"]] == ["dense.onnx", "sparse.onnx"]
    assert doc["settings"]["img"] == [32, 32] and doc["results"][0]["latency_ms"]["p99"] > 0


def test_cli_errors(models, tmp_path, capsys):
    txt = tmp_path / "model.pt"
    txt.write_bytes(b"not onnx")
    assert main(["benchmark", str(txt), "--time", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "model.pt" in err and "not an ONNX model" in err
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    assert main(["benchmark", str(bad), "--time", "0.1"]) == 2
    assert "broken.onnx" in capsys.readouterr().err
    assert main(["benchmark", str(models["static"]), "--img", "64", "--time", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "static.onnx" in err and "[1, 3, 32, 32]" in err


def test_openvino_runs(models):
    pytest.importorskip("openvino")
    (r,) = benchmark(
        [models["conv"]], ["openvino"], img=(32, 32), batch_size=2, threads=1, time_s=0.1, warmup_s=0, progress=False
    )
    assert r.status == "ok", r.message
    assert r.images_per_s > 0 and r.input_shapes["images"] == [2, 3, 32, 32]
    ov = get_engine("openvino").load(
        models["dense"], 1, 1, {"images": (1, 3, 32, 32)}, {"images": "float32"}, static=False
    )
    ort = get_engine("onnxruntime").load(models["dense"], 1, 1, {"images": (1, 3, 32, 32)}, {"images": "float32"})
    np.testing.assert_allclose(ov.run()[0], ort.run()[0], rtol=1e-3, atol=1e-4)


def _deepsparse_python() -> Path | None:
    env = os.environ.get("SPARSEYOLO_DEEPSPARSE_PYTHON")
    p = Path(env) if env else REPO / ".venv-deepsparse" / "bin" / "python"
    return p if p.exists() else None


def test_deepsparse_worker_matches_onnxruntime(models, monkeypatch):
    python = _deepsparse_python()
    if python is None:
        pytest.skip("no DeepSparse venv (scripts/setup_deepsparse.sh)")
    from sparseyolo.runtime.worker_client import RemoteRunner

    shapes, dtypes = {"images": (2, 3, 32, 32)}, {"images": "float32"}
    before = models["conv"].read_bytes()
    runner = get_engine("deepsparse").load(models["conv"], 2, 1, shapes, dtypes, static=False)
    assert isinstance(runner, RemoteRunner) or "deepsparse" in type(runner).__name__.lower()
    try:
        ort = get_engine("onnxruntime").load(models["conv"], 2, 1, shapes, dtypes)
        x = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
        np.testing.assert_allclose(runner.run({"images": x})[0], ort.run({"images": x})[0], rtol=1e-3, atol=1e-4)
        lat = runner.time_slice(0.05)
        assert len(lat) >= 1 and all(t > 0 for t in lat)
    finally:
        runner.release()
    if isinstance(runner, RemoteRunner):
        assert runner.client.proc.poll() is not None  # worker gone after close
    assert models["conv"].read_bytes() == before  # DeepSparse never rewrites the user's file
    monkeypatch.setenv("SPARSEYOLO_DEEPSPARSE_PYTHON", str(python))
    res = benchmark(
        [models["dense"], models["sparse"]],
        ["onnxruntime", "deepsparse"],
        img=(32, 32),
        threads=1,
        time_s=0.1,
        warmup_s=0,
        progress=False,
    )
    assert [r.status for r in res] == ["ok"] * 4, [r.message for r in res]
    assert res[2].engine_version.startswith("1.8")


def test_deepsparse_gets_a_private_static_copy(models):
    from sparseyolo.runtime.deepsparse_engine import _deepsparse_copy

    assert onnx.load(str(models["u8"])).ir_version > 9  # helper.make_model writes the newest IR
    tmp = _deepsparse_copy(models["u8"], {"images": (1, 3, 8, 8)}, static=False)
    try:
        m = onnx.load(str(tmp))
        assert m.ir_version == 9
        assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 8]
        runner = get_engine("onnxruntime").load(tmp, 1, 1, {"images": (1, 3, 8, 8)}, {"images": "uint8"})
        assert runner.run()[0].shape == (1, 4, 8, 8)  # same graph, still valid
    finally:
        tmp.unlink()
    assert _deepsparse_copy(models["static"], {"images": (1, 3, 32, 32)}, static=True) is None


def test_deepsparse_uint8_model(models, monkeypatch):
    python = _deepsparse_python()
    if python is None:
        pytest.skip("no DeepSparse venv (scripts/setup_deepsparse.sh)")
    monkeypatch.setenv("SPARSEYOLO_DEEPSPARSE_PYTHON", str(python))
    (r,) = benchmark([models["u8"]], ["deepsparse"], img=(16, 16), threads=1, time_s=0.05, warmup_s=0, progress=False)
    assert r.status == "ok", r.message
    assert r.input_dtypes == {"images": "uint8"} and r.iterations >= 1


def test_engine_load_defaults(models):
    runner = get_engine("onnxruntime").load(models["conv"], batch_size=2, threads=1)
    assert runner.shapes == {"images": (2, 3, 512, 512)} and runner.inputs["images"].dtype == np.float32
    x = np.zeros((2, 3, 64, 64), np.float32)
    assert runner.run(x)[0].shape == (2, 4, 32, 32)
    runner.release()
