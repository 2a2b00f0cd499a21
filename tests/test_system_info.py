"""The machine line and system record that every speed figure carries."""

from __future__ import annotations

import json
import re

from sparseyolo.timing.output import results_json, results_notes
from sparseyolo.timing.runner import BenchResult
from sparseyolo.utils import system
from sparseyolo.utils.system import isa_flags, machine_line, system_info

BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov sse sse2 ssse3 sse4_1 sse4_2 avx"


def cpuinfo(model: str, flags: str) -> str:
    one = f"processor\t: 0\nvendor_id\t: X\nmodel name\t: {model}\nflags\t\t: {BASE} {flags}\n"
    return one + "\n" + one.replace("processor\t: 0", "processor\t: 1")


EPYC = cpuinfo("AMD EPYC", "avx2 fma")
SPR = cpuinfo(
    "Intel(R) Xeon(R) Platinum 8480+",
    "avx2 avx512f avx512bw avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8",
)
ICELAKE = cpuinfo("Intel(R) Xeon(R) Gold 6338", "avx2 avx512f avx512bw avx512_vnni")
ALDER = cpuinfo("12th Gen Intel(R) Core(TM) i7-12700", "avx2 avx_vnni")


def test_isa_flags():
    assert isa_flags(EPYC) == {
        "AVX2": True,
        "AVX-512F": False,
        "AVX-512 VNNI": False,
        "AVX-VNNI": False,
        "AMX-INT8": False,
        "AMX-BF16": False,
    }
    assert all(isa_flags(SPR).values())
    assert isa_flags("processor : 0\n") == {}  # no flags line: unknown, not "none"


def test_machine_line():
    assert machine_line(EPYC, cpus=2) == "AMD EPYC (2 cores; AVX2; no AVX-512 VNNI; no AMX)"
    assert (
        machine_line(SPR, cpus=8)
        == "Intel(R) Xeon(R) Platinum 8480+ (8 cores; AVX-512F; AVX-512 VNNI, AVX-VNNI; AMX-INT8/BF16)"
    )
    assert machine_line(ICELAKE, cpus=1) == "Intel(R) Xeon(R) Gold 6338 (1 core; AVX-512F; AVX-512 VNNI; no AMX)"
    assert machine_line(ALDER, cpus=4).endswith("(4 cores; AVX2; AVX-VNNI; no AMX)")
    assert machine_line("processor : 0\n", cpus=2) == "unknown CPU (2 cores; ISA flags unknown)"


def test_machine_line_here():
    line = machine_line()
    assert re.fullmatch(r".+ \(\d+ cores?; .+\)", line), line


def test_system_info(monkeypatch):
    monkeypatch.setattr(system, "_cpu_flags", lambda cpuinfo=None: {"avx2"})
    monkeypatch.setattr(system, "installed_engine_versions", lambda: {"onnxruntime": "1.2.3", "openvino": "9"})
    info = system_info({"deepsparse": "1.8.0", "openvino": "2025.1"})
    json.dumps(info)
    assert info["int8_isa"] == "AVX2"
    assert info["isa_flags"]["AVX-512 VNNI"] is False and info["isa_flags"]["AMX-INT8"] is False
    # measured versions (DeepSparse may run in its own venv) win over the installed ones
    assert info["engines"] == {"onnxruntime": "1.2.3", "openvino": "2025.1", "deepsparse": "1.8.0"}
    assert info["cpus_usable"] >= 1 and info["processor"]
    assert info["machine"].endswith("AVX2; no AVX-512 VNNI; no AMX)")
    monkeypatch.setattr(system, "_cpu_flags", lambda cpuinfo=None: set())
    assert system_info()["int8_isa"] == "none"
    monkeypatch.setattr(system, "_cpu_flags", lambda cpuinfo=None: None)
    assert system_info()["int8_isa"] == "unknown"


def _result(engine: str, version: str, status: str = "ok") -> BenchResult:
    lat = {"mean": 1.0, "p50": 1.0, "p90": 1.0, "p99": 1.0, "min": 1.0}
    if status != "ok":
        return BenchResult(model="m.onnx", engine=engine, status=status, message=f"{engine} missing")
    return BenchResult(
        model="m.onnx", engine=engine, engine_version=version, images_per_s=100.0, latency_ms=lat, ratio=1.0
    )


def test_benchmark_notes_and_json_record_the_machine():
    results = [_result("onnxruntime", "1.99.0"), _result("deepsparse", "", status="unavailable")]
    notes = results_notes(results).splitlines()
    assert notes[0] == f"Machine: {machine_line()}"
    assert "deepsparse: deepsparse missing" in notes
    doc = json.loads(results_json(results, {"threads": None}))
    s = doc["system"]
    assert s["engines"]["onnxruntime"] == "1.99.0" and s["machine"] == machine_line()
    assert set(s["isa_flags"]) <= set(system.ISA_FLAGS.values()) and s["int8_isa"]
