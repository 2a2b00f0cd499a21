"""Inference engines behind one small interface, found by name in ``ENGINES``.

``engine.load(path, batch_size=1, threads=None) -> Runner``; a runner has ``run(inputs)`` (one
inference), ``time_slice(seconds)`` (repeat inference on its own random input for about ``seconds``,
return per-call latencies) and ``close()``. ``engine.available()`` says whether it can run here and,
if not, how to install it; the benchmark reports a missing engine instead of crashing.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sparseyolo.runtime.deepsparse_worker import time_slice
from sparseyolo.runtime.onnx_info import random_inputs
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.registry import Registry

ENGINES: Registry[type[Engine]] = Registry("engine")


class EngineUnavailable(SparseYoloError):
    """The engine is not installed (message carries the install hint)."""


class Runner:
    """A loaded model on one engine, with its benchmark input already made."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], seed: int = 0):
        self.shapes = dict(shapes)
        self.dtypes = dict(dtypes)
        self.inputs = random_inputs(self.shapes, self.dtypes, seed)
        self.cleanup_paths: list[Path] = []

    def run(self, inputs: Mapping[str, np.ndarray] | np.ndarray | None = None) -> list[np.ndarray]:
        """One inference on ``inputs`` (a dict by input name, a single array, or None = the random input)."""
        raise NotImplementedError

    def _feed(self, inputs) -> dict[str, np.ndarray]:
        if inputs is None:
            return self.inputs
        if isinstance(inputs, np.ndarray):
            if len(self.shapes) != 1:
                raise SparseYoloError(f"the model has {len(self.shapes)} inputs; pass a dict by input name")
            return {next(iter(self.shapes)): inputs}
        return dict(inputs)

    def time_slice(self, seconds: float, min_iters: int = 1) -> list[float]:
        """Latencies (s) of back-to-back inferences on the random input for about ``seconds``."""
        feed = self.inputs
        return time_slice(lambda: self._infer(feed), seconds, min_iters)

    def _infer(self, feed: dict[str, np.ndarray]) -> object:
        return self.run(feed)

    def close(self) -> None:
        """Free the engine's resources (a worker process, a session)."""

    def release(self) -> None:
        """``close()`` and delete temporary files made for this runner."""
        try:
            self.close()
        finally:
            for p in self.cleanup_paths:
                Path(p).unlink(missing_ok=True)


class Engine:
    """Base class: subclasses set ``name``/``install_hint`` and implement ``_version`` and ``load``.

    ``dynamic_shapes``: one compiled model takes inputs of any size along the file's dynamic axes
    (``load(..., dynamic=True)``); otherwise a model is compiled for one input shape.
    """

    name = ""
    install_hint = ""
    dynamic_shapes = False

    def available(self) -> tuple[bool, str]:
        """(True, version) if usable here, else (False, reason with install hint)."""
        try:
            return True, self._version()
        except ImportError as e:
            return False, f"not installed ({e}); {self.install_hint}"

    def version(self) -> str:
        ok, text = self.available()
        if not ok:
            raise EngineUnavailable(f"{self.name}: {text}")
        return text

    def _version(self) -> str:
        raise NotImplementedError

    def load(
        self,
        path: str | Path,
        batch_size: int = 1,
        threads: int | None = None,
        shapes: Mapping[str, tuple[int, ...]] | None = None,
        dtypes: Mapping[str, str] | None = None,
        static: bool | None = None,
        seed: int = 0,
        dynamic: bool = False,
        device: str = "cpu",
    ) -> Runner:
        """Compile ``path`` for ``batch_size`` using ``threads`` CPU threads (None = the engine's default).

        ``shapes`` / ``dtypes`` (per input name) default to the model's own, with dynamic axes set from
        ``batch_size`` and 512x512 images; ``static`` says whether the file's shapes are all fixed.
        ``dynamic``: keep the file's dynamic axes (engines with ``dynamic_shapes``; ``shapes`` then only
        size the random benchmark input). ``device``: ``cpu``, or a CUDA device for ONNX Runtime builds
        that have it (the other engines run on the CPU).
        """
        if shapes is None or dtypes is None or static is None:
            from sparseyolo.runtime.onnx_info import read_model_info, resolve_input_shapes

            info = read_model_info(path)
            shapes = shapes or resolve_input_shapes(info, batch_size, None)
            dtypes = dtypes or {i.name: i.dtype for i in info.inputs}
            static = all(i.static for i in info.inputs) if static is None else static
        options = {"dynamic": bool(dynamic and self.dynamic_shapes), "device": str(device)}
        return self._compile(
            Path(path), int(batch_size), threads, dict(shapes), dict(dtypes), bool(static), seed, **options
        )

    def _compile(
        self,
        path: Path,
        batch_size: int,
        threads: int | None,
        shapes: dict,
        dtypes: dict,
        static: bool,
        seed: int,
        dynamic: bool = False,
        device: str = "cpu",
    ) -> Runner:
        raise NotImplementedError


def get_engine(name: str) -> Engine:
    """An engine instance by registry name (unknown names list close matches)."""
    return ENGINES.get(name.strip().lower())()


def require_engine(name: str, flag: str = "--engine") -> Engine:
    """The engine ``name``, or one :class:`EngineUnavailable` line naming it and how to install it."""
    engine = get_engine(name)
    ok, text = engine.available()
    if not ok:
        raise EngineUnavailable(f"{flag} {engine.name}: {text}")
    return engine


def parse_engines(values: list[str] | str | None, default: str = "onnxruntime") -> list[str]:
    """``--engine a --engine b,c`` -> ["a", "b", "c"] (validated, order kept, duplicates dropped)."""
    if values is None:
        values = [default]
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if name and name not in names:
                ENGINES.get(name)  # raises with close matches for typos
                names.append(name)
    if not names:
        raise SparseYoloError("no engine given")
    return names


# ----------------------------------------------------------------------------------------------- ORT
class _OrtRunner(Runner):
    def __init__(self, session, shapes, dtypes, seed):
        super().__init__(shapes, dtypes, seed)
        self.session = session

    def run(self, inputs=None):
        return self.session.run(None, self._feed(inputs))

    def close(self):
        self.session = None


@ENGINES.register("onnxruntime")
class OnnxRuntimeEngine(Engine):
    """ONNX Runtime CPU: intra-op threads = ``threads``, sequential execution, all graph optimisations."""

    name = "onnxruntime"
    install_hint = "pip install onnxruntime"
    dynamic_shapes = True
    optimize = True  # ONNX Runtime's graph optimisations, which fuse QDQ into int8 kernels

    def _version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def _compile(self, path, batch_size, threads, shapes, dtypes, static, seed, dynamic=False, device="cpu"):
        from sparseyolo.runtime.sessions import ort_session

        session = ort_session(path, threads, device=device, optimize=self.optimize)
        return _OrtRunner(session, shapes, dtypes, seed)


@ENGINES.register("onnxruntime-reference")
class OnnxRuntimeReferenceEngine(OnnxRuntimeEngine):
    """ONNX Runtime with graph optimisations off: a QDQ file's int8 arithmetic computed on any CPU by
    float Quantize/DequantizeLinear around float ops (no fused int8 kernels), i.e. what int8 kernels
    compute where they do not saturate (VNNI / AMX CPUs), up to float rounding of a rare tie (a few
    values in 10^5, tests/test_export.py). Slow; for accuracy checks on a CPU
    without VNNI, where ONNX Runtime's own int8 kernels saturate 8-bit weights (docs/quantization.md).
    QLinear files are refused: their QLinearConv always runs ONNX Runtime's int8 kernel."""

    name = "onnxruntime-reference"
    optimize = False

    def _compile(self, path, batch_size, threads, shapes, dtypes, static, seed, dynamic=False, device="cpu"):
        from sparseyolo.runtime.onnx_info import read_model_info

        fused = sorted(read_model_info(path).op_types & {"QLinearConv", "QLinearMatMul", "ConvInteger"})
        if fused:
            raise SparseYoloError(
                f"{path}: --engine {self.name} runs QDQ files only, and this one has {', '.join(fused)} "
                "(int8 kernels); run the QDQ export W.onnx"
            )
        return super()._compile(path, batch_size, threads, shapes, dtypes, static, seed, dynamic, "cpu")


# ------------------------------------------------------------------------------------------ OpenVINO
class _OvRunner(Runner):
    def __init__(self, compiled, shapes, dtypes, seed):
        super().__init__(shapes, dtypes, seed)
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run(self, inputs=None):
        result = self.request.infer(self._feed(inputs))
        return [np.asarray(result[out]) for out in self.compiled.outputs]

    def _infer(self, feed):
        return self.request.infer(feed)  # skip copying outputs while timing

    def close(self):
        self.request = self.compiled = None


@functools.lru_cache(maxsize=1)
def openvino_per_channel_qlinear_ok() -> bool:
    """Whether the installed OpenVINO computes a ``QLinearConv`` with per-channel weight scales right.

    OpenVINO 2026.4.1's ONNX reader scales the weights along their input channels instead of their output
    channels (stop 39). The probe is a 1x1 conv, 2 channels in and out, all weights 1, scales (1, 2), on the
    uint8 input (3, 5): right is (8, 16), the misread axis gives (13, 13).
    """
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value, dtype) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, dtype=dtype), name)

    inits = [
        const("w", np.ones((2, 2, 1, 1)), np.int8),
        const("w_scale", [1.0, 2.0], np.float32),
        const("w_zero", [0, 0], np.int8),
        const("scale", 1.0, np.float32),
        const("zero", 0, np.uint8),
    ]
    conv = helper.make_node("QLinearConv", ["x", "scale", "zero", "w", "w_scale", "w_zero", "scale", "zero"], ["y"])
    graph = helper.make_graph(
        [conv],
        "per_channel_probe",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU")
        y = compiled(np.array([3, 5], np.uint8).reshape(1, 2, 1, 1))[0]
    except Exception:  # refusing to compile it is as much a failure as a wrong value
        return False
    return np.asarray(y).reshape(-1).tolist() == [8, 16]


def _refuse_per_channel_qlinear(path: Path) -> None:
    """OpenVINO fails to compile, or silently miscomputes, a per-channel QLinearConv file
    (:func:`openvino_per_channel_qlinear_ok`): stop here with one line that names the QDQ file."""
    from sparseyolo.runtime.forms import int8_sibling, per_channel_qlinear_convs

    if openvino_per_channel_qlinear_ok():  # probed once per process; then no file needs reading here
        return
    try:
        count = per_channel_qlinear_convs(path)
    except Exception:  # not readable as ONNX here: OpenVINO's own error says what is wrong
        return
    if count:
        raise SparseYoloError(
            f"{path}: {count} QLinearConv nodes have per-channel weight scales, which this OpenVINO applies along "
            f"the input channels (it fails, or computes wrong values); run the QDQ file {int8_sibling(path).name} "
            "instead (val, detect and benchmark pick it unless --exact-file is given)"
        )


@ENGINES.register("openvino")
class OpenVinoEngine(Engine):
    """OpenVINO CPU plugin with ``INFERENCE_NUM_THREADS`` = ``threads`` and the LATENCY hint (one stream).

    ``INFERENCE_PRECISION_HINT`` is pinned to f32: on CPUs with AVX-512 BF16 OpenVINO would otherwise
    run fp32 models in bfloat16, which changes accuracy and makes the comparison with the other engines
    unfair. int8 (QDQ) models still run in int8.
    """

    name = "openvino"
    precision = "f32"
    install_hint = "pip install openvino"
    dynamic_shapes = True

    def _version(self) -> str:
        import openvino

        return openvino.get_version() if hasattr(openvino, "get_version") else openvino.__version__

    def _compile(self, path, batch_size, threads, shapes, dtypes, static, seed, dynamic=False, device="cpu"):
        import openvino as ov

        _refuse_per_channel_qlinear(Path(path))
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            if not static and not dynamic:
                model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
            config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": self.precision}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise SparseYoloError(f"{path}: openvino cannot compile the model: {e}") from None
        return _OvRunner(compiled, shapes, dtypes, seed)


# registers "deepsparse" (its own module: the worker venv, file copies); imported last, as it builds on the above
from sparseyolo.runtime import deepsparse_engine  # noqa: E402, F401
