"""QDQ -> QOperator graph pass (our own), and the uint8 image input.

Patterns rewritten (``DQ`` = DequantizeLinear with constant scale/zero point, ``Q`` = QuantizeLinear):

- ``DQ(x), DQ(w)[, DQ(b)] -> Conv -> Q``    => ``QLinearConv`` (ONNX standard)
- ``DQ(a), DQ(b) -> Add -> Q``              => ``com.microsoft.QLinearAdd``
- ``DQ(x) -> LeakyRelu -> Q``               => ``com.microsoft.QLinearLeakyRelu``
- ``DQ(x_i)... -> Concat -> Q``             => ``com.microsoft.QLinearConcat``
- ``DQ(x) -> MaxPool | Resize(nearest) | Pad(0)`` => the op on the integer tensor, then DQ (these ops
  only move values around, so they commute with dequantization)
- ``DQ(q, s, z) -> Q(s, z)``                => ``q``

Which ops are converted is selectable (all by default). QLinearAdd / QLinearLeakyRelu / QLinearConcat
are com.microsoft contrib ops: ONNX Runtime runs them and DeepSparse 1.8 loads and runs them (checked
on a YOLOv3-SPP export); leave ``LeakyRelu``/``Concat`` out for a runtime without them, and they stay
as DQ -> op -> Q, a pattern every runtime accepts. What is not converted stays valid QDQ, and the
float head reads DQ outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparseyolo.exporters import graph as G
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.logging import LOGGER

MS_DOMAIN = "com.microsoft"
ALL_OPS = ("Conv", "Add", "LeakyRelu", "Concat", "MaxPool", "Resize", "Pad")
# Conv only by default: on VNNI / AMX CPUs DeepSparse 1.8 runs that form 2.4x faster than the all-ops
# one, and ONNX Runtime runs both alike; the other ops stay QDQ around float kernels. On AVX2-only CPUs
# DeepSparse prefers the QDQ file, which runtime/forms.py hands it (docs/results.md)
DEFAULT_OPS = ("Conv",)
_MOVERS = ("MaxPool", "Resize", "Pad")


def _dq(g: G.Graph, value: str):
    """``(q_value, scale_name, zp_name)`` if ``value`` is a DequantizeLinear with constant params."""
    node = g.producer.get(value)
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3 or not node.input[2]:
        return None
    if g.const(node.input[1]) is None or g.const(node.input[2]) is None:
        return None
    return node.input[0], node.input[1], node.input[2]


def _q_after(g: G.Graph, value: str):
    """The QuantizeLinear node that is the only consumer of ``value``, if it has constant params."""
    node = g.sole_consumer(value)
    if node is None or node.op_type != "QuantizeLinear" or len(node.input) < 3 or not node.input[2]:
        return None
    if g.const(node.input[1]) is None or g.const(node.input[2]) is None:
        return None
    return node


def _same_params(g: G.Graph, s1: str, z1: str, s2: str, z2: str) -> bool:
    a, b = g.const(s1), g.const(s2)
    za, zb = g.const(z1), g.const(z2)
    return a.shape == b.shape and za.dtype == zb.dtype and np.array_equal(a, b) and np.array_equal(za, zb)


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _replace(graph, old_nodes: list, new_node) -> None:
    """Put ``new_node`` where the first of ``old_nodes`` was and delete the old ones."""
    nodes = list(graph.node)
    idx = min(nodes.index(n) for n in old_nodes)
    for n in old_nodes:
        graph.node.remove(n)
    graph.node.insert(idx, new_node)


def _push_dq_through_movers(proto, ops: tuple[str, ...]) -> int:
    """DQ -> MaxPool/Resize(nearest)/Pad(0) becomes op(int) -> DQ."""
    from onnx import helper

    g = G.Graph(proto)
    count = 0
    for node in list(g.graph.node):
        if node.op_type not in ops or node.op_type not in _MOVERS:
            continue
        src = _dq(g, node.input[0])
        if src is None:
            continue
        q_value, s, z = src
        if node.op_type == "Resize" and _attr(node, "mode", b"nearest") not in (b"nearest", "nearest"):
            continue
        if node.op_type == "Pad":
            if _attr(node, "mode", b"constant") not in (b"constant", "constant"):
                continue
            if len(node.input) > 2 and node.input[2]:
                value = g.const(node.input[2])
                if value is None or float(np.asarray(value).reshape(-1)[0]) != 0.0:
                    continue
            # zero pad in the integer domain pads with the zero point
            pad_value = g.add_init(g.unique(node.name + "_zero_point"), np.asarray(g.const(z)).reshape(()))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = pad_value
        out = node.output[0]
        quantized_out = g.unique(out + "_quantized")
        node.input[0] = q_value
        node.output[0] = quantized_out
        dq = helper.make_node("DequantizeLinear", [quantized_out, s, z], [out], name=quantized_out + "_dq")
        g.graph.node.insert(list(g.graph.node).index(node) + 1, dq)
        g.refresh()
        count += 1
    return count


def _drop_dq_q_pairs(proto) -> int:
    """Q(DQ(q, s, z), s, z) == q: consumers of the Q read q directly."""
    g = G.Graph(proto)
    count = 0
    for node in list(g.graph.node):
        if node.op_type != "QuantizeLinear" or node.output[0] in g.outputs:
            continue
        dq = g.producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(node.input) < 3 or len(dq.input) < 3:
            continue
        if g.const(node.input[1]) is None or g.const(dq.input[1]) is None:
            continue
        if g.const(node.input[2]) is None or g.const(dq.input[2]) is None:
            continue
        if not _same_params(g, node.input[1], node.input[2], dq.input[1], dq.input[2]):
            continue
        G.rename_input(g.graph, node.output[0], dq.input[0])
        g.graph.node.remove(node)
        g.refresh()
        count += 1
    return count


def _convert_node(g: G.Graph, node, ops: tuple[str, ...]):
    """The QOperator node replacing ``node`` (+ its output Q), or None if the pattern does not match."""
    from onnx import helper

    op = node.op_type
    if op not in ops or op not in ("Conv", "Add", "LeakyRelu", "Concat"):
        return None
    q = _q_after(g, node.output[0])
    if q is None:
        return None
    ins = [_dq(g, i) if i else None for i in node.input]
    out, ys, yz = q.output[0], q.input[1], q.input[2]
    name = node.name or out
    if op == "Conv":
        x, w = ins[0], ins[1]
        if x is None or w is None or w[0] not in g.inits or g.const(w[2]).dtype != np.int8:
            return None
        inputs = [*x, *w, ys, yz]
        if len(ins) > 2 and node.input[2]:
            b = ins[2]
            if b is None or b[0] not in g.inits or g.const(b[0]).dtype != np.int32:
                return None
            inputs.append(b[0])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return helper.make_node("QLinearConv", inputs, [out], name=name + "_quant", **attrs)
    if any(i is None for i in ins):
        return None
    if op == "Add":
        return helper.make_node("QLinearAdd", [*ins[0], *ins[1], ys, yz], [out], name=name + "_quant", domain=MS_DOMAIN)
    if op == "LeakyRelu":
        return helper.make_node(
            "QLinearLeakyRelu",
            [*ins[0], ys, yz],
            [out],
            name=name + "_quant",
            domain=MS_DOMAIN,
            alpha=float(_attr(node, "alpha", 0.01)),
        )
    flat = [v for triple in ins for v in triple]
    return helper.make_node(
        "QLinearConcat", [ys, yz, *flat], [out], name=name + "_quant", domain=MS_DOMAIN, axis=int(_attr(node, "axis"))
    )


def convert_to_qlinear(proto, ops: tuple[str, ...] | list[str] = DEFAULT_OPS):
    """Rewrite a QDQ graph (in place) into QOperator form; returns ``(proto, counts)``."""
    unknown = sorted(set(ops) - set(ALL_OPS))
    if unknown:
        raise SparseYoloError(f"QLinear conversion: unknown op(s) {unknown}; choose from {list(ALL_OPS)}")
    ops = tuple(ops)
    counts = {"moved": _push_dq_through_movers(proto, ops)}
    counts["dq_q_pairs"] = _drop_dq_q_pairs(proto)
    g = G.Graph(proto)
    for node in list(g.graph.node):
        new = _convert_node(g, node, ops)
        if new is None:
            continue
        q = g.sole_consumer(node.output[0])
        _replace(g.graph, [node, q], new)
        counts[new.op_type] = counts.get(new.op_type, 0) + 1
        g.refresh()
    G.remove_dead(proto)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    G.tidy_opsets(proto, opset)
    return proto, counts


def export_qlinear(src: str | Path, dst: str | Path, ops: tuple[str, ...] | list[str] = DEFAULT_OPS) -> Path:
    """Read a QDQ export, convert it to QOperator form and write it (metadata ``format: qlinear``)."""
    import onnx

    from sparseyolo.exporters.onnx import save_onnx

    proto = onnx.load(str(src))
    proto, counts = convert_to_qlinear(proto, ops)
    left = sum(1 for n in proto.graph.node if n.op_type == "Conv")
    LOGGER.info(f"QLinear: {', '.join(f'{k} {v}' for k, v in counts.items() if v)}; {left} float Conv left")
    G.set_metadata(proto, {"format": "qlinear", "qlinear_ops": list(ops)})
    return save_onnx(proto, dst)


def _rescale_conv_biases(g: G.Graph, value: str, old: float, new: float) -> None:
    """int32 conv biases are stored in units of input scale x weight scale: follow an input rescale."""
    for conv in g.consumers.get(value, []):
        if conv.op_type != "Conv" or len(conv.input) < 3 or conv.input[0] != value:
            continue
        bias_dq = g.producer.get(conv.input[2])
        if bias_dq is None or bias_dq.op_type != "DequantizeLinear":
            continue
        b, s = g.const(bias_dq.input[0]), g.const(bias_dq.input[1])
        if b is None or s is None or b.dtype != np.int32:
            continue
        ratio = old / new
        b_new = np.clip(np.rint(b.astype(np.float64) * ratio), -(2**31), 2**31 - 1).astype(np.int32)
        bias_dq.input[0] = g.add_init(g.unique(bias_dq.input[0] + "_u8"), b_new)
        bias_dq.input[1] = g.add_init(g.unique(bias_dq.input[1] + "_u8"), (s / ratio).astype(np.float32))


def make_uint8_input(proto, input_name: str | None = None) -> None:
    """Make the image input uint8 (0-255), removing its QuantizeLinear (SparseML's skip_onnx_input_quantize).

    The first layer then reads pixels directly with scale 1/255 and zero point 0, which is the
    float preprocessing (divide by 255) done in integers. A first layer left in float reads them through
    one DequantizeLinear with that scale. Raises if the input feeds QuantizeLinear and other nodes.
    """
    from onnx import TensorProto, helper

    g = G.Graph(proto)
    inp = proto.graph.input[0] if input_name is None else next(i for i in proto.graph.input if i.name == input_name)
    users = g.consumers.get(inp.name, [])
    quantizers = [u for u in users if u.op_type == "QuantizeLinear"]
    if not users or quantizers and len(quantizers) != len(users):
        kinds = sorted({u.op_type for u in users})
        raise SparseYoloError(f"--uint8-input: input {inp.name!r} feeds {kinds}: not one form (int8 or float)")
    new_scale = np.asarray(1.0 / 255.0, np.float32)
    scale = g.add_init(g.unique("input_uint8_scale"), new_scale)
    zero = g.add_init(g.unique("input_uint8_zero_point"), np.asarray(0, np.uint8))
    if not quantizers:  # a float first layer
        pixels = g.unique(inp.name + "_dequantized")
        G.rename_input(g.graph, inp.name, pixels)
        g.graph.node.insert(0, helper.make_node("DequantizeLinear", [inp.name, scale, zero], [pixels], name=pixels))
    for q in quantizers:
        old_scale = float(np.asarray(g.const(q.input[1])).reshape(-1)[0])
        for node in list(g.consumers.get(q.output[0], [])):
            for i, name in enumerate(list(node.input)):
                if name != q.output[0]:
                    continue
                node.input[i] = inp.name
                if i + 2 < len(node.input) and node.input[i + 1] == q.input[1] and node.input[i + 2] == q.input[2]:
                    node.input[i + 1], node.input[i + 2] = scale, zero
                if node.op_type == "DequantizeLinear":
                    _rescale_conv_biases(g, node.output[0], old_scale, float(new_scale))
        g.graph.node.remove(q)
    inp.type.tensor_type.elem_type = TensorProto.UINT8
    G.remove_dead(proto)
