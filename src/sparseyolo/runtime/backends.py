"""ONNX exports behind the :class:`Backend` interface, run on ONNX Runtime, OpenVINO or DeepSparse.

:class:`OnnxBackend` decodes; the engine registry (:mod:`sparseyolo.runtime.engines`) executes: each
engine's ``Runner`` (an ONNX Runtime session, an OpenVINO compiled model, DeepSparse in this process or
in its worker) takes the preprocessed batch and returns the graph outputs in order.

ONNX files exported by ``sparseyolo export`` output, by default, the raw head tensors (one per
level, ``(bs, na*no, ny, nx)`` or ``(bs, na, ny, nx, no)``) and carry metadata props ``names``,
``stride``, ``anchors`` (pixels, ``(nl, na, 2)``), ``decode`` and ``imgsz`` (JSON strings); the
backend decodes them with :meth:`Detect.decode_xy_wh`. A single 3-D output ``(bs, N, 5 + nc)`` is
taken as already decoded. An export with NMS in the graph (metadata ``output_format: "nms"``, one
``(bs, max_det, 6)`` output of ``x1, y1, x2, y2, score, cls`` rows, zero-score padding) sets
``end2end``; :func:`postprocess` then filters instead of running NMS again. A uint8 input
(QOperator models) receives the raw uint8 pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from sparseyolo.evaluation.backend import Backend, TorchBackend, postprocess
from sparseyolo.runtime.engines import Runner, require_engine
from sparseyolo.runtime.forms import pick_int8_file
from sparseyolo.runtime.onnx_info import ModelInfo, read_model_info
from sparseyolo.utils.errors import SparseYoloError, WeightsError
from sparseyolo.utils.logging import LOGGER

__all__ = ["Backend", "TorchBackend", "OnnxBackend", "postprocess", "load_backend", "select_device"]


def _meta_json(meta: dict[str, str], key: str, path: Path) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        if key == "decode":
            return meta[key]
        raise WeightsError(f"{path}: ONNX metadata {key!r} is not valid JSON: {meta[key][:80]!r}") from None


class OnnxBackend(Backend):
    """A ``.onnx`` file run on ``engine`` (see the module docstring for the I/O forms).

    The model is compiled at construction (load errors surface there). Engines that take any input
    size (ONNX Runtime, OpenVINO) keep one runner over the file's dynamic axes; DeepSparse compiles
    one per input shape (``static_shapes``: ``val`` then letterboxes to one square size), keeping the
    last ``MAX_RUNNERS``.
    """

    kind = "onnx"
    MAX_RUNNERS = 4

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        engine: str = "onnxruntime",
        info: ModelInfo | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"ONNX file not found: {self.path}")
        self.device = torch.device("cpu")  # outputs are returned as CPU tensors
        self._engine = require_engine(engine)
        self.engine = self._engine.name
        self.threads = threads
        self.run_device = str(device) if self.engine == "onnxruntime" else "cpu"
        info = info or read_model_info(self.path)
        inp = info.inputs[0]
        self.input_name = inp.name
        self.input_dtype = inp.dtype
        self.uint8 = inp.dtype == "uint8"
        self.np_dtype = np.float16 if inp.dtype == "float16" else np.float32
        shape = inp.dims
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if len(shape) == 4 and all(isinstance(s, int) for s in shape[2:]):
            self.fixed_shape = (shape[2], shape[3])
        self.static = all(i.static for i in info.inputs)
        self.static_shapes = not self.static and not self._engine.dynamic_shapes
        self.outputs = [o.name for o in info.outputs]
        self.output_shapes = [o.dims for o in info.outputs]
        self._runners: dict[tuple[int, ...] | None, Runner] = {}
        self._load_head_meta(info.raw_metadata)
        if not self.static_shapes:  # compile now: a file the engine cannot load fails here, not mid-run
            self._runner(tuple(d if isinstance(d, int) else (1 if k == 0 else 64) for k, d in enumerate(shape)))

    def _runner(self, shape: tuple[int, ...]) -> Runner:
        """The runner for inputs of ``shape`` (one for all shapes unless ``static_shapes``)."""
        key = tuple(shape) if self.static_shapes else None
        runner = self._runners.get(key)
        if runner is None:
            if len(self._runners) >= self.MAX_RUNNERS:
                self._runners.pop(next(iter(self._runners))).release()
            if self.static_shapes:
                LOGGER.info(f"{self.engine}: compiling {self.path.name} for input {list(shape)}")
            runner = self._engine.load(
                self.path,
                int(shape[0]),
                self.threads,
                {self.input_name: tuple(shape)},
                {self.input_name: self.input_dtype},
                static=self.static,
                dynamic=not self.static_shapes,
                device=self.run_device,
            )
            self._runners[key] = runner
        return runner

    def close(self) -> None:
        while self._runners:
            self._runners.popitem()[1].release()

    def _load_head_meta(self, meta: dict[str, str]) -> None:
        names = _meta_json(meta, "names", self.path)
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names, key=lambda k: int(k))]
        anchors = _meta_json(meta, "anchors", self.path)
        strides = _meta_json(meta, "stride", self.path)
        self.decode_mode = _meta_json(meta, "decode", self.path) or "v5"
        self.anchors = torch.tensor(anchors, dtype=torch.float32) if anchors is not None else None
        self.strides = [float(s) for s in strides] if strides is not None else None
        if self.anchors is not None:
            self.anchors = self.anchors.view(len(self.strides or self.anchors), -1, 2)
        self.stride = int(max(self.strides)) if self.strides else 32
        self.decoded_output = len(self.outputs) == 1 and len(self.output_shapes[0]) == 3
        fmt = _meta_json(meta, "output_format", self.path)
        last = self.output_shapes[0][-1] if self.output_shapes[0] else None
        self.end2end = self.decoded_output and (
            fmt == "nms" or (fmt is None and last == 6 and names is not None and len(names) != 1)
        )
        if not self.decoded_output and (self.anchors is None or self.strides is None):
            raise WeightsError(
                f"{self.path}: raw head outputs need the 'anchors' and 'stride' metadata "
                "props (written by `sparseyolo export`)"
            )
        if names is None and self.end2end:
            raise WeightsError(f"{self.path}: an NMS-included export needs the 'names' metadata prop")
        if names is None:
            no = None
            if self.anchors is not None:
                shape = self.output_shapes[0]
                last = (
                    shape[-1]
                    if len(shape) in (3, 5)
                    else (shape[1] // self.anchors.shape[1] if isinstance(shape[1], int) else None)
                )
                no = last if isinstance(last, int) else None
            names = [f"class{i}" for i in range((no or 5) - 5)]
        self.names = list(names)

    def preprocess(self, imgs: torch.Tensor) -> np.ndarray:
        x = imgs.cpu().numpy()
        if self.uint8:
            return np.ascontiguousarray(x.astype(np.uint8, copy=False))
        return np.ascontiguousarray(x.astype(self.np_dtype) / self.np_dtype(255.0))

    def forward(self, x: np.ndarray) -> torch.Tensor:
        if self.fixed_shape and tuple(x.shape[2:]) != tuple(self.fixed_shape):
            raise WeightsError(
                f"{self.path} takes {self.fixed_shape[0]}x{self.fixed_shape[1]} inputs, "
                f"got {x.shape[2]}x{x.shape[3]}; use --img {self.fixed_shape[1]} and no --rect"
            )
        step = self.fixed_batch or len(x)
        chunks = []
        for i in range(0, len(x), step):
            part = np.ascontiguousarray(x[i : i + step])
            n = len(part)
            if self.fixed_batch and n < self.fixed_batch:  # a static batch: pad the last chunk, drop the padding
                part = np.concatenate([part, np.zeros((self.fixed_batch - n, *part.shape[1:]), part.dtype)])
            chunks.append([o[:n] for o in self._runner(part.shape).run({self.input_name: part})])
        outs = [np.concatenate([c[k] for c in chunks], 0) for k in range(len(self.outputs))]
        if self.decoded_output:
            return torch.from_numpy(outs[0]).float()
        return self.decode(outs, x.shape[2])

    def decode(self, outs: Sequence[np.ndarray], input_h: int) -> torch.Tensor:
        """Raw head outputs -> (bs, N, no), levels in the order of the metadata strides."""
        na = self.anchors.shape[1]
        head = SimpleNamespace(decode=self.decode_mode)
        from sparseyolo.models.detect import Detect

        levels = []
        for o in outs:
            t = torch.from_numpy(np.asarray(o)).float()
            if t.ndim == 4:  # (bs, na*no, ny, nx)
                bs, c, ny, nx = t.shape
                t = t.view(bs, na, c // na, ny, nx).permute(0, 1, 3, 4, 2)
            elif t.ndim != 5:
                raise WeightsError(f"{self.path}: unexpected head output shape {tuple(t.shape)}")
            ny = t.shape[2]
            stride = input_h / ny
            li = int(np.argmin([abs(s - stride) for s in self.strides]))
            levels.append((li, t))
        preds = []
        for li, t in sorted(levels, key=lambda p: p[0]):
            bs, _, ny, nx, no = t.shape
            grid = Detect.make_grid(nx, ny)
            anchor = self.anchors[li].view(1, na, 1, 1, 2)
            # the one decode implementation, called with a stand-in for the head's attributes
            xy, wh = Detect.decode_xy_wh(head, t[..., :2], t[..., 2:4], grid, anchor, self.strides[li])
            preds.append(torch.cat((xy, wh, t[..., 4:].sigmoid()), -1).reshape(bs, -1, no))
        return torch.cat(preds, 1)


def load_backend(
    weights: str | Path | nn.Module | Backend,
    device: str | torch.device = "cpu",
    half: bool = False,
    cfg: str | None = None,
    nc: int | None = None,
    engine: str | None = None,
    exact_file: bool = False,
    threads: int | None = None,
) -> Backend:
    """A backend from a module, a ``.onnx`` file, or anything ``models.load_model`` accepts
    (``.pt`` checkpoint, Darknet ``.weights`` with ``cfg``, URL, ``zoo:`` stub).

    ``engine`` (``.onnx`` only; default onnxruntime): onnxruntime, openvino or deepsparse; a missing
    engine raises one line with its install hint. For an int8 export the form that engine runs
    fastest is used (``W.onnx`` QDQ or ``W.qlinear.onnx``, see :mod:`sparseyolo.runtime.forms`), with
    a log line; ``exact_file`` runs the file named.
    """
    if isinstance(weights, Backend):
        return weights
    if isinstance(weights, nn.Module):
        if engine:
            raise SparseYoloError(f"--engine {engine}: engines apply to .onnx files, not to a PyTorch module")
        return TorchBackend(weights, device, half)
    if str(weights).lower().endswith(".onnx"):
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"ONNX file not found: {path}")
        name = require_engine(engine or "onnxruntime").name
        info = read_model_info(path)
        run_path, note = pick_int8_file(path, name, exact=exact_file, info=info)
        if note:
            LOGGER.info(note)
        return OnnxBackend(run_path, device, threads, name, info=info if run_path == path else None)
    if engine:
        raise SparseYoloError(
            f"--engine {engine}: engines apply to .onnx files and {weights} is not one; "
            f"export it (sparseyolo export --weights {weights}) or drop --engine"
        )
    from sparseyolo.models import load_model

    model, _ = load_model(weights, cfg=cfg, nc=nc)
    return TorchBackend(model, device, half)


def select_device(device: str | None) -> torch.device:
    """``''``/``None`` -> cuda:0 when available else cpu; ``'0'`` -> cuda:0; ``'cpu'`` -> cpu."""
    from sparseyolo.utils.errors import SparseYoloError

    d = (device or "").strip().lower()
    if d in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    d = d.replace("cuda:", "")
    if not torch.cuda.is_available():
        raise SparseYoloError(f"--device {device}: CUDA is not available; use --device cpu")
    first = d.split(",")[0]
    if not first.isdigit() or int(first) >= torch.cuda.device_count():
        raise SparseYoloError(f"--device {device}: invalid CUDA device (found {torch.cuda.device_count()})")
    return torch.device(f"cuda:{first}")
