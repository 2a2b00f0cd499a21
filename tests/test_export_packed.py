"""Packed sparse weights (``export --pack-sparse``): same outputs, smaller file, exact round trip."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from helpers import prune, randomize_bn, session

from sparseyolo.exporters import (
    export_onnx,
    gzip_size,
    pack_sparse_file,
    pack_sparse_weights,
    unpack_sparse_weights,
)
from sparseyolo.utils.errors import SparseYoloError


@pytest.fixture(scope="module")
def sparse_onnx(tmp_path_factory):
    """A yolov3-tiny (half width) pruned to 80% zeros, exported FP32, and its packed copy."""
    from sparseyolo.models import build_model

    torch.manual_seed(0)
    model = build_model("yolov3-tiny", nc=3, width_multiple=0.5).eval()
    randomize_bn(model, seed=3, bias_halfwidth=0.5)
    prune(model, amount=0.8)
    d = tmp_path_factory.mktemp("packed")
    plain = export_onnx(model, d / "sparse.onnx", img_size=64)
    packed = d / "sparse.packed.onnx"
    names = pack_sparse_file(plain, packed)
    return plain, packed, names


def inits(proto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


def test_packed_file_runs_bit_identical_and_is_smaller(sparse_onnx):
    plain, packed, names = sparse_onnx
    weights = inits(onnx.load(plain))
    convs = [n.input[1] for n in onnx.load(plain).graph.node if n.op_type == "Conv"]
    assert names == [w for w in convs if weights[w].size >= 1024]  # tiny tensors and dense biases stay
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    ref, got = (session(p).run(None, {"images": x}) for p in (plain, packed))
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)
    assert gzip_size(packed) < 0.9 * gzip_size(plain)


def test_unpack_restores_the_plain_model_exactly(sparse_onnx):
    plain, packed, _ = sparse_onnx
    a, b = onnx.load(plain), onnx.load(packed)
    assert {p.key for p in b.metadata_props} - {p.key for p in a.metadata_props} == {"sparse_packing"}
    assert unpack_sparse_weights(b) == len(sparse_onnx[2])
    ia, ib = inits(a), inits(b)
    assert ia.keys() == ib.keys() and all(np.array_equal(ia[k], ib[k]) and ia[k].dtype == ib[k].dtype for k in ia)
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert [p.key for p in a.metadata_props] == [p.key for p in b.metadata_props]
    assert unpack_sparse_weights(a) == 0  # a plain model is left alone


def test_analyze_sees_the_same_sparsity_in_packed_files(sparse_onnx):
    from sparseyolo.analysis.layers import analyze_onnx

    plain, packed, _ = sparse_onnx
    ra, rb = analyze_onnx(plain), analyze_onnx(packed)
    assert [(l.name, l.zeros, l.params, l.flops) for l in ra.layers] == [
        (l.name, l.zeros, l.params, l.flops) for l in rb.layers
    ]
    assert sum(l.zeros for l in rb.layers) > 0.7 * sum(l.params for l in rb.layers)


def test_dense_and_already_packed_models(sparse_onnx, tmp_path):
    from sparseyolo.models import build_model

    dense = export_onnx(build_model("yolov3-tiny", nc=3, width_multiple=0.25).eval(), tmp_path / "d.onnx", img_size=64)
    assert pack_sparse_file(dense, tmp_path / "d.packed.onnx") == []
    assert not (tmp_path / "d.packed.onnx").exists()
    with pytest.raises(SparseYoloError, match="already packed"):
        pack_sparse_weights(onnx.load(sparse_onnx[1]))


def test_corrupt_packed_weights_are_a_clear_error(sparse_onnx):
    proto = onnx.load(sparse_onnx[1])
    bits = next(t for t in proto.graph.initializer if t.name.endswith("__bits"))
    arr = onnx.numpy_helper.to_array(bits).copy()
    arr[0] ^= 0xFF  # flip eight mask bits: the values no longer line up
    bits.CopyFrom(onnx.numpy_helper.from_array(arr, bits.name))
    with pytest.raises(SparseYoloError, match="set bits but"):
        unpack_sparse_weights(proto)


def test_openvino_runs_packed_file_identically(sparse_onnx):
    ov = pytest.importorskip("openvino")
    plain, packed, _ = sparse_onnx
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": 1})
    outs = []
    for path in (plain, packed):
        compiled = core.compile_model(str(path), "CPU")
        result = compiled(x)
        outs.append([result[o] for o in compiled.outputs])
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cli_pack_sparse(tmp_path, capsys, caplog):
    from sparseyolo.cli.main import main
    from sparseyolo.models import build_model
    from sparseyolo.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("yolov3-tiny", nc=2, width_multiple=0.25, names=["a", "b"]).eval()
    weights = save_checkpoint(tmp_path / "dense.pt", model=model)
    assert main(["export", "--weights", str(weights), "--img-size", "64", "--pack-sparse"]) == 0
    assert "no float weight with at least 25% zeros" in caplog.text
    assert not (tmp_path / "dense.packed.onnx").exists()

    sparse = copy.deepcopy(model)
    prune(sparse, amount=0.7)
    weights = save_checkpoint(tmp_path / "best.pt", model=sparse)
    capsys.readouterr()
    assert main(["export", "--weights", str(weights), "--img-size", "64", "--pack-sparse"]) == 0
    table = capsys.readouterr().out
    assert "best.onnx" in table and "best.packed.onnx" in table
    x = np.random.default_rng(2).random((1, 3, 64, 64), dtype=np.float32)
    ref, got = (session(tmp_path / f).run(None, {"images": x}) for f in ("best.onnx", "best.packed.onnx"))
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)
