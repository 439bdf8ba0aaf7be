"""The Q/DQ graph as TensorRT computes it, for ONNX Runtime on a CPU: integer accumulation.

TensorRT fuses DequantizeLinear -> Conv/Gemm/MatMul <- DequantizeLinear into one int8 kernel:
the int8 codes are multiplied and summed in int32 exactly, and the sum is scaled once by
Dx * Dw. Run as written in ONNX Runtime (dequantize, then a float op), the same graph sums
K rounded float products instead; its shift compensations then cancel against those sums, so
the float error grows with K and with the shifts, and a model that is sensitive to its inputs
turns that into code flips downstream. (Fusing in ONNX Runtime instead is no answer: its u8s8
kernels saturate 16-bit pair sums on CPUs without VNNI.)

`integer_view(model)` rewrites each such op, for the CPU check only, into

    Cast(codes_x) -> Conv/Gemm/MatMul <- Cast(codes_w)   (integers in float32: exact sums)
    -> Mul(Dx * Dw, product in float64 rounded once, per output channel) [-> Add the op's bias]

so the check computes TensorRT's arithmetic. The float32 sums of integer products are exact
while every partial sum stays below 2^24 (products of 8-bit codes are at most 2^14: K <= 1024
in the worst case, far more in practice, and 6-bit codes allow K <= 16384). The artifact's
`.qdq.onnx`, which TensorRT compiles, is never changed.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .rules import INTEGER_OPS


def _const(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _out_channel_shape(op: onnx.NodeProto, n: int) -> tuple[int, ...]:
    """Where a per-output-channel scale goes on the op's output: Conv (B, N, *spatial) -> (1, N, 1, 1)
    for 2-D convs; Gemm (M, N) and MatMul (..., N) -> (N,)."""
    return (1, n, 1, 1) if op.op_type == "Conv" else (n,)


def _per_output_channel(op: onnx.NodeProto, dq_w: onnx.NodeProto, scale: np.ndarray) -> bool:
    """A vector weight scale can move behind the op only when it runs along the output channels:
    axis 0 of a Conv's weight or of a Gemm(transB=1) weight (N, K); a MatMul's B (K, N) has K there."""
    if scale.size == 1:
        return True
    return op.op_type in ("Conv", "Gemm") and _attr(dq_w, "axis", 1) == 0


def integer_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the Q/DQ model with every fused-able integer op accumulating integers exactly
    (see the module docstring). Ops whose inputs are not all dequantized stay as they are."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    new_nodes, extra_inits = [], []
    rewritten = 0
    for node in g.node:
        dqs = [producer.get(i) for i in node.input[:2]]
        bias = _const(g, node.input[2]) if len(node.input) == 3 and node.op_type != "MatMul" else None
        if (node.op_type not in INTEGER_OPS or len(node.input) != 2 + (bias is not None)
                or any(d is None or d.op_type != "DequantizeLinear" for d in dqs)):
            new_nodes.append(node)
            continue
        if node.op_type == "Gemm" and (_attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0):
            new_nodes.append(node)  # the lowering writes Gemm(transB=1) only; anything else stays as written
            continue
        scales = [_const(g, d.input[1]) for d in dqs]
        if any(s is None for s in scales) or not _per_output_channel(node, dqs[1], scales[1]):
            new_nodes.append(node)
            continue
        tag = f"intview{rewritten}_"
        casts = []
        for i, d in enumerate(dqs):
            c = tag + f"in{i}"
            new_nodes.append(helper.make_node("Cast", [d.input[0]], [c], to=TensorProto.FLOAT, name=c))
            casts.append(c)
        acc = tag + "acc"
        new_nodes.append(helper.make_node(node.op_type, casts, [acc], name=acc,
                                          **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
        sx, sw = (s.astype(np.float64) for s in scales)
        if sx.size != 1:
            raise ValueError(f"{node.name}: a Q/DQ activation must have one scale, got {sx.size}")
        unit = (sx.reshape(()) * sw).astype(np.float32)  # one rounding, as TensorRT's dequantization scale
        if unit.size > 1:
            unit = unit.reshape(_out_channel_shape(node, unit.size))
        extra_inits.append(numpy_helper.from_array(unit, tag + "unit"))
        scaled = node.output[0] if bias is None else tag + "scaled"
        new_nodes.append(helper.make_node("Mul", [acc, tag + "unit"], [scaled], name=tag + "scale"))
        if bias is not None:  # after the scale, as TensorRT's epilogue adds it
            bias = bias.astype(np.float32).reshape(_out_channel_shape(node, bias.size))
            extra_inits.append(numpy_helper.from_array(bias, tag + "bias"))
            new_nodes.append(helper.make_node("Add", [scaled, tag + "bias"], [node.output[0]], name=tag + "bias"))
        rewritten += 1
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(extra_inits)
    return m
