"""ONNX export of a DetectionModel: FP32 (BN folded) or, for a QAT model, QDQ int8.

The head's outputs are raw by default (one ``(bs, na, ny, nx, 5 + nc)`` tensor per level, as in the
seed); ``include_nms=True`` adds box decoding and NMS in the graph and gives a single
``(bs, max_det, 6)`` output. Everything a runtime needs to post-process (names, strides, anchors,
decode, image size, format) goes into ``metadata_props`` as JSON strings.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from sparseyolo.exporters import graph as G
from sparseyolo.exporters.pool_order import pool_before_activation
from sparseyolo.models.common import fold_batchnorm
from sparseyolo.quantization import disable_observers, is_qat_model
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.io import atomic_write_bytes
from sparseyolo.utils.logging import LOGGER

DEFAULT_OPSET = 13
MIN_OPSET, MAX_OPSET = 13, 17  # 13: per-channel Q/DQ; 17: the newest DeepSparse 1.8 (onnx<1.15) reads safely


def check_img_size(img_size: int | tuple[int, int] | list[int], stride: int) -> tuple[int, int]:
    """``(h, w)`` rounded up to a multiple of ``stride`` (with a warning when changed)."""
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    size = tuple(int(s) for s in img_size)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) <= 0:
        raise SparseYoloError(f"--img-size must be one or two positive integers, got {list(img_size)}")
    fixed = tuple(int(math.ceil(s / stride) * stride) for s in size)
    if fixed != size:
        LOGGER.warning(f"image size {list(size)} is not a multiple of the max stride {stride}; using {list(fixed)}")
    return fixed  # type: ignore[return-value]


def model_metadata(
    model: nn.Module,
    img_size: tuple[int, int],
    fmt: str,
    input_dtype: str = "float32",
    include_nms: bool = False,
    max_det: int | None = None,
    output_names: list[str] | None = None,
    conf_thres: float | None = None,
    iou_thres: float | None = None,
) -> dict[str, object]:
    """The ``metadata_props`` of an exported detector (values are JSON-encoded on write)."""
    detect = model.model[-1] if hasattr(model, "model") else None
    meta: dict[str, object] = {
        "names": list(getattr(model, "names", [])),
        "nc": int(getattr(model, "nc", getattr(detect, "nc", 0))),
        "imgsz": [int(img_size[0]), int(img_size[1])],
        "format": fmt,
        "input_dtype": input_dtype,
        "input_scale": 1.0 if input_dtype == "uint8" else 1.0 / 255.0,
        "output_format": "nms" if include_nms else "raw",
        "outputs": output_names or [],
    }
    if detect is not None and hasattr(detect, "anchors"):
        meta.update(
            {
                "stride": [int(s) for s in detect.stride.tolist()],
                "anchors": detect.anchors.tolist(),
                "na": int(detect.na),
                "decode": str(getattr(detect, "decode", "v5")),
            }
        )
    if include_nms:
        meta["max_det"] = int(max_det or 0)
        meta["conf_thres"], meta["iou_thres"] = conf_thres, iou_thres
        meta["output_layout"] = (
            "detections: (batch, max_det, 6) rows x1, y1, x2, y2, score, class in input "
            "pixels, sorted by score; rows with score 0 are padding"
        )
    else:
        meta["output_layout"] = (
            "one raw tensor per level: (batch, na, ny, nx, 5 + nc) logits; decode with "
            "'decode', 'anchors' (pixels) and 'stride'"
        )
    try:
        from sparseyolo import __version__

        meta["sparseyolo_version"] = __version__
    except ImportError:  # pragma: no cover
        pass
    return meta


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_size: int | tuple[int, int] = (512, 512),
    batch_size: int = 1,
    dynamic: bool = False,
    simplify: bool = False,
    include_nms: bool = False,
    opset: int = DEFAULT_OPSET,
    device: str | torch.device = "cpu",
    uint8_input: bool = False,
    max_det: int = 300,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
) -> Path:
    """Export ``model`` to ``path`` and return the path.

    A float model is exported FP32 with BatchNorm folded into the convs (on a copy: ``model`` is
    not touched). A QAT model (see :mod:`sparseyolo.quantization`) is exported as QDQ: int8
    weights + DequantizeLinear, uint8 activations with QuantizeLinear/DequantizeLinear pairs
    carrying the learned scales, int32 conv biases; an int8 conv on the 3-channel image gets a fourth,
    zero channel (:func:`~sparseyolo.exporters.graph.pad_int8_conv_inputs`), and a MaxPool runs before the
    activation in front of it (:mod:`~sparseyolo.exporters.pool_order`). ``uint8_input`` (QAT only)
    removes the first QuantizeLinear so the graph takes uint8 pixels (0-255).
    """
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise SparseYoloError(
            f"--opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} "
            f"(13 gives per-channel QuantizeLinear; >17 is unreadable by DeepSparse 1.8)"
        )
    if batch_size < 1:
        raise SparseYoloError(f"--batch-size must be >= 1, got {batch_size}")
    path = Path(path)
    qat = is_qat_model(model)
    if uint8_input and not qat:
        raise SparseYoloError(
            "--uint8-input needs a quantized (QAT) model: a float graph has no input " "QuantizeLinear to replace"
        )
    stride = int(max(model.stride.tolist())) if hasattr(model, "stride") else 32
    img_size = check_img_size(img_size, stride)
    net = _export_copy(model, device, qat)
    if include_nms:
        from sparseyolo.exporters.nms import DetectWithNMS

        net = DetectWithNMS(net, max_det=max_det, conf_thres=conf_thres, iou_thres=iou_thres)
    x = torch.zeros(batch_size, 3, *img_size, device=device)
    out = _probe(net, x, qat)
    n_out = 1 if isinstance(out, torch.Tensor) else len(out)
    output_names = ["detections"] if include_nms else [f"output{i}" for i in range(n_out)]
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        for name in output_names:
            dynamic_axes[name] = {0: "batch"} if include_nms else {0: "batch", 2: "ny", 3: "nx"}
    buf = io.BytesIO()
    LOGGER.info(
        f"ONNX: exporting {'QDQ int8' if qat else 'FP32'} graph at {list(img_size)}, batch {batch_size}"
        f"{' (dynamic)' if dynamic else ''}, opset {opset}"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values are expected here
        torch.onnx.export(
            net,
            (x,),
            buf,
            opset_version=int(opset),
            input_names=["images"],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = _postprocess(buf.getvalue(), qat, int(opset))
    if simplify:
        proto = _simplify(proto)
    if uint8_input:
        from sparseyolo.exporters.qlinear import make_uint8_input

        make_uint8_input(proto)
    if qat:
        G.pad_int8_conv_inputs(proto)  # after the uint8 input: the pad then reads the pixels themselves
        pool_before_activation(proto)
    fmt = "qdq" if qat else "fp32"
    G.set_metadata(
        proto,
        model_metadata(
            model,
            img_size,
            fmt,
            "uint8" if uint8_input else "float32",
            include_nms,
            max_det,
            output_names,
            conf_thres,
            iou_thres,
        ),
    )
    save_onnx(proto, path)
    return path


def _export_copy(model: nn.Module, device: str | torch.device, qat: bool) -> nn.Module:
    net = copy.deepcopy(model).to(device).eval()
    if qat:
        _refresh_weight_scales(net)
        disable_observers(net)  # the export graph must not contain observer updates
    else:
        fold_batchnorm(net)
    if hasattr(net, "export_raw"):
        net.export_raw = True
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _probe(net: nn.Module, x: torch.Tensor, qat: bool):
    """One forward on the export input; for QAT, warn about quantizers in the graph that never saw data."""
    from sparseyolo.quantization import ActivationQuantizer

    used: list[str] = []
    handles = []
    if qat:
        for name, m in net.named_modules():
            if isinstance(m, ActivationQuantizer) and not m.initialized:
                handles.append(m.register_forward_pre_hook(lambda *_a, _n=name: used.append(_n)))
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for h in handles:
            h.remove()
    if used:
        LOGGER.warning(
            f"ONNX: {len(set(used))} activation quantizers in the graph never saw data (e.g. "
            f"{used[0]}); their scales are placeholders. Train or calibrate the QAT model first."
        )
    return out


def _refresh_weight_scales(net: nn.Module) -> None:
    """Weight scales follow the weights while observers are on; the last optimizer step ran after
    the last forward, so bring them up to date before freezing them."""
    from sparseyolo.quantization import QATConv2d, QATConvBnAct, QATLinear

    with torch.no_grad():
        for m in net.modules():
            q = getattr(m, "weight_fake_quant", None)
            if q is None or not bool(q.observer_enabled):
                continue
            if isinstance(m, QATConvBnAct):
                q.observe(m.conv.weight * m.folded_scale().reshape(-1, 1, 1, 1))
            elif isinstance(m, (QATConv2d, QATLinear)):
                q.observe(m.weight)


def _postprocess(data: bytes, qat: bool, opset: int):
    import onnx

    proto = onnx.load_from_string(data)
    G.remove_constant_identities(proto)
    if qat:
        G.fold_constant_quantize(proto)
        G.quantize_conv_biases(proto)
    G.remove_dead(proto)
    G.tidy_opsets(proto, opset)
    return proto


def _simplify(proto):
    try:
        import onnxsim
    except ImportError:
        LOGGER.warning("--simplify: onnxsim is not installed (pip install onnxsim); exporting without it")
        return proto
    try:
        simplified, ok = onnxsim.simplify(proto)
    except Exception as e:  # onnxsim raises many types; the unsimplified graph is still valid
        LOGGER.warning(f"--simplify: onnxsim failed ({type(e).__name__}: {e}); exporting without it")
        return proto
    if not ok:
        LOGGER.warning("--simplify: onnxsim could not validate the simplified graph; keeping the original")
        return proto
    return simplified


def save_onnx(proto, path: str | Path) -> Path:
    """Check the graph and write it atomically."""
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise SparseYoloError(f"{path}: exported graph failed the ONNX checker: {e}") from None
    return atomic_write_bytes(path, proto.SerializeToString())
