"""Read what a benchmark needs from an ONNX file: its inputs (name, dtype, shape) and metadata.

Also decides the concrete input shape for a run from ``--batch-size`` / ``--img`` and the model's own
(possibly static) shape, so every engine receives the same input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.logging import LOGGER

# ONNX TensorProto element types -> numpy dtype names (the ones a model input can reasonably have)
_ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    4: "uint16",
}


@dataclass
class InputInfo:
    """One graph input: ``dims`` holds ints for static sizes and None (or a symbol name) for dynamic ones."""

    name: str
    dtype: str
    dims: list[int | str | None]

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.dims)


@dataclass
class ModelInfo:
    """``metadata``: JSON values decoded where they parse; ``raw_metadata``: the strings as stored.
    ``outputs``: the graph outputs in order (``dtype`` is ``"?"`` for element types not listed above)."""

    path: Path
    inputs: list[InputInfo]
    metadata: dict[str, object] = field(default_factory=dict)
    outputs: list[InputInfo] = field(default_factory=list)
    raw_metadata: dict[str, str] = field(default_factory=dict)
    op_types: set[str] = field(default_factory=set)  # op types of the main graph


def check_onnx_path(path: str | Path) -> Path:
    """Raise a clear error unless ``path`` is an existing ONNX file."""
    path = Path(path)
    if not path.exists():
        raise SparseYoloError(f"{path}: no such file")
    if path.is_dir():
        raise SparseYoloError(f"{path}: is a folder, expected an .onnx model file")
    if path.suffix.lower() != ".onnx":
        hint = (
            " (export it first: sparseyolo export --weights ...)" if path.suffix.lower() in {".pt", ".weights"} else ""
        )
        raise SparseYoloError(f"{path}: not an ONNX model (expected a .onnx file){hint}")
    return path


def read_model_info(path: str | Path) -> ModelInfo:
    """Parse the graph inputs and ``metadata_props`` of an ONNX file (weights are not loaded)."""
    import onnx

    path = check_onnx_path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / google.protobuf errors for foreign files
        raise SparseYoloError(f"{path}: cannot be read as an ONNX model ({type(e).__name__}: {e})") from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in initializers:  # old exporters list weights as inputs too
            continue
        tt = vi.type.tensor_type
        dtype = _ONNX_DTYPES.get(tt.elem_type)
        if dtype is None:
            raise SparseYoloError(f"{path}: input {vi.name!r} has unsupported element type {tt.elem_type}")
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        inputs.append(InputInfo(vi.name, dtype, dims))
    if not inputs:
        raise SparseYoloError(f"{path}: the ONNX graph has no inputs")
    outputs = [
        InputInfo(vi.name, _ONNX_DTYPES.get(vi.type.tensor_type.elem_type, "?"), _dims(vi.type.tensor_type))
        for vi in model.graph.output
    ]
    return ModelInfo(
        path,
        inputs,
        parse_metadata(model),
        outputs,
        {p.key: p.value for p in model.metadata_props},
        {n.op_type for n in model.graph.node},
    )


def _dims(tt) -> list[int | str | None]:
    return [
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None) for d in tt.shape.dim
    ]


def parse_metadata(model) -> dict[str, object]:
    """``metadata_props`` as a dict; values that are JSON (names, stride, anchors, ...) are decoded."""
    meta: dict[str, object] = {}
    for prop in model.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except (ValueError, TypeError):
            meta[prop.key] = prop.value
    return meta


def resolve_input_shapes(
    info: ModelInfo,
    batch_size: int | None,
    img: tuple[int, int] | None,
    default_batch: int = 1,
    default_img: tuple[int, int] = (512, 512),
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every input of ``info``.

    ``batch_size`` / ``img`` are None when the user did not give the flag. Policy (documented in the
    CLI help): a static dimension that conflicts with an explicitly given flag is an error naming the
    model, its shape and the flag; with the flag left at its default the model's static size wins
    with a warning. Dynamic dimensions take the flag's value or its default.
    """
    shapes = {}
    for inp in info.inputs:
        shape, overridden = [], []
        for axis, dim in enumerate(inp.dims):
            want, flag, default = _flag_for_axis(inp, axis, batch_size, img, default_batch, default_img)
            if isinstance(dim, int):
                if want is not None and dim != want:
                    raise SparseYoloError(
                        f"{info.path}: input {inp.name!r} has static shape {_fmt_dims(inp.dims)} but {flag} "
                        f"asks for {want} on axis {axis}; drop {flag.split('=')[0]} to use the model's shape "
                        f"or re-export the model with a matching size"
                    )
                if want is None and default is not None and dim != default:
                    overridden.append(f"{dim} (default {default}) on axis {axis}")
                shape.append(dim)
            elif want is not None:
                shape.append(want)
            elif default is not None:
                shape.append(default)
            else:
                raise SparseYoloError(
                    f"{info.path}: input {inp.name!r} has a dynamic axis {axis} ({dim!r}) in shape "
                    f"{_fmt_dims(inp.dims)} that no flag sets; re-export with a static shape"
                )
        if overridden:
            LOGGER.warning(
                f"{info.path.name}: using the static shape {_fmt_dims(inp.dims)} of input {inp.name!r}: "
                + ", ".join(overridden)
            )
        shapes[inp.name] = tuple(shape)
    return shapes


def _flag_for_axis(inp: InputInfo, axis: int, batch_size, img, default_batch, default_img):
    """(requested value or None, flag text, default) for one input axis; images are NCHW."""
    rank = len(inp.dims)
    if axis == 0:
        return batch_size, f"--batch-size={batch_size}", default_batch
    if rank == 4 and axis in (2, 3):
        i = axis - 2
        return (img[i] if img else None), f"--img={_fmt_img(img)}", default_img[i]
    return None, "", None


def _fmt_dims(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _fmt_img(img) -> str:
    if not img:
        return "?"
    return str(img[0]) if img[0] == img[1] else f"{img[0]} {img[1]}"


def random_inputs(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str], seed: int = 0) -> dict[str, np.ndarray]:
    """Random input data of each input's own dtype (uint8 models get uint8 pixels)."""
    rng = np.random.default_rng(seed)
    return {name: random_array(shape, dtypes[name], rng) for name, shape in shapes.items()}


def random_array(shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    info = np.iinfo(dt)
    return rng.integers(max(info.min, 0), min(info.max, 255) + 1, size=shape).astype(dt)
