"""Per-channel QLinearConv files on the engines that cannot run them (``forms.PER_CHANNEL_QLINEAR``).

DeepSparse 1.8 (stop 38): the form picker gives it the QDQ sibling on AVX-512 CPUs, and a compile failure
reads as the native assertion in one line plus the known cause; no DeepSparse needed, the worker is a
stand-in script that fails the way DeepSparse's native code does. OpenVINO 2026.4 (stop 39) scales the
weights along the wrong axis: the picker gives it the QDQ sibling on every CPU, and its engine refuses such a
file in one line when its probe finds the installed OpenVINO affected."""

from __future__ import annotations

import stat

import pytest
from test_int8_conv_padding import qat_net

import sparseyolo.runtime.engines as engines
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
@pytest.mark.parametrize("engine", ["deepsparse", "openvino"])
def test_the_engine_gets_the_qdq_file_where_it_cannot_run_the_qlinear_one(
    tmp_path, monkeypatch, engine, per_channel, avx512
):
    qdq, qlinear = int8_pair(tmp_path, per_channel)
    flags = {"AVX2": True, "AVX-512F": avx512, "AVX-512 VNNI": avx512}
    monkeypatch.setattr(system, "isa_flags", lambda cpuinfo=None: flags)
    # DeepSparse prefers QLinear and fails on per-channel files with AVX-512 only; OpenVINO runs the file
    # named, but never a per-channel QLinear one (its reader's bug is not CPU-dependent)
    avoid = per_channel and (avx512 or engine == "openvino")
    for named in (qdq, qlinear):
        path, note = pick_int8_file(named, engine)
        expected = qdq if avoid else (qlinear if engine == "deepsparse" else named)
        assert path == expected, note
        assert ("per-channel weight scales" in note) == (avoid and (engine == "deepsparse" or named == qlinear))
        assert pick_int8_file(named, engine, exact=True)[0] == named  # --exact-file runs what it names
    qdq.unlink()  # no sibling to fall back to: the named QLinear file runs, and the note says why not
    path, note = pick_int8_file(qlinear, engine)
    assert path == qlinear and (("there is no m.onnx" in note) == avoid), note


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("affected", [False, True], ids=["fixed_openvino", "affected_openvino"])
def test_openvino_refuses_a_per_channel_qlinear_file_in_one_line(tmp_path, monkeypatch, per_channel, affected):
    qdq, qlinear = int8_pair(tmp_path, per_channel)
    monkeypatch.setattr(engines, "openvino_per_channel_qlinear_ok", lambda: not affected)
    engines._refuse_per_channel_qlinear(qdq)  # QDQ files always go through
    if not (per_channel and affected):
        engines._refuse_per_channel_qlinear(qlinear)
        return
    with pytest.raises(SparseYoloError) as info:
        engines._refuse_per_channel_qlinear(qlinear)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(qlinear))
    assert "2 QLinearConv nodes have per-channel weight scales" in message and "run the QDQ file m.onnx" in message


def test_the_openvino_probe_matches_what_openvino_does_with_the_file(tmp_path):
    """The probe's verdict agrees with the real engine on a real per-channel QLinear export: where it says
    affected, OpenVINO fails to compile the file or its outputs differ from ONNX Runtime's."""
    pytest.importorskip("openvino")
    import numpy as np
    import openvino as ov

    from sparseyolo.runtime.sessions import ort_session

    _, qlinear = int8_pair(tmp_path, per_channel=True)
    engines.openvino_per_channel_qlinear_ok.cache_clear()
    ok = engines.openvino_per_channel_qlinear_ok()
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    session = ort_session(qlinear)
    reference = session.run(None, {session.get_inputs()[0].name: x})[0]
    core = ov.Core()
    try:
        got = core.compile_model(core.read_model(str(qlinear)), "CPU")(x)[0]
        agrees = np.allclose(got, reference, atol=0.05 * np.abs(reference).max())
    except Exception:
        agrees = False
    assert ok == agrees
    if not ok:
        with pytest.raises(SparseYoloError, match="per-channel weight scales"):
            engines.get_engine("openvino").load(qlinear)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_per_channel_qlinear_files_get_the_known_cause(tmp_path, per_channel):
    _, path = int8_pair(tmp_path, per_channel)
    assert per_channel_qlinear_convs(path) == (2 if per_channel else 0)
    explained = explain_compile_error(path, "deepsparse worker died (code 1): Assertion at x.hpp:333")
    assert explained.startswith("deepsparse worker died (code 1): Assertion at x.hpp:333")
    assert ("2 QLinearConv nodes have per-channel weight scales" in explained) == per_channel
    assert "give it the QDQ file" in explained if per_channel else explained.endswith("x.hpp:333")
    assert explain_compile_error(tmp_path / "missing.onnx", "m") == "m"  # an unreadable file: the message as is
