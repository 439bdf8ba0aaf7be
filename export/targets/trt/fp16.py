"""FP16 copies of ONNX graphs for TensorRT engine builds.

TensorRT 11 builds only strongly typed networks: the precision of every float op is the type
its ONNX graph gives it (the BuilderFlag.FP16 / INT8 switches of TensorRT 10 are gone). So the
"FP16 and INT8" engine of a component is built from a copy of its Q/DQ graph whose float
tensors are FP16 (the Q/DQ pairs keep it INT8), and the FP16 baseline engine from an FP16 copy
of its float graph. Inputs and outputs stay FP32 behind Cast nodes, so the engine's buffers
and the runtimes are the same for every precision.

What changes: FLOAT initializers become FLOAT16 (values beyond FP16's range are refused: they
would silently become inf), Cast-to-float and ConstantOfShape become FP16. What stays FP32:
the inputs ONNX types as float only (Resize's scales).

Q/DQ scales must then be FP16 too (ONNX types a QuantizeLinear's scale like its input), and a
scale FP16 cannot hold to 1e-3 (the tiny model's near-zero weight channels have steps of 1e-8,
and steps below 6.1e-5 are FP16 subnormals with few bits) would move every weight of that
channel; such graphs are refused, by name, rather than built wrong: their engines keep FP32
float ops (passion-export --trt-float fp32, the default).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MAX = float(np.finfo(np.float16).max)
SCALE_TOLERANCE = 1e-3
FP32_ONLY_INPUTS = {"Resize": (2,)}  # (op, input index) pairs whose ONNX type is tensor(float) only


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    g = m.graph
    fp32_only = {n.input[i] for n in g.node for i in FP32_ONLY_INPUTS.get(n.op_type, ()) if i < len(n.input)}
    shared = {name for n in g.node for i, name in enumerate(n.input)
              if name in fp32_only and i not in FP32_ONLY_INPUTS.get(n.op_type, ())}
    if shared:
        raise ValueError(f"initializers {sorted(shared)[:3]} feed both a float-only input and other ops")
    scales = {n.input[1] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    inits = []
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT and t.name not in fp32_only:
            a = numpy_helper.to_array(t)
            if a.size and float(np.abs(a).max()) > FP16_MAX:
                raise ValueError(f"initializer {t.name} holds {float(np.abs(a).max()):.3g}, beyond FP16's range")
            if t.name in scales:
                err = np.abs(a.astype(np.float16).astype(np.float64) / a - 1)
                if float(err.max()) > SCALE_TOLERANCE:
                    raise ValueError(f"quantization scale {t.name} = {float(a.flat[int(err.argmax())]):.3g} does not survive FP16 "
                                     f"(off by {float(err.max()):.1%}); keep the float ops FP32 (--trt-float fp32)")
            t = numpy_helper.from_array(a.astype(np.float16), t.name)
        inits.append(t)
    del g.initializer[:]
    g.initializer.extend(inits)
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
            if n.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
    # FP32 edges: cast each float input in, each float output out, under the original names
    edge_nodes, tail = [], []
    for v, is_input in [(v, True) for v in g.input] + [(v, False) for v in g.output]:
        if v.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = v.name + ".fp16"
        for n in g.node:
            n.input[:] = [inner if i == v.name else i for i in n.input]
            if not is_input:
                n.output[:] = [inner if o == v.name else o for o in n.output]
        if is_input:
            edge_nodes.append(helper.make_node("Cast", [v.name], [inner], name="cast_in." + v.name, to=TensorProto.FLOAT16))
        else:
            tail.append(helper.make_node("Cast", [inner], [v.name], name="cast_out." + v.name, to=TensorProto.FLOAT))
    nodes = edge_nodes + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return m
