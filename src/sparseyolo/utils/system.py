"""The machine a figure was measured on: CPU model, core count, int8-relevant ISA flags, engine versions.

Every speed figure (``sparseyolo benchmark`` JSON and notes, ``sparseyolo report`` notes, JSON and plot)
carries this, so a number read later says what it was measured on: the same int8 model runs several
times faster with AVX-512 VNNI or AMX than with AVX2 alone.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

# /proc/cpuinfo flag -> the name people know: the instructions int8 (and bf16) kernels of ONNX Runtime,
# OpenVINO and DeepSparse pick from (VNNI: int8 dot products in one instruction; AMX: tile matrix units)
ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}

# engine name -> the distributions that provide it (the first one installed wins)
ENGINE_DISTS = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "openvino": ("openvino",),
    "deepsparse": ("deepsparse", "deepsparse-nightly", "deepsparse-ent"),
}


def system_info(engine_versions: Mapping[str, str] | None = None) -> dict:
    """The machine as a JSON-able dict. ``engine_versions`` (engine -> version, e.g. from benchmark
    results: DeepSparse may run in its own venv) override the versions installed here."""
    flags = isa_flags()
    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "isa_flags": flags,
        "int8_isa": ", ".join(k for k, v in flags.items() if v) or ("none" if flags else "unknown"),
        "engines": installed_engine_versions() | dict(engine_versions or {}),
        "python": platform.python_version(),
        "machine": machine_line(),
    }


def usable_cpus() -> int | None:
    """CPUs this process may run on (the affinity mask of a container or taskset), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The ``flags`` of the first CPU in /proc/cpuinfo (``cpuinfo``: its text, for tests); None if unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def isa_flags(cpuinfo: str | None = None) -> dict[str, bool]:
    """{"AVX2": True, "AVX-512F": False, ...} for the int8-relevant flags; {} where the flags cannot be
    read (no /proc/cpuinfo: macOS, Windows)."""
    flags = _cpu_flags(cpuinfo)
    if flags is None:
        return {}
    return {name: flag in flags for flag, name in ISA_FLAGS.items()}


def installed_engine_versions() -> dict[str, str]:
    """Versions of the inference engines installed in this environment (package metadata; none imported)."""
    out = {}
    for engine, dists in ENGINE_DISTS.items():
        for dist in dists:
            try:
                out[engine] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def machine_line(cpuinfo: str | None = None, cpus: int | None = None) -> str:
    """One line for notes and plot subtitles: "AMD EPYC (2 cores; AVX2; no AVX-512 VNNI; no AMX)"."""
    model = _cpu_model() if cpuinfo is None else _model_from(cpuinfo) or "unknown CPU"
    cpus = usable_cpus() if cpus is None else cpus
    parts = [f"{cpus} core{'s' * (cpus != 1)}" if cpus else "? cores"]
    f = isa_flags(cpuinfo)
    if not f:
        parts.append("ISA flags unknown")
    else:
        parts.append("AVX-512F" if f["AVX-512F"] else "AVX2" if f["AVX2"] else "no AVX2")
        vnni = [k for k in ("AVX-512 VNNI", "AVX-VNNI") if f[k]]
        parts.append(", ".join(vnni) if vnni else "no AVX-512 VNNI")
        amx = [k.split("-", 1)[1] for k in ("AMX-INT8", "AMX-BF16") if f[k]]
        parts.append("AMX-" + "/".join(amx) if amx else "no AMX")
    return f"{model} ({'; '.join(parts)})"


def engines_line(versions: Mapping[str, str]) -> str:
    """Engine versions as one phrase: "onnxruntime 1.23.2, openvino 2025.4.1" (empty when none)."""
    return ", ".join(f"{k} {v}" for k, v in versions.items() if v)


def _cpu_model() -> str:
    try:
        model = _model_from(Path("/proc/cpuinfo").read_text())
        if model:
            return model
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _model_from(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""
