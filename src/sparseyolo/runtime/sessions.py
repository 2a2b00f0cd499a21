"""The one place ONNX Runtime sessions are made, so every caller gets the same options and errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sparseyolo.utils.errors import WeightsError


def ort_session(
    model: str | Path | bytes,
    threads: int | None = None,
    device: str = "cpu",
    label: str | Path | None = None,
    optimize: bool = True,
    disabled_optimizers: tuple[str, ...] = (),
    profile_prefix: str | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` over a file path or serialized model bytes.

    All graph optimisations (none with ``optimize=False``: every node then runs as the ONNX operator
    it is, so a QDQ graph computes its int8 arithmetic through float Quantize/DequantizeLinear and
    Conv instead of fused int8 kernels), sequential execution with ``threads`` intra-op threads
    (``None``/0 = ONNX Runtime's default: all physical cores), warnings off. ``device`` other than
    ``cpu``/``''`` puts CUDA first when this onnxruntime build has it. A model ONNX Runtime cannot
    load raises one :class:`WeightsError` line naming ``label`` (default: the path).
    ``disabled_optimizers`` names ONNX Runtime graph transformers to skip (e.g.
    ``QDQPropagationTransformer``); ``profile_prefix`` turns on ONNX Runtime's profiler (``end_profiling()``
    returns the JSON file it wrote).
    """
    import onnxruntime as ort

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    opts = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads or 0)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if disabled_optimizers:
        opts.add_session_config_entry("optimization.disable_specified_optimizers", ",".join(disabled_optimizers))
    if profile_prefix:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    providers = ["CPUExecutionProvider"]
    if str(device) not in ("cpu", "") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for corrupt models
        name = label if label is not None else ("<in-memory model>" if isinstance(model, bytes) else model)
        raise WeightsError(f"{name}: ONNX Runtime cannot load the model: {e}") from None
