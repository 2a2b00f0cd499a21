"""Inference on every runtime: ONNX Runtime, OpenVINO and DeepSparse (through its worker process).

- ``engines``: the registry the benchmark times (``get_engine("openvino").load(path, ...)``), with
  ``deepsparse_engine`` beside it;
- ``sessions``: the one place ONNX Runtime sessions are made;
- ``backends``: ``val`` / ``detect`` model runners (ONNX files, and PyTorch via ``evaluation.backend``);
- ``predict`` and ``val``: ``sparseyolo detect`` and ``sparseyolo val``;
- ``onnx_info``: input shapes and metadata of an ONNX file.
"""

from sparseyolo.runtime.engines import ENGINES, Engine, EngineUnavailable, Runner, get_engine, parse_engines
from sparseyolo.runtime.onnx_info import ModelInfo, read_model_info, resolve_input_shapes

__all__ = [
    "ENGINES",
    "Engine",
    "EngineUnavailable",
    "Runner",
    "get_engine",
    "parse_engines",
    "ModelInfo",
    "read_model_info",
    "resolve_input_shapes",
]
