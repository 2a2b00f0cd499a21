"""Per-layer analysis of a model: parameters, sparsity, dense FLOPs, FLOPs left after sparsity,
quantization. Works on a torch ``nn.Module`` (forward hooks give output sizes) or an ONNX file
(shape inference, with an ONNX Runtime run as fallback for shapes inference cannot resolve).

FLOPs = 2 * MACs of every conv / linear at batch 1; "sparse FLOPs" = dense * (1 - sparsity), the
unstructured-sparsity approximation (what a sparsity-aware engine can skip at best).

A thinned model (structured pruning removed whole channels; ``model.yaml["widths"]`` records the
new layer sizes) is also compared with its full-width build: original weight shapes and FLOPs per
layer, parameters and FLOPs before and after thinning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.layer_shapes import conv_block, is_weight_layer, layer_flops, weight_layer_output_shapes
from sparseyolo.utils.logging import LOGGER

if TYPE_CHECKING:
    from sparseyolo.models.yolo import DetectionModel


@dataclass
class LayerStats:
    """One conv / linear layer. ``name`` is the weight's name (``model.0.conv.weight`` for torch)."""

    name: str
    op: str
    shape: list[int]
    params: int  # weight + bias elements
    zeros: int  # zero weight elements
    out_shape: list[int] | None = None
    flops: float | None = None
    quantized: bool = False
    original_shape: list[int] | None = None  # thinned model: the full-width build's weight shape
    original_flops: float | None = None

    @property
    def weight_numel(self) -> int:
        return int(math.prod(self.shape))

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weight_numel if self.weight_numel else 0.0

    @property
    def sparse_flops(self) -> float | None:
        return None if self.flops is None else self.flops * (1.0 - self.sparsity)

    @property
    def channels(self) -> tuple[int, int] | None:
        """(kept, original) output channels of a thinned model's layer."""
        return None if self.original_shape is None else (self.shape[0], self.original_shape[0])

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(sparsity=self.sparsity, sparse_flops=self.sparse_flops)
        if self.original_shape is None:  # not thinned: the keys of an unthinned analysis only
            del d["original_shape"], d["original_flops"]
        else:
            d["channels"] = list(self.channels)
        return d


@dataclass
class ModelAnalysis:
    source: str
    img: tuple[int, int]
    layers: list[LayerStats] = field(default_factory=list)
    total_params: int = 0  # every parameter of the model, not only conv / linear
    original_params: int | None = None  # thinned model: parameters and FLOPs of the full-width build
    original_flops: float | None = None

    def totals(self) -> dict[str, float | int | None]:
        weights = sum(l.weight_numel for l in self.layers)
        zeros = sum(l.zeros for l in self.layers)
        known = [l for l in self.layers if l.flops is not None]
        flops = sum(l.flops for l in known) if known else None
        sparse = sum(l.sparse_flops for l in known) if known else None
        return {
            "layers": len(self.layers),
            "params": self.total_params or sum(l.params for l in self.layers),
            "layer_params": sum(l.params for l in self.layers),
            "weights": weights,
            "zeros": zeros,
            "sparsity": zeros / weights if weights else 0.0,
            "flops": flops,
            "sparse_flops": sparse,
            "flops_reduction": (flops / sparse) if flops and sparse else None,
            "quantized_layers": sum(l.quantized for l in self.layers),
        }

    def thinning(self) -> dict[str, float | int | None] | None:
        """Before / after figures of a thinned model; None for a model that was not thinned."""
        if self.original_params is None:
            return None
        t = self.totals()
        flops, params = t["flops"], t["params"]
        channels = [layer.channels for layer in self.layers if layer.channels is not None]
        return {
            "flops_before": self.original_flops,
            "flops_after": flops,
            "flops_ratio": self.original_flops / flops if self.original_flops and flops else None,
            "params_before": self.original_params,
            "params_after": params,
            "channels_kept": sum(k for k, _ in channels),
            "channels_original": sum(o for _, o in channels),
            "layers_thinned": sum(layer.shape != layer.original_shape for layer in self.layers if layer.original_shape),
        }

    def to_dict(self) -> dict:
        d = {
            "source": self.source,
            "img": list(self.img),
            "totals": self.totals(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        thinning = self.thinning()
        if thinning is not None:
            d["thinning"] = thinning
        return d


# --------------------------------------------------------------------------------------------- torch
def _is_quantized(name: str, module, modules: dict) -> bool:
    """QAT: the layer has a weight fake-quantizer itself, or its parent block (Conv+BN folded) has one."""
    if getattr(module, "weight_fake_quant", None) is not None:
        return True
    block = conv_block(name, modules)
    return block is not None and getattr(block, "weight_fake_quant", None) is not None


def analyze_module(model, img: tuple[int, int] = (512, 512), source: str = "model") -> ModelAnalysis:
    """Analyse every Conv / Linear of ``model`` with one batch-1 forward pass at ``img`` (H, W)."""
    import torch

    modules = dict(model.named_modules())
    layers = {name: m for name, m in modules.items() if is_weight_layer(m)}
    if not layers:
        raise SparseYoloError(f"{source}: no convolution or linear layers to analyse")
    first = next(iter(layers.values()))
    ch = getattr(first, "in_channels", None) or first.in_features
    param = next(model.parameters())
    out_shapes: dict[str, list[int]] = {}
    try:
        out_shapes = weight_layer_output_shapes(model, torch.zeros(1, ch, *img, dtype=param.dtype, device=param.device))
    except Exception as e:
        LOGGER.warning(f"{source}: forward pass at {img[0]}x{img[1]} failed ({type(e).__name__}: {e}); FLOPs unknown")
    result = ModelAnalysis(source, img, total_params=sum(p.numel() for p in model.parameters()))
    for name, m in layers.items():
        w = m.weight.detach()
        bias = getattr(m, "bias", None)
        out = out_shapes.get(name)
        result.layers.append(
            LayerStats(
                name=f"{name}.weight",
                op=type(m).__name__,
                shape=list(w.shape),
                params=w.numel() + (bias.numel() if bias is not None else 0),
                zeros=0 if w.is_meta else int((w == 0).sum()),  # a meta model (layout only) has no values
                out_shape=out,
                flops=layer_flops(list(w.shape), out, conv=w.dim() > 2),
                quantized=_is_quantized(name, m, modules),
            )
        )
    original = full_width_model(model)
    if original is not None:
        add_original(result, analyze_module(original, img, source=f"{source} (full width)"))
    return result


def full_width_model(model) -> DetectionModel | None:
    """The full-width build of a thinned :class:`DetectionModel` (its YAML without ``widths``), on
    the meta device (layout only, nothing allocated); None for any other model."""
    import torch

    from sparseyolo.models.yolo import DetectionModel

    if not isinstance(model, DetectionModel) or not model.yaml.get("widths"):
        return None
    with torch.device("meta"):
        return DetectionModel({**model.yaml, "widths": None}, ch=model.yaml.get("ch", 3))


def add_original(thinned: ModelAnalysis, original: ModelAnalysis) -> None:
    """Record ``original`` (the full-width build of the same model) in ``thinned``: per-layer weight
    shapes and FLOPs by layer name, and the parameter and FLOP totals."""
    by_name = {layer.name: layer for layer in original.layers}
    for layer in thinned.layers:
        full = by_name.get(layer.name)
        if full is not None:
            layer.original_shape, layer.original_flops = full.shape, full.flops
    thinned.original_params = original.total_params
    thinned.original_flops = original.totals()["flops"]


# ---------------------------------------------------------------------------------------------- ONNX
# op -> (weight input index, bias input index or None, is quantized op)
_ONNX_LAYERS = {
    "Conv": (1, 2, False),
    "ConvTranspose": (1, 2, False),
    "Gemm": (1, 2, False),
    "MatMul": (1, None, False),
    "QLinearConv": (3, 8, True),
    "ConvInteger": (1, None, True),
    "MatMulInteger": (1, None, True),
    "QLinearMatMul": (3, None, True),
}
# ops that pass a weight through unchanged in value pattern (zeros stay zeros)
_PASS_THROUGH = {"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}


def analyze_onnx(path: str | Path, img: tuple[int, int] | None = None) -> ModelAnalysis:
    """Analyse every Conv / Gemm / weight MatMul (float, QDQ and QLinear forms) of an ONNX file at
    ``img`` (H, W; None = the model's static size, or 512 for dynamic axes)."""
    import onnx
    from onnx import numpy_helper

    from sparseyolo.exporters.packed import unpack_sparse_weights
    from sparseyolo.runtime.onnx_info import read_model_info, resolve_input_shapes

    info = read_model_info(path)
    model = onnx.load(str(info.path))
    unpack_sparse_weights(model)  # a --pack-sparse file: analyse the weights it rebuilds on load
    shapes = resolve_input_shapes(info, None, img if img else None)  # FLOPs are per image: batch is irrelevant
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:  # Constant nodes hold weights in some exporters
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            inits[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    first_shape = next(iter(shapes.values()))
    result = ModelAnalysis(
        str(info.path), (int(first_shape[-2]), int(first_shape[-1])) if len(first_shape) == 4 else (0, 0)
    )
    pending, used = [], set()
    for node in model.graph.node:
        spec = _ONNX_LAYERS.get(node.op_type)
        if spec is None or len(node.input) <= spec[0]:
            continue
        w_idx, b_idx, q_op = spec
        traced = _trace_weight(node.input[w_idx], inits, producers)
        if traced is None:
            continue  # an activation x activation MatMul, not a weight layer
        w, zero_point, dq, w_name = traced
        if q_op and node.op_type in ("QLinearConv", "QLinearMatMul") and len(node.input) > w_idx + 2:
            zp = inits.get(node.input[w_idx + 2])
            zero_point = zp if zp is not None else zero_point
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
            w = w.T  # report as (out, in) like torch
        bias = 0
        if b_idx is not None and len(node.input) > b_idx and node.input[b_idx]:
            b = _trace_weight(node.input[b_idx], inits, producers)
            bias = int(b[0].size) if b is not None else 0
            used.add(b[3] if b is not None else "")
        used.add(w_name)
        zeros = int(np.count_nonzero(_is_zero(w, zero_point)))
        pending.append(
            (
                node,
                LayerStats(
                    name=_display_name(w_name),
                    op=node.op_type,
                    shape=list(w.shape),
                    params=int(w.size) + bias,
                    zeros=zeros,
                    quantized=bool(q_op or dq),
                ),
            )
        )
    out_shapes = _onnx_output_shapes(model, shapes, [n.output[0] for n, _ in pending], info.path)
    for node, layer in pending:
        out = out_shapes.get(node.output[0])
        layer.out_shape = out
        layer.flops = layer_flops(layer.shape, out, conv="Conv" in node.op_type)
        result.layers.append(layer)
    if not result.layers:
        raise SparseYoloError(f"{info.path}: no convolution or linear layers to analyse")
    result.total_params = sum(l.params for l in result.layers) + _other_params(model, inits, used)
    return result


def _display_name(name: str) -> str:
    """``model.0.weight_fake_quant.QuantizeLinear_output_0_int`` -> ``model.0.weight`` (names that QDQ
    exports derive from the quantizer); other names are kept."""
    head, sep, _ = name.partition(".weight_")
    return f"{head}.weight" if sep and head.startswith("model") else name


def _is_zero(w: np.ndarray, zero_point) -> np.ndarray:
    if zero_point is None:
        return w == 0
    zp = np.asarray(zero_point)
    if zp.ndim == 1 and w.ndim > 1 and zp.size == w.shape[0]:  # per-output-channel zero points
        zp = zp.reshape((-1,) + (1,) * (w.ndim - 1))
    return w == zp


def _trace_weight(name: str, inits: dict, producers: dict, depth: int = 0):
    """(array, zero point or None, went through DequantizeLinear, initializer name) or None."""
    if name in inits:
        return inits[name], None, False, name
    node = producers.get(name)
    if node is None or depth > 6:
        return None
    if node.op_type == "DequantizeLinear":
        inner = _trace_weight(node.input[0], inits, producers, depth + 1)
        if inner is None:
            return None
        zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return inner[0], zp, True, inner[3]
    if node.op_type in _PASS_THROUGH:
        inner = _trace_weight(node.input[0], inits, producers, depth + 1)
        if inner is not None and node.op_type == "Transpose":
            return inner[0].T if inner[0].ndim == 2 else inner[0], inner[1], inner[2], inner[3]
        return inner
    return None


def _other_params(model, inits: dict, used: set) -> int:
    """Elements of float weight tensors outside conv / linear layers (quantizer scales, zero points and
    integer shape constants are not parameters)."""
    skip = set(used)
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            skip.update(n.input[1:])
        elif n.op_type in ("QLinearConv", "QLinearMatMul"):
            skip.update(n.input[i] for i in (1, 2, 4, 5, 6, 7) if i < len(n.input))
    return int(sum(a.size for k, a in inits.items() if k not in skip and a.dtype.kind == "f" and a.size > 1))


def _onnx_output_shapes(model, input_shapes: dict, names: list[str], path: Path) -> dict[str, list[int]]:
    """Output shapes of ``names`` at batch 1: shape inference, then an ONNX Runtime run for the rest."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for vi in fixed.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, size in zip(dims, input_shapes[vi.name], strict=False):
                d.ClearField("dim_param")
                d.dim_value = int(size)
    shapes: dict[str, list[int]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = [int(d.dim_value) for d in dims]
    except Exception as e:  # inference is best effort; the run below fills the gaps
        LOGGER.debug(f"{path}: shape inference failed: {e}")
    missing = [n for n in names if n not in shapes]
    if missing:
        shapes.update(_ort_shapes(fixed, input_shapes, missing, path))
    return shapes


def _ort_shapes(model, input_shapes: dict, names: list[str], path: Path) -> dict[str, list[int]]:
    import onnx

    from sparseyolo.runtime.onnx_info import random_array
    from sparseyolo.runtime.sessions import ort_session

    existing = {o.name for o in model.graph.output}
    for n in names:
        if n not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=n))
    try:
        sess = ort_session(model.SerializeToString(), label=path)
        dtypes = {i.name: i.type for i in sess.get_inputs()}
        rng = np.random.default_rng(0)
        feed = {k: random_array(v, _ort_dtype(dtypes[k]), rng) for k, v in input_shapes.items()}
        outs = sess.run(names, feed)
        return {n: list(o.shape) for n, o in zip(names, outs, strict=False)}
    except Exception as e:
        LOGGER.warning(f"{path}: could not determine {len(names)} layer output shapes ({e}); their FLOPs are unknown")
        return {}


def _ort_dtype(ort_type: str) -> str:
    return {
        "tensor(float)": "float32",
        "tensor(uint8)": "uint8",
        "tensor(int8)": "int8",
        "tensor(float16)": "float16",
        "tensor(int64)": "int64",
    }.get(ort_type, "float32")
