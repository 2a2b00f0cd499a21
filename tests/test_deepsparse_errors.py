"""What a DeepSparse compile failure tells the user: the native assertion as one line, and the known cause
(per-channel QLinearConv weight scales, stop 38) when the file shows it. No DeepSparse needed: the worker
is a stand-in script that fails the way DeepSparse 1.8's native code does."""

from __future__ import annotations

import stat

import onnx
import pytest
from test_int8_conv_padding import qat_net

from sparseyolo.exporters import convert_to_qlinear, export_onnx
from sparseyolo.runtime.deepsparse_engine import explain_compile_error, per_channel_qlinear_convs
from sparseyolo.runtime.worker_client import WorkerClient
from sparseyolo.utils.errors import SparseYoloError

CRASH = """#!/bin/sh
cat >&2 <<'EOF'
DeepSparse, Copyright 2021-present / Neuralmagic, Inc. version: 1.8.0 COMMUNITY
Thread: 0x7feb8be6f6c0

Assertion at ./src/include/wand/jit/pooling/avx512_noninterleaved_layout.hpp:333

Backtrace:
 0# wand::detail::assert_fail(char const*, char const*, int) in libonnxruntime.so.1.15.1
    [ff4883c42048837d800074b6488bb558ffffff41b825020000488d0dcad4e4fe]
Please email a copy of this stack trace and any additional information to: support@neuralmagic.com
EOF
exit 1
"""


def test_a_native_assertion_is_the_one_line_the_user_sees(tmp_path):
    python = tmp_path / "python"
    python.write_text(CRASH)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    client = WorkerClient(python)
    try:
        with pytest.raises(SparseYoloError) as info:
            client.request({"cmd": "version"})
    finally:
        client.close()
    message = str(info.value)
    where = "./src/include/wand/jit/pooling/avx512_noninterleaved_layout.hpp:333"
    assert message == f"deepsparse worker died (code 1): Assertion at {where}"


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_per_channel_qlinear_files_get_the_known_cause(tmp_path, per_channel):
    qdq = export_onnx(qat_net(16, per_channel=per_channel), tmp_path / "m.onnx", img_size=64)
    proto, _ = convert_to_qlinear(onnx.load(qdq))
    path = tmp_path / "m.qlinear.onnx"
    onnx.save(proto, path)
    assert per_channel_qlinear_convs(path) == (2 if per_channel else 0)
    explained = explain_compile_error(path, "deepsparse worker died (code 1): Assertion at x.hpp:333")
    assert explained.startswith("deepsparse worker died (code 1): Assertion at x.hpp:333")
    assert ("2 QLinearConv nodes have per-channel weight scales" in explained) == per_channel
    assert "--exact-file" in explained if per_channel else explained.endswith("x.hpp:333")
    assert explain_compile_error(tmp_path / "missing.onnx", "m") == "m"  # an unreadable file: the message as is
