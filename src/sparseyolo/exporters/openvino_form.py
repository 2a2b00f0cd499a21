"""The OpenVINO form of a QDQ export: quantizers only where OpenVINO fuses them.

Our QDQ graph quantizes every layer boundary, including each conv's output before its activation
(``Conv -> Q -> DQ -> LeakyRelu -> Q -> DQ``). ONNX Runtime needs that pair: it turns
``DQ -> Conv -> Q`` into ``QLinearConv`` and the activation between two pairs into
``QLinearLeakyRelu``. OpenVINO works the other way round. It fuses the activation into the
convolution and wants one FakeQuantize after the activation, on the next conv's input (the placement
NNCF writes); a FakeQuantize between a conv and its activation stops that fusion and runs as a
separate op. The same holds for the pair after a ``MaxPool``, whose input is quantized already.

:func:`openvino_form` bypasses those pairs: the consumers of the DequantizeLinear read the
QuantizeLinear's float input instead, and the pair is removed. Everything else (weights, biases, the
other activation pairs and their scales) stays as it is, so the file computes what the QDQ file
computes except for the rounding the bypassed pairs did.
"""

from __future__ import annotations

from sparseyolo.exporters import graph as G

# ops whose output quantizer OpenVINO cannot fold: a conv's (the activation is fused after it) and a
# MaxPool's (it runs on the quantized input already)
BYPASS_AFTER = ("Conv", "MaxPool")
OPENVINO_SUFFIX = ".openvino.onnx"


def openvino_form(model, after: tuple[str, ...] = BYPASS_AFTER) -> int:
    """Bypass, in place, every activation Q -> DQ pair whose input comes from an op in ``after``.

    A pair is bypassed only when the QuantizeLinear feeds nothing but DequantizeLinear nodes and none
    of them is a graph output. Returns the number of pairs removed.
    """
    g = G.Graph(model)
    removed = 0
    for q in [n for n in g.graph.node if n.op_type == "QuantizeLinear"]:
        src = g.producer.get(q.input[0])
        if src is None or src.op_type not in after or q.output[0] in g.outputs:
            continue
        dqs = g.consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" or d.output[0] in g.outputs for d in dqs):
            continue
        for dq in dqs:
            for user in g.consumers.get(dq.output[0], []):
                for i, name in enumerate(user.input):
                    if name == dq.output[0]:
                        user.input[i] = q.input[0]
            g.graph.node.remove(dq)
        g.graph.node.remove(q)
        removed += 1
    G.remove_dead(model)
    return removed
