"""Codes the int8 graph's quantizers round differently from the fake-quant, per layer.

The plugin quantizes with its FakeQuantize arithmetic (a multiply by a precomputed reciprocal,
with the LET transform possibly folded into its ranges), the fake-quant with (x - o) / s / D in
float32 and round half away from zero: a value within float error of a half step may take the
neighbouring code. `boundary_codes` measures how many, layer by layer: it runs the int8 graph
with every quantized conv/linear layer's input and every quantizer output the GEMMs read as extra
outputs, recomputes the fake-quant's codes from that same input (so upstream differences do not
count), and compares them with the codes the plugin produced. Exposing a quantizer output keeps
its FakeQuantize (the same node and arithmetic) but gives it a float consumer, so this is the
quantizer the artifact runs, observed.
"""
from __future__ import annotations

import numpy as np
import torch

from ...ir import int_algebra as ia
from ...ir.plan import layer_plan
from .int8_graph import ENCODING, lower_graph_int8


def _gemm_inputs(model, rec) -> list[str]:
    """The activation inputs of the layer's Conv/MatMul nodes, in K-group order (one per group)."""
    return [n.input[0] for n in model.graph.node
            if n.op_type in ("Conv", "MatMul") and n.name.startswith(f"n.{rec.name}.g") and ".window" not in n.input[1]
            and f"{rec.name}.r1." not in n.input[0]]


def boundary_codes(graph, x: np.ndarray, compile_config: dict, extra_feeds: dict | None = None) -> dict:
    """{layer: {"codes": compared, "moved": codes that differ, "max_step": largest |difference|}} for
    the quantized conv/linear layers of IR `graph` on input `x` (its main input)."""
    import onnx

    from .ovcore import convert
    from .ovcore import core

    layers = [n for n in graph.nodes if n.op in ("qconv", "qlinear") and graph.recipes[n.attrs["recipe"]].acts is not None]
    model = lower_graph_int8(graph, probes=[n.inputs[0] for n in layers])
    watched = {}
    for n in layers:
        rec = graph.recipes[n.attrs["recipe"]]
        watched[n.name] = (rec, n.inputs[0], _gemm_inputs(model, rec))
        for name in watched[n.name][2]:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="passion-ov-boundary-") as tmp:
        ov_model = convert(model, Path(tmp), "boundary")
    feeds = {next(iter(graph.inputs)): x, **(extra_feeds or {})}
    compiled = core().compile_model(ov_model, "CPU", compile_config)
    res = compiled(feeds)
    by_name = {}
    for out in compiled.outputs:
        for nm in out.get_names():
            by_name[nm] = np.asarray(res[out])
    report = {}
    for lname, (rec, inp, gemm_ins) in watched.items():
        xin = torch.from_numpy(by_name["probe:" + inp])
        plan = layer_plan(rec, xin.dim(), ENCODING)
        xs = xin
        if rec.let_scale is not None:  # the fake-quant's own float32 expression (onnx_graph.let_transform)
            shape = (-1,) + (1,) * (xin.dim() - 2) if rec.kind == "conv" else (-1,)
            if rec.let_offset_nonzero():
                xs = xs - torch.from_numpy(rec.let_input_offset.reshape(shape))
            xs = xs / torch.from_numpy(rec.let_scale.reshape(shape))
        axis = 1 if rec.kind == "conv" else -1
        moved = total = worst = 0
        for g, name in zip(plan.rows[0].groups, gemm_ins):
            part = xs.narrow(axis % xs.dim(), g.k0, g.k1 - g.k0) if len(rec.weights) > 1 else xs
            got = torch.from_numpy(by_name[name]).double()
            if got.dim() == xs.dim() + 1:  # token halves as a batch axis (int8_graph.lower_qlinear): back to (B, N, K)
                got = got.reshape(xs.shape[0], -1, got.shape[-1])
            spans = plan.row_spans(xs.shape[1])
            for (r0, r1), row in zip(spans, plan.rows):
                grid = rec.acts[_grid_index(rec, plan, row, g)]
                sl = part[:, r0:r1] if plan.token_halves else part
                want = ia.quant_codes(sl, grid) + float(grid.zp)
                have = torch.round((got[:, r0:r1] if plan.token_halves else got) / float(grid.step))
                d = (have - want.double()).abs()
                moved += int((d > 0).sum())
                total += d.numel()
                worst = max(worst, int(d.max()) if d.numel() else 0)
        report[lname] = {"codes": total, "moved": moved, "max_step": worst}
    return report


def _grid_index(rec, plan, row, g) -> int:
    """Which of rec.acts the plan's operand of (row, group) is."""
    if plan.token_halves:
        return plan.rows.index(row)
    return g.index if len(rec.acts) == 2 else 0
