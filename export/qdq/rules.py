"""TensorRT's explicit-quantization rules, checked on an ONNX graph (the trt target's contract).

`qdq_violations(model)` lists every place a Q/DQ ONNX breaks them; the exporter refuses to
write a graph with any, and the tests hold the emitted graphs to it:

- opset >= 17, standard ONNX domain only (no ONNX Runtime contrib ops);
- every QuantizeLinear / DequantizeLinear has an int8 zero point that is all zeros;
- activation scales (Q, and DQ of a Q) are positive scalars;
- a DequantizeLinear of a constant (weights, folded K/V codes) reads an int8 initializer with a
  scalar scale or one scale per output channel on axis 0;
- every QuantizeLinear feeds only DequantizeLinear with the same scale (no unpaired Q), and
  every DequantizeLinear of a non-constant reads a QuantizeLinear (no unpaired DQ);
- every Conv / Gemm / MatMul that takes a dequantized input takes dequantized values on all
  its data inputs (activation and weight), so TensorRT fuses it into one integer kernel.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

MIN_OPSET = 17
INTEGER_OPS = ("Conv", "Gemm", "MatMul")


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def qdq_violations(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers = _consumers(g)
    bad: list[str] = []
    opsets = {o.domain or "": o.version for o in model.opset_import}
    if opsets.get("", 0) < MIN_OPSET:
        bad.append(f"opset {opsets.get('', 0)} is below {MIN_OPSET}")
    bad += [f"{n.name}: op {n.domain}.{n.op_type} is not standard ONNX" for n in g.node if n.domain not in ("", "ai.onnx")]

    def array(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) < 3 or array(n.input[2]) is None:
            bad.append(f"{n.name}: no constant zero point")
            continue
        if inits[n.input[2]].data_type != TensorProto.INT8:
            bad.append(f"{n.name}: zero point is not int8")
        if np.any(array(n.input[2]) != 0):
            bad.append(f"{n.name}: nonzero zero point (an asymmetric grid)")
        scale = array(n.input[1])
        if scale is None or np.any(scale <= 0):
            bad.append(f"{n.name}: scale is not a positive constant")
            continue
        const_input = n.op_type == "DequantizeLinear" and n.input[0] in inits
        if n.op_type == "QuantizeLinear":
            if scale.size != 1:
                bad.append(f"{n.name}: activation scale is not a scalar")
            if not consumers.get(n.output[0]) or any(c.op_type != "DequantizeLinear" or c.input[1] != n.input[1]
                                                     for c in consumers[n.output[0]]):
                bad.append(f"{n.name}: QuantizeLinear output does not go only to a DequantizeLinear with its scale")
        elif const_input:
            if inits[n.input[0]].data_type != TensorProto.INT8:
                bad.append(f"{n.name}: constant codes are not int8")
            if scale.size != 1:
                w = array(n.input[0])
                if _attr(n, "axis", 1) != 0 or scale.shape != (w.shape[0],):
                    bad.append(f"{n.name}: per-channel weight scales must be one per output channel on axis 0")
        else:
            src = producer.get(n.input[0])
            if src is None or src.op_type != "QuantizeLinear":
                bad.append(f"{n.name}: DequantizeLinear of a non-constant without its QuantizeLinear")
            if scale.size != 1:
                bad.append(f"{n.name}: activation scale is not a scalar")
    for n in g.node:
        if n.op_type not in INTEGER_OPS:
            continue
        data = list(n.input[:2])
        fed = [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in data]
        if any(fed) and not all(fed):
            bad.append(f"{n.name}: {n.op_type} has a dequantized input beside a float one (not fusable)")
    return bad


def quantized_op_count(model: onnx.ModelProto) -> int:
    """Conv / Gemm / MatMul nodes whose data inputs are all dequantized (TensorRT's integer ops)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type in INTEGER_OPS
               and all(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input[:2]))
