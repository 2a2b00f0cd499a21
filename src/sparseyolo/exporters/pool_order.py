"""Run each MaxPool of a quantized graph before the activation in front of it.

A non-decreasing activation ``f`` (ReLU, LeakyReLU with ``alpha >= 0``) and QuantizeLinear commute with
max: ``max(f(a), f(b)) == f(max(a, b))``, so ``MaxPool(f(x)) == f(MaxPool(x))`` bit for bit, in float
and in uint8. Two forms are rewritten:

- int8 activation: ``DQ -> f -> Q -> DQ -> MaxPool`` becomes ``DQ -> MaxPool -> Q -> DQ -> f -> Q -> DQ``
  (the new Q/DQ pair re-quantizes the pooled values with the scale they already had, exactly). The
  activation then runs on a quarter of the elements after a 2x2 pool;
- float activation of a float layer (a first conv left out of QAT) feeding quantized layers:
  ``f -> MaxPool -> Q`` becomes ``MaxPool -> f -> Q``. Why: ONNX Runtime's ``QDQPropagationTransformer``
  moves a QuantizeLinear backwards through a MaxPool, which then runs as ONNX Runtime's uint8 MaxPool
  on the full-size map, about 2x slower than the whole float layer; an activation between them stops
  that. On an AVX-512 VNNI Zen 4 (ONNX Runtime 1.32, 2 threads) a BCCD YOLOv3-tiny with 45% of its
  channels removed and its first conv in float ran at 84 img/s without this rewrite and 182 with it.

Float (FP32) exports are left alone: there ONNX Runtime fuses the activation into the conv before it.
"""

from __future__ import annotations

import copy

from sparseyolo.exporters.graph import Graph, insert_before

NON_DECREASING = ("Relu", "LeakyRelu")


def pool_before_activation(model) -> int:
    """Move every matching MaxPool in front of its activation (see the module doc); returns how many."""
    g = Graph(model)
    moved = 0
    while True:
        match = next((m for m in (_match(g, n) for n in g.graph.node) if m is not None), None)
        if match is None:
            return moved
        _move(g, *match)
        g.refresh()
        moved += 1


def _leaky_alpha(node) -> float:
    return next((a.f for a in node.attribute if a.name == "alpha"), 0.01)


def _match(g: Graph, pool):
    """(pool, activation, the node whose output the pool read, or None) when ``pool`` can move."""
    if pool.op_type != "MaxPool" or len(pool.output) > 1 and pool.output[1]:
        return None  # a pool that also returns indices keeps its place
    last = g.producer.get(pool.input[0])
    if last is None or g.sole_consumer(last.output[0]) is not pool:
        return None
    if last.op_type == "DequantizeLinear":  # int8 activation: act -> Q -> DQ -> pool
        q = g.producer.get(last.input[0])
        if q is None or q.op_type != "QuantizeLinear" or g.sole_consumer(q.output[0]) is not last:
            return None
        act = g.producer.get(q.input[0])
        if act is None or g.sole_consumer(act.output[0]) is not q:
            return None
    else:  # float activation: act -> pool -> Q only
        act = last
        users = g.consumers.get(pool.output[0], [])
        if not users or pool.output[0] in g.outputs or any(u.op_type != "QuantizeLinear" for u in users):
            return None
    if act.op_type not in NON_DECREASING or act.op_type == "LeakyRelu" and _leaky_alpha(act) < 0:
        return None
    if g.sole_consumer(act.input[0]) is not act:
        return None
    return pool, act, last


def _move(g: Graph, pool, act, last) -> None:
    from onnx import helper

    pooled_name = pool.output[0]
    pre = act.input[0]
    pool.output[0] = g.unique(pool.name.strip("/").replace("/", ".") + ".before_activation")
    pool.input[0] = pre
    moved = [pool]
    source = g.producer.get(pre)
    if source is not None and source.op_type == "DequantizeLinear":
        # the pooled values are already on this grid: re-quantizing them is exact
        q_out, dq_out = g.unique(pool.output[0] + "_quantized"), g.unique(pool.output[0] + "_dequantized")
        moved += [
            helper.make_node("QuantizeLinear", [pool.output[0], *source.input[1:]], [q_out], name=q_out),
            helper.make_node("DequantizeLinear", [q_out, *source.input[1:]], [dq_out], name=dq_out),
        ]
        act.input[0] = dq_out
    else:
        act.input[0] = pool.output[0]
    last.output[0] = pooled_name  # the chain's end now carries what the pool used to output
    moved[0] = copy.copy(pool)
    del g.graph.node[next(i for i, n in enumerate(g.graph.node) if n is pool)]
    insert_before(g.graph, act, moved)  # the pool now reads the activation's input: it must come first
