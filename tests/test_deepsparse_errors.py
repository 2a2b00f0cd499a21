"""DeepSparse 1.8 and per-channel QLinearConv files (stop 38): the form picker gives DeepSparse the QDQ
sibling on AVX-512 CPUs, and a compile failure reads as the native assertion in one line plus the known
cause. No DeepSparse needed: the worker is a stand-in script that fails the way DeepSparse's native code
does."""

from __future__ import annotations

import stat

import pytest
from test_int8_conv_padding import qat_net

import sparseyolo.utils.system as system
from sparseyolo.exporters import export_onnx, export_qlinear
from sparseyolo.runtime.deepsparse_engine import explain_compile_error
from sparseyolo.runtime.forms import per_channel_qlinear_convs, pick_int8_file
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


def int8_pair(tmp_path, per_channel: bool):
    """``m.onnx`` (QDQ) and its ``m.qlinear.onnx``."""
    qdq = export_onnx(qat_net(16, per_channel=per_channel), tmp_path / "m.onnx", img_size=64)
    return qdq, export_qlinear(qdq, tmp_path / "m.qlinear.onnx")


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("avx512", [False, True], ids=["avx2", "avx512"])
def test_deepsparse_gets_the_qdq_file_where_it_cannot_compile_the_qlinear_one(
    tmp_path, monkeypatch, per_channel, avx512
):
    qdq, qlinear = int8_pair(tmp_path, per_channel)
    flags = {"AVX2": True, "AVX-512F": avx512, "AVX-512 VNNI": avx512}
    monkeypatch.setattr(system, "isa_flags", lambda cpuinfo=None: flags)
    avoid = per_channel and avx512
    for named in (qdq, qlinear):
        path, note = pick_int8_file(named, "deepsparse")
        assert path == (qdq if avoid else qlinear), note
        assert ("per-channel weight scales" in note) == avoid
        assert pick_int8_file(named, "deepsparse", exact=True)[0] == named  # --exact-file runs what it names
    qdq.unlink()  # no sibling to fall back to: the named QLinear file runs, and the note says why not
    path, note = pick_int8_file(qlinear, "deepsparse")
    assert path == qlinear and (("there is no m.onnx" in note) == avoid), note


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_per_channel_qlinear_files_get_the_known_cause(tmp_path, per_channel):
    _, path = int8_pair(tmp_path, per_channel)
    assert per_channel_qlinear_convs(path) == (2 if per_channel else 0)
    explained = explain_compile_error(path, "deepsparse worker died (code 1): Assertion at x.hpp:333")
    assert explained.startswith("deepsparse worker died (code 1): Assertion at x.hpp:333")
    assert ("2 QLinearConv nodes have per-channel weight scales" in explained) == per_channel
    assert "give it the QDQ file" in explained if per_channel else explained.endswith("x.hpp:333")
    assert explain_compile_error(tmp_path / "missing.onnx", "m") == "m"  # an unreadable file: the message as is
