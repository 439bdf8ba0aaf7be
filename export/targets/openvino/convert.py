"""Write a component's OpenVINO IR: the deploy IR lowered to the Q/DQ graph (export/qdq, the same
lowering the trt target writes), checked against the Q/DQ rules, converted by OpenVINO's ONNX
frontend and saved as `<component>.xml` + `<component>.bin`.

The weights stay int8 in the .bin (Constant i8 -> Convert -> Multiply, the DequantizeLinear):
`compress_to_fp16=False` keeps every float constant (biases, border maps, scales) in f32, since an
fp16 scale or map would move the graph away from the fake-quant model it is verified against.
The UNet keeps its traced tile (its attention scales have one entry per token); the VAE graphs
keep dynamic height and width, and the runtime compiles one static copy per size it meets.

In dequant mode every activation Q/DQ pair is written out as Div -> Round -> Clip -> Mul
(`explicit_rounding`) before conversion. OpenVINO turns a QuantizeLinear/DequantizeLinear pair
into a FakeQuantize, which multiplies by a precomputed 1/scale instead of dividing: measured on
1e6 random activations it rounds 4-5 of them to the neighbouring code (and 12-16% of values
that lie within float error of a half step), where ONNX's QuantizeLinear, ONNX Runtime and the
fake-quant model divide. Those flips cost the W6A6 tiny decoder 3 dB (44.99 dB vs fake-quant, under
--verify's 45 dB bar). Written out, OpenVINO's Divide and Round (half to even, as QuantizeLinear)
agree with ONNX Runtime bit for bit on the same 1e6 values, with one more guard: the CPU plugin
folds a Sub (or Add) of a constant followed by a Div by a constant into x * (1/s) + c' (13526 of
4e5 codes moved on the same test), and the graph has that pair before most quantizers (the shift
c*D) and in every LET transform ((x - o) / s). A Max(x, -FLT_MAX) in front of each Div by a
constant, an identity on every finite value, stops that folding: 0 codes moved on the same test
(tests/test_export_openvino.py holds the rewritten graph to ONNX Runtime's codes bit for bit).
The int8 mode keeps the Q/DQ pairs: they are what its low-precision transformations fuse into
int8 kernels.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ...ir.trace import ExportError


CODE_MIN, CODE_MAX, NO_FOLD = "passion.int8_min", "passion.int8_max", "passion.lowest_float"


def explicit_rounding(model):
    """The Q/DQ graph with each activation QuantizeLinear -> DequantizeLinear written as
    Max(-FLT_MAX) -> Div(scale) -> Round -> Clip(-128, 127) -> Mul(scale), and the same guard in
    front of every other Div by a constant (see the module docstring); weight
    DequantizeLinear of int8 constants stays as it is (int8 in the .bin, exact i8 * scale).
    Relies on the rules qdq_violations checks: zero points 0, activation scales scalar constants."""
    import numpy as np
    from onnx import helper, numpy_helper

    from onnx import TensorProto

    g = model.graph
    consts = {t.name for t in g.initializer}
    # float constants only: a Div of int64 shape values (a reshape's arithmetic) has nothing to round
    float_consts = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    float_consts |= {o for n in g.node if n.op_type == "Constant" and n.attribute and n.attribute[0].t.data_type == TensorProto.FLOAT
                     for o in n.output}
    nodes = []

    def guarded(x: str, hint: str) -> str:
        """x behind the Max(x, -FLT_MAX) that keeps a following Div by a constant a division."""
        nodes.append(helper.make_node("Max", [x, NO_FOLD], [hint + "/nofold"], name=hint + "/nofold"))
        return hint + "/nofold"

    for n in g.node:
        if n.op_type == "QuantizeLinear":
            x, scale = guarded(n.input[0], n.output[0]), n.input[1]
            nodes += [helper.make_node("Div", [x, scale], [n.output[0] + "/div"], name=n.name + "/div"),
                      helper.make_node("Round", [n.output[0] + "/div"], [n.output[0] + "/round"], name=n.name + "/round"),
                      helper.make_node("Clip", [n.output[0] + "/round", CODE_MIN, CODE_MAX], [n.output[0]], name=n.name + "/clip")]
        elif n.op_type == "DequantizeLinear" and n.input[0] not in consts:
            nodes.append(helper.make_node("Mul", [n.input[0], n.input[1]], list(n.output), name=n.name + "/mul"))
        elif n.op_type == "Div" and n.input[1] in float_consts:
            nodes.append(helper.make_node("Div", [guarded(n.input[0], n.output[0]), n.input[1]], list(n.output), name=n.name))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend([numpy_helper.from_array(np.array(-128, np.float32), CODE_MIN),
                          numpy_helper.from_array(np.array(127, np.float32), CODE_MAX),
                          numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), NO_FOLD)])
    return model


def convert(qdq, mode: str, tmp: Path, stem: str):
    """The OpenVINO model of a Q/DQ ONNX graph for `mode` (by way of a file in `tmp`: the ONNX
    frontend reads external data beyond protobuf's 2 GB, a BytesIO cannot carry it).

    Read by Core.read_model, not ov.convert_model: convert_model's offline constant folding turns
    the weights' DequantizeLinear (i8 constant -> Convert -> Multiply) into f32 constants once no
    activation Q/DQ pair sits next to it (measured: the dequant tiny encoder's int8 weight bytes
    fell from 330 kB to 17 kB and its .bin grew 3.4x); read_model keeps them int8."""
    from ...onnx_graph import save_onnx
    from .ovcore import core

    if mode == "dequant":
        qdq = explicit_rounding(qdq)
    save_onnx(qdq, tmp, stem)
    return core().read_model(str(tmp / f"{stem}.onnx"))


def write_openvino_ir(job, name: str, graph) -> tuple[list[str], dict]:
    import openvino as ov

    from ...qdq.lower import lower_graph_qdq
    from ...qdq.rules import qdq_violations, quantized_op_count

    job.status("Q/DQ graph")
    qdq = lower_graph_qdq(graph)
    bad = qdq_violations(qdq)
    if bad:
        raise ExportError(f"{name}: the Q/DQ graph breaks the explicit-quantization rules: {bad[0]}"
                          + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    integer_ops = quantized_op_count(qdq)
    shapes = {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
              for i in qdq.graph.input}
    job.status("OpenVINO IR")
    with tempfile.TemporaryDirectory(prefix=".openvino-", dir=job.out_dir) as tmp:
        model = convert(qdq, job.options["mode"], Path(tmp), f"{name}.qdq")
        del qdq
        ov.save_model(model, str(Path(tmp) / f"{name}.xml"), compress_to_fp16=False)
        int8_bytes = sum(int(op.get_byte_size()) for op in model.get_ops()
                         if op.get_type_name() == "Constant" and str(op.get_element_type()) == "<Type: 'int8_t'>")
        del model
        for ext in ("bin", "xml"):  # the .xml last: it names the .bin
            os.replace(Path(tmp) / f"{name}.{ext}", job.out_dir / f"{name}.{ext}")
    xml, binf = f"{name}.xml", f"{name}.bin"
    return [xml, binf], {"openvino_xml": xml, "openvino_bin": binf,
                         "openvino_bytes": sum((job.out_dir / f).stat().st_size for f in (xml, binf)),
                         "openvino_int8_weight_bytes": int8_bytes, "qdq_integer_ops": integer_ops,
                         "input_shapes": shapes}
