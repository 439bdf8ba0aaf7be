"""Write a component's OpenVINO IR: the deploy IR lowered to ONNX for the artifact's mode, converted
by OpenVINO's ONNX frontend and saved as `<component>.xml` + `<component>.bin`.

- int8: the CPU int8 graph (int8_graph.py), whose Q/DQ pairs OpenVINO's low-precision
  transformations fuse into int8 kernels.
- int8_qdq: the rule-checked Q/DQ graph (export/qdq, the same lowering the trt target writes).
- int8_narrow: per layer the int8 graph's lowering where the layer's integer operands cannot
  saturate int16 pair sums, the dequant graph's elsewhere (narrow_graph.py).
- dequant: the fake-quant function itself (fq_graph.py: one f32 Conv/MatMul per layer, no
  shifts, no split convs), with every Div by a constant guarded (`guard_divisions`).

The weights stay int8 in the .bin (Constant i8 -> Convert -> Subtract / Multiply):
`compress_to_fp16=False` keeps every float constant (biases, border maps, scales) in f32, since an
fp16 scale or map would move the graph away from the fake-quant model it is verified against.
The UNet keeps its traced tile (its attention scales have one entry per token); the VAE graphs
keep dynamic height and width, and the runtime compiles one static copy per size it meets.

Why the dequant graph rounds with its own Div -> Round -> Clip -> Mul rather than OpenVINO's:
OpenVINO turns a QuantizeLinear/DequantizeLinear pair into a FakeQuantize, which multiplies by a
precomputed 1/scale and clamps in its own way: measured on 1e6 random activations it rounds 4-5
of them to the neighbouring code (and 12-16% of values that lie within float error of a half
step), which cost the W6A6 tiny decoder 3 dB (44.99 dB vs fake-quant, under --verify's 45 dB bar).
OpenVINO's Divide is not a true division either (the plugin multiplies by the reciprocal: one
ulp off on about 2% of values, whatever the divisor's source), so a value within an ulp or so of
a half step may still take the neighbouring code; on 4e5 random activations none does. What
makes it worse is the CPU plugin folding a Sub (or Mul) of a constant and the Divs by constants
after it into one x * (1/(s*D)) + c', and every quantizer here sits behind such a chain (the LET
transform (x - o) / s then / D; P * s_vw then / D). A Max(x, -FLT_MAX) in front of each Div by a
constant, an identity on every finite value, stops that folding: on 1e5 values built to sit on
half steps behind an LET transform, 719 moved by one code with the guard, 18391 without
(tests/targets/test_export_openvino.py).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ...ir.trace import ExportError
from .fq_graph import NO_FOLD, guard_divisions  # noqa: F401  (the division guard lives with the graph it guards)
from .ovcore import convert


def lower_component(graph, mode: str, probes: list[str] | None = None):
    """(ONNX model, quantized convs/matmuls in it) of IR `graph` for `mode` (module docstring);
    the Q/DQ graph is held to the explicit-quantization rules it is written for."""
    if mode == "dequant":
        from .fq_graph import fake_quant_op_count, lower_graph_fq

        return guard_divisions(lower_graph_fq(graph, probes)), fake_quant_op_count(graph)
    if mode == "int8":
        from .int8_graph import int8_op_count, lower_graph_int8

        return lower_graph_int8(graph, probes), int8_op_count(graph)
    if mode == "int8_narrow":
        from .narrow_graph import lower_graph_narrow, narrow_op_count

        return lower_graph_narrow(graph, probes), narrow_op_count(graph)
    if mode != "int8_qdq":
        raise ValueError(f"no openvino graph for mode {mode!r}")
    from ...qdq.lower import lower_graph_qdq
    from ...qdq.rules import qdq_violations, quantized_op_count

    qdq = lower_graph_qdq(graph, probes=probes)
    bad = qdq_violations(qdq)
    if bad:
        raise ExportError(f"{graph.name}: the Q/DQ graph breaks the explicit-quantization rules: {bad[0]}"
                          + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return qdq, quantized_op_count(qdq)


def write_openvino_ir(job, name: str, graph) -> tuple[list[str], dict]:
    import openvino as ov

    mode = job.options["mode"]
    job.status({"int8": "int8 graph", "int8_qdq": "Q/DQ graph", "int8_narrow": "int8 / fake-quant graph"}.get(mode, "fake-quant graph"))
    onnx_model, quantized_ops = lower_component(graph, mode)
    shapes = {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
              for i in onnx_model.graph.input}
    job.status("OpenVINO IR")
    with tempfile.TemporaryDirectory(prefix=".openvino-", dir=job.out_dir) as tmp:
        model = convert(onnx_model, Path(tmp), f"{name}.{mode}")
        del onnx_model
        ov.save_model(model, str(Path(tmp) / f"{name}.xml"), compress_to_fp16=False)
        int8_bytes = sum(int(op.get_byte_size()) for op in model.get_ops()
                         if op.get_type_name() == "Constant" and str(op.get_element_type()) == "<Type: 'int8_t'>")
        del model
        for ext in ("bin", "xml"):  # the .xml last: it names the .bin
            os.replace(Path(tmp) / f"{name}.{ext}", job.out_dir / f"{name}.{ext}")
    xml, binf = f"{name}.xml", f"{name}.bin"
    fields = {"openvino_xml": xml, "openvino_bin": binf,
              "openvino_bytes": sum((job.out_dir / f).stat().st_size for f in (xml, binf)),
              "openvino_int8_weight_bytes": int8_bytes, "quantized_ops": quantized_ops,
              "input_shapes": shapes}
    if mode == "int8_narrow":  # which layers run int8 (narrow_graph.cannot_saturate) and which in f32
        from .narrow_graph import int8_layers

        as_int8 = int8_layers(graph)
        fields.update(openvino_int8_layers=sum(as_int8.values()),
                      openvino_f32_layers=[layer for layer, int8 in as_int8.items() if not int8])
    return [xml, binf], fields
