"""Small ONNX graph passes shared by the FP32, QDQ and QLinear exports.

- drop Identity nodes on initializers (the TorchScript exporter emits them for shared constants);
- fold QuantizeLinear of constant weights into int8 initializers (DequantizeLinear stays), so a
  quantized file stores 1 byte per weight; a clamp in front of it (Max / Min on constants, how a
  narrower weight range such as 7 bits is exported) is folded first;
- quantize float conv biases to int32 + DequantizeLinear (scale = input scale * weight scale), the
  form ONNX Runtime needs to run the conv with int8 kernels;
- pad the input channels of an int8 conv to a multiple of 4 (the 3-channel first conv), which ONNX
  Runtime's int8 kernels run faster;
- remove dead nodes and initializers, and opset imports no node uses;
- pin the IR version so older readers (DeepSparse 1.8 ships onnx<1.15) load the file.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

# DeepSparse 1.8 / onnx 1.14 read up to IR version 9; torch's exporter writes IR 8 for opset 13-17.
MAX_IR_VERSION = 8


class Graph:
    """Index over an ``onnx.GraphProto``: initializers by name, producers and consumers of values."""

    def __init__(self, model) -> None:
        self.model = model
        self.graph = model.graph
        self.refresh()

    def refresh(self) -> None:
        from onnx import numpy_helper

        self.inits = {t.name: t for t in self.graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self._numpy_helper = numpy_helper
        self.producer = {}
        self.consumers = defaultdict(list)
        for node in self.graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.outputs = {o.name for o in self.graph.output}
        self._taken = set(self.inits) | set(self.producer) | {i.name for i in self.graph.input}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer (or a Constant node's tensor), else None."""
        if name in self._arrays:
            return self._arrays[name]
        if name in self.inits:
            arr = self._numpy_helper.to_array(self.inits[name])
        else:
            node = self.producer.get(name)
            if node is None or node.op_type != "Constant":
                return None
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is None:
                return None
            arr = self._numpy_helper.to_array(attr.t)
        self._arrays[name] = arr
        return arr

    def add_init(self, name: str, array: np.ndarray) -> str:
        """Add (or replace) an initializer; returns its name."""
        tensor = self._numpy_helper.from_array(np.ascontiguousarray(array), name)
        if name in self.inits:
            self.inits[name].CopyFrom(tensor)
        else:
            self.graph.initializer.append(tensor)
            self.inits[name] = self.graph.initializer[-1]
        self._arrays[name] = array
        return name

    def unique(self, base: str) -> str:
        name, n = base, 1
        while name in self._taken:
            name, n = f"{base}_{n}", n + 1
        self._taken.add(name)  # reserved even before a node or initializer takes it
        return name

    def sole_consumer(self, value: str):
        users = self.consumers.get(value, [])
        if len(users) == 1 and value not in self.outputs:
            return users[0]
        return None


def rename_input(graph, old: str, new: str) -> None:
    """Make every node that reads ``old`` read ``new`` (callers keep graph outputs out of this)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def remove_constant_identities(model) -> int:
    """Bypass Identity nodes whose input is an initializer."""
    g = Graph(model)
    removed = []
    for node in g.graph.node:
        if node.op_type == "Identity" and node.input[0] in g.inits and node.output[0] not in g.outputs:
            rename_input(g.graph, node.output[0], node.input[0])
            removed.append(node)
    for node in removed:
        g.graph.node.remove(node)
    return len(removed)


def fold_constant_clamps(model) -> int:
    """Max / Min nodes whose inputs are all constants -> one initializer (numpy's broadcasting is ONNX's)."""
    g = Graph(model)
    n = 0
    for node in list(g.graph.node):
        if node.op_type not in ("Max", "Min") or node.output[0] in g.outputs:
            continue
        values = [g.const(name) for name in node.input]
        if not values or any(v is None for v in values):
            continue
        out = values[0]
        for v in values[1:]:
            out = (np.maximum if node.op_type == "Max" else np.minimum)(out, v)
        g.add_init(node.output[0], out.astype(values[0].dtype))
        g.graph.node.remove(node)  # its output name now names the initializer
        g.producer.pop(node.output[0], None)
        n += 1
    return n


def fold_constant_quantize(model) -> int:
    """QuantizeLinear(const W) -> int8/uint8 initializer (consumers, e.g. DequantizeLinear, keep working)."""
    fold_constant_clamps(model)
    g = Graph(model)
    folded = []
    for node in g.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        x, scale = g.const(node.input[0]), g.const(node.input[1])
        zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if x is None or scale is None or zp is None or node.output[0] in g.outputs:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        q = quantize_array(x, scale, zp, axis)
        name = g.add_init(g.unique(node.output[0].strip("/").replace("/", ".") + "_int"), q)
        rename_input(g.graph, node.output[0], name)
        folded.append(node)
    for node in folded:
        g.graph.node.remove(node)
    return len(folded)


def quantize_array(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int = 1) -> np.ndarray:
    """ONNX QuantizeLinear semantics (round half to even, saturate) in numpy."""
    scale = np.asarray(scale, np.float32)
    zp = np.asarray(zero_point)
    if scale.ndim == 1 and scale.size > 1:  # per-axis
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zp_b = scale.reshape(shape), zp.reshape(shape).astype(np.int32)
    else:
        scale, zp_b = scale.reshape(()), zp.reshape(()).astype(np.int32)
    info = np.iinfo(zp.dtype)
    q = np.rint(x.astype(np.float32) / scale) + zp_b
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def quantize_conv_biases(model) -> int:
    """Float bias of a Conv whose input and weight come from DequantizeLinear -> int32 + DequantizeLinear."""
    from onnx import helper

    g = Graph(model)
    count = 0
    new_nodes = []
    for node in g.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or not node.input[2]:
            continue
        x_dq, w_dq = g.producer.get(node.input[0]), g.producer.get(node.input[1])
        bias = g.const(node.input[2])
        if (
            x_dq is None
            or w_dq is None
            or bias is None
            or x_dq.op_type != "DequantizeLinear"
            or w_dq.op_type != "DequantizeLinear"
            or bias.dtype != np.float32
        ):
            continue
        sx, sw = g.const(x_dq.input[1]), g.const(w_dq.input[1])
        if sx is None or sw is None:
            continue
        scale = (np.asarray(sx, np.float32).reshape(()) * np.asarray(sw, np.float32).reshape(-1)).astype(np.float32)
        if scale.size == 1:
            scale = scale.reshape(())
        q = np.clip(np.rint(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        base = node.input[2].strip("/").replace("/", ".")
        q_name = g.add_init(g.unique(base + "_int32"), q)
        s_name = g.add_init(g.unique(base + "_scale"), scale)
        z_name = g.add_init(g.unique(base + "_zero_point"), np.zeros(scale.shape, np.int32))
        out = g.unique(base + "_dequantized")
        attrs = {"axis": 0} if scale.ndim == 1 else {}
        new_nodes.append(
            (node, helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out], name=out, **attrs))
        )
        node.input[2] = out
        count += 1
    for conv, dq in new_nodes:
        insert_before(g.graph, conv, [dq])
    return count


def pad_int8_conv_inputs(model, multiple: int = 4, min_out_channels: int = 16) -> int:
    """Give each int8 conv (input and weight from DequantizeLinear) with at least ``min_out_channels``
    outputs a multiple of ``multiple`` input channels; returns the number of convs padded.

    The quantized input gets zero-point channels (a ``Pad`` before its DequantizeLinear) and the weight
    zero-point channels, so every added product is exactly zero and the outputs do not change. Why:
    ONNX Runtime's int8 convolution runs a 3-channel input (the image) slowly. On an AVX-512 VNNI Zen 4
    (ONNX Runtime 1.32, 2 threads) YOLOv3-tiny's int8 first conv at 416 took 3.0 of the model's 11-12 ms
    with 3 input channels, and padding it to 4 made the whole model 1.13x faster; with 8 output channels
    (a thinned first conv) padding did not help (about 0.3 ms slower), hence ``min_out_channels``.
    """
    from onnx import helper

    g = Graph(model)
    padded = []
    for conv in g.graph.node:
        if conv.op_type != "Conv" or any(a.name == "group" and a.i != 1 for a in conv.attribute):
            continue
        x_dq, w_dq = g.producer.get(conv.input[0]), g.producer.get(conv.input[1])
        if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
            continue
        if g.sole_consumer(w_dq.output[0]) is not conv:
            continue  # a shared weight keeps its shape for its other users
        w = g.const(w_dq.input[0])
        if w is None or w.ndim != 4 or w.dtype not in (np.int8, np.uint8) or w.shape[1] % multiple == 0:
            continue
        if w.shape[0] < min_out_channels:
            continue
        x_scale = g.const(x_dq.input[1])
        x_zp = g.const(x_dq.input[2]) if len(x_dq.input) > 2 and x_dq.input[2] else None
        w_zp = g.const(w_dq.input[2]) if len(w_dq.input) > 2 and w_dq.input[2] else np.zeros((), w.dtype)
        if x_scale is None or np.size(x_scale) != 1 or w_zp is None or (x_zp is not None and np.size(x_zp) != 1):
            continue  # per-axis input quantization would need its scales padded too
        extra = -w.shape[1] % multiple
        fill = np.broadcast_to(np.asarray(w_zp, w.dtype).reshape(-1, 1, 1, 1), (w.shape[0], extra, *w.shape[2:]))
        base = conv.name.strip("/").replace("/", ".") or conv.output[0]
        w_dq.input[0] = g.add_init(g.unique(base + ".weight_padded"), np.concatenate([w, fill], axis=1))
        pads = g.add_init(g.unique(base + ".input_pads"), np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64))
        pad_out, dq_out = g.unique(base + ".input_padded"), g.unique(base + ".input_padded_dequantized")
        pad_inputs = [x_dq.input[0], pads] + ([x_dq.input[2]] if x_zp is not None else [])
        new_dq = helper.make_node("DequantizeLinear", [pad_out, *x_dq.input[1:]], [dq_out], name=dq_out)
        padded.append((conv, [helper.make_node("Pad", pad_inputs, [pad_out], name=pad_out), new_dq]))
        conv.input[0] = dq_out
    for conv, nodes in padded:
        insert_before(g.graph, conv, nodes)
    if padded:
        remove_dead(model)
    return len(padded)


def insert_before(graph, anchor, nodes: list) -> None:
    """Insert ``nodes`` (in order) right before ``anchor``, which keeps the graph topologically sorted
    when they feed ``anchor`` and read only values produced before it."""
    idx = list(graph.node).index(anchor)
    for node in reversed(nodes):
        graph.node.insert(idx, node)


def remove_dead(model) -> None:
    """Drop nodes whose outputs nobody uses, then unused initializers."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = set(outputs)
        for node in graph.node:
            used.update(i for i in node.input if i)
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = set(outputs)
    for node in graph.node:
        used.update(i for i in node.input if i)
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name in used or i.name in outputs]
    if len(inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(inputs)


def tidy_opsets(model, opset: int) -> None:
    """Keep only the opset imports the graph's nodes use (the default domain always), pin IR version."""
    from onnx import helper

    domains = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    imports = [helper.make_opsetid("", opset)]
    for d in sorted(domains):
        imports.append(helper.make_opsetid(d, 1))
    del model.opset_import[:]
    model.opset_import.extend(imports)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)


def set_metadata(model, meta: dict[str, object]) -> None:
    """Write ``metadata_props`` as JSON strings (replacing keys that exist)."""
    import json

    existing = {p.key: p for p in model.metadata_props}
    for key, value in meta.items():
        text = json.dumps(value)
        if key in existing:
            existing[key].value = text
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, text
