"""``ort_session``'s profiler and disabled-optimizer options, on the graph rewrite they were added to
measure: ONNX Runtime's QDQ propagation moves a float first conv's quantizer in front of the MaxPool
(docs/results.md, stop 37)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from test_int8_conv_padding import Block
from torch import nn

import sparseyolo.exporters.onnx as onnx_export
from sparseyolo.exporters import export_onnx
from sparseyolo.quantization import QATConfig, freeze_bn_stats, prepare_qat
from sparseyolo.runtime.sessions import ort_session


def profiled_quantizers(path: Path, tmp_path: Path, disabled: tuple[str, ...]) -> list[str]:
    """The QuantizeLinear nodes ONNX Runtime ran, by the profile ``ort_session`` wrote."""
    sess = ort_session(path, 1, disabled_optimizers=disabled, profile_prefix=str(tmp_path / "p"))
    sess.run(None, {"images": np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)})
    events = json.loads(Path(sess.end_profiling()).read_text())
    return sorted(
        e["name"].removesuffix("_kernel_time")
        for e in events
        if e.get("cat") == "Node" and e["args"].get("op_name") == "QuantizeLinear"
    )


def test_qdq_propagation_moves_the_quantizer_before_the_maxpool_unless_disabled(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(Block(3, 16), nn.MaxPool2d(2), Block(16, 16))
    prepare_qat(net, ["2"], QATConfig())  # the first conv stays float; block 2 quantizes its input
    net.train()
    net(torch.rand(2, 3, 64, 64))
    freeze_bn_stats(net)
    # the export as traced: the shipped one moves the MaxPool before the activation, which stops the
    # propagation (tests/test_pool_order.py)
    monkeypatch.setattr(onnx_export, "pool_before_activation", lambda model: 0)
    path = export_onnx(net.eval(), tmp_path / "float_first_conv.onnx", img_size=64)
    assert profiled_quantizers(path, tmp_path, ()) == ["/0/act/LeakyRelu_output_0_q"]  # before the MaxPool
    assert profiled_quantizers(path, tmp_path, ("QDQPropagationTransformer",)) == ["/2/input_quant/QuantizeLinear"]
