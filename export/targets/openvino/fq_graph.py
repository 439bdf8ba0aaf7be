"""The dequant mode's graph: the fake-quant function itself in ONNX, for float convs and matmuls.

The Q/DQ graph (export/qdq) is shaped by what an int8 engine accepts: int8 codes with zero point
0, per-tensor activation scales. PassionSR's asymmetric grids meet that only through integer
shifts (a Sub before each quantizer, an all-ones output channel split off after each conv with a
weight shift, shift terms in every border map) and its split layers only as one Q/DQ conv per
half plus an Add. An engine that computes in f32 needs none of it, and in OpenVINO's CPU plugin it
costs: a Split of a conv's output at Cout runs as a reference kernel (`ref_f32`), and the halves
are two convs. So the dequant mode lowers each quantized layer as the reference writes it
(spec sections 2-4):

    conv / linear   x' = (x - o) / s  ->  Clip(Round(x' / D), zp + qmin, zp + qmax) * D
                    ->  one Conv / MatMul with W^ = (m - (-c)) * Dw (int8 m, c the per-channel
                    shift that fits the codes in int8: j = m + c = q + zp, exact)
                    ->  + fake-quantized bias + the LET correction (its border map if padded)
    attention       the same fake-quant on q*s_qk, k/s_qk, P*s_vw and v/s_vw, float MatMuls

Split halves become per-channel vectors of D and bounds on one tensor (channel halves) or two
token slices quantized and concatenated (token halves), so every layer has one Conv or MatMul.
Every Div here divides by a constant as the fake-quant does; guard_divisions (below) keeps
OpenVINO from turning any of them into a multiplication.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch

from ...ir import int_algebra as ia
from ...ir.graph import Graph
from ...ir.plan import fold_constants
from ...ir.recipes import QAttentionRecipe, QLayerRecipe
from ...onnx_graph import (INT64_MAX, AttentionOps, OnnxBuilder, add_constants, let_transform, lower_attention,
                           lower_ir, quantized_lowering, weight_only)


def fake_quant(b: OnnxBuilder, x: str, grid: ia.Grid, hint: str) -> str:
    """x^ = Clip(Round(x / D), jmin, jmax) * D on a per-tensor grid: the fake-quant's
    (clamp(R(x/D) - zp, qmin, qmax) + zp) * D in one rounding (integers are exact in f32)."""
    step = b.scalar(np.float32(grid.step), np.float32)
    r = b.node("Round", [b.node("Div", [x, step], hint)], hint)
    c = b.node("Clip", [r, b.scalar(np.float32(grid.jmin()), np.float32), b.scalar(np.float32(grid.jmax()), np.float32)], hint)
    return b.node("Mul", [c, step], hint)


def fake_quant_channels(b: OnnxBuilder, x: str, rec: QLayerRecipe, axis: int, ndim: int, hint: str) -> str:
    """x' quantized on the channel axis: one grid, or each K-group's channels on its own grid
    (split halves) as per-channel vectors of D and code bounds, all in one pass."""
    if len(rec.acts) == 1:
        return fake_quant(b, x, rec.acts[0], hint)
    groups = list(zip(rec.weights, rec.acts))
    if len(groups) != len(rec.weights):
        raise ValueError(f"{rec.name}: {len(rec.acts)} activation grids for {len(rec.weights)} weight groups")
    shape = (-1,) + (1,) * (ndim - 1 - axis % ndim)
    vec = lambda f: np.concatenate([np.full(w.k1 - w.k0, f(a), np.float32) for w, a in groups]).reshape(shape)
    step = b.init(hint + ".act_step", vec(lambda a: a.step))
    r = b.node("Round", [b.node("Div", [x, step], hint)], hint)
    lo, hi = b.init(hint + ".act_jmin", vec(lambda a: a.jmin())), b.init(hint + ".act_jmax", vec(lambda a: a.jmax()))
    return b.node("Mul", [b.node("Min", [b.node("Max", [r, lo], hint), hi], hint), step], hint)


def fake_quant_tokens(b: OnnxBuilder, x: str, rec: QLayerRecipe, hint: str) -> str:
    """(B, N, C) with the first and second half of the tokens (cut at N // 2 of the actual input,
    as the fake-quant cuts them) each on its own grid."""
    n = b.node("Shape", [x], hint, start=1, end=2)
    half = b.node("Div", [n, b.i64([2])], hint)
    halves = [b.node("Slice", [x, r0, r1, b.i64([1])], hint) for r0, r1 in ((b.i64([0]), half), (half, b.i64([INT64_MAX])))]
    return b.node("Concat", [fake_quant(b, t, grid, f"{hint}.t{i}") for i, (t, grid) in enumerate(zip(halves, rec.acts))],
                  hint, axis=1)


def weights(b: OnnxBuilder, rec: QLayerRecipe) -> str:
    """W^ of the layer, (Cout, Cin, *kernel): each K-group's int8 m (j = m + c per output
    channel, ia.sym_weight) as Convert -> Subtract(-c) -> Multiply(Dw), OpenVINO's compressed
    weight pattern (the bytes stay int8 in the IR); K-groups concatenated on the input channels."""
    parts = []
    for gi, wg in enumerate(rec.weights):
        sw = ia.sym_weight(wg.codes, wg.grid)
        shape = (-1,) + (1,) * (sw.values.ndim - 1)
        h = f"{rec.name}.w{gi}"
        w = b.node("Cast", [b.init(h, sw.values)], h, to=onnx.TensorProto.FLOAT)
        w = b.node("Sub", [w, b.init(h + ".zero", (-sw.shift).astype(np.float32).reshape(shape))], h)
        parts.append(b.node("Mul", [w, b.init(h + ".step", sw.step.reshape(shape))], h))
    return parts[0] if len(parts) == 1 else b.node("Concat", parts, rec.name, axis=1)


def lower_qconv(b: OnnxBuilder, rec: QLayerRecipe, x: str) -> str:
    if rec.acts is None:
        return weight_only(b, rec, x)
    h = rec.name
    xq = fake_quant_channels(b, let_transform(b, rec, x, 4), rec, 1, 4, h + ".act")
    bias, map_taps = fold_constants(rec, [])
    ins = [xq, weights(b, rec)] + ([b.init(h + ".bias", bias.astype(np.float32))] if bias is not None else [])
    y = b.node("Conv", ins, h, strides=list(rec.stride), pads=list(rec.padding) * 2, dilations=list(rec.dilation))
    return add_constants(b, y, x, rec, None, map_taps, h)


def lower_qlinear(b: OnnxBuilder, rec: QLayerRecipe, x: str, shape: tuple) -> str:
    if rec.acts is None:
        return weight_only(b, rec, x)
    h, ndim = rec.name, len(shape)
    xs = let_transform(b, rec, x, ndim)
    if rec.act_split_on_tokens(ndim) and len(rec.acts) == 2:
        xq = fake_quant_tokens(b, xs, rec, h + ".act")
    else:
        xq = fake_quant_channels(b, xs, rec, -1, ndim, h + ".act")
    y = b.node("MatMul", [xq, b.node("Transpose", [weights(b, rec)], h, perm=[1, 0])], h)
    bias, _ = fold_constants(rec, [])
    return add_constants(b, y, x, rec, bias, None, h)


def const_fake_quant(b: OnnxBuilder, values: torch.Tensor, grid: ia.Grid, hint: str) -> str:
    """A folded constant operand (cross-attention K/V) fake-quantized by the fake-quant's own
    expression, stored as its f32 grid values."""
    q = ia.quant_codes(values.float(), grid)
    return b.init(hint, ((q + float(grid.zp)) * torch.tensor(grid.step, dtype=torch.float32)).numpy())


def matmul(b: OnnxBuilder, a: str, _aop, bb: str, _bop, scale: float, _k: int, hint: str) -> str:
    y = b.node("MatMul", [a, bb], hint)
    return y if scale == 1.0 else b.node("Mul", [y, b.scalar(scale, np.float32)], hint)


def lower_qattention(b: OnnxBuilder, rec: QAttentionRecipe, q: str, k: str, v: str, consts: dict) -> str:
    return lower_attention(b, rec, q, k, v, consts,
                           AttentionOps((rec.q, rec.k, rec.p, rec.v), fake_quant, const_fake_quant, matmul))


def lower_graph_fq(g: Graph, probes: list[str] | None = None) -> onnx.ModelProto:
    """The dequant mode's ONNX of IR graph `g` (module docstring), traced input shapes kept."""
    return lower_ir(g, quantized_lowering(lower_qconv, lower_qlinear, lower_qattention), probes)


def fake_quant_op_count(g: Graph) -> int:
    """The convs and matmuls lower_graph_fq runs on fake-quantized activations (two per attention)."""
    return sum(2 if n.op == "qattention" else int(g.recipes[n.attrs["recipe"]].acts is not None)
               for n in g.nodes if n.op in ("qconv", "qlinear", "qattention"))


NO_FOLD = "passion.lowest_float"


def guard_divisions(model, only: set[str] | None = None):
    """`model` with a Max(x, -FLT_MAX) in front of every Div by a float constant (see convert.py's module
    docstring): the division stays a division in OpenVINO, as in the fake-quant model. `only`: the
    names of the Div nodes to guard (the fake-quant layers of the int8_narrow graph), else all."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    # float constants only: a Div of int64 shape values (a reshape's arithmetic) has nothing to round
    float_consts = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    float_consts |= {o for n in g.node if n.op_type == "Constant" and n.attribute and n.attribute[0].t.data_type == TensorProto.FLOAT
                     for o in n.output}
    nodes = []
    for n in g.node:
        if n.op_type == "Div" and n.input[1] in float_consts and (only is None or n.name in only):
            guard = n.output[0] + "/nofold"
            nodes.append(helper.make_node("Max", [n.input[0], NO_FOLD], [guard], name=guard))
            n = helper.make_node("Div", [guard, n.input[1]], list(n.output), name=n.name)
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.append(numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), NO_FOLD))
    return model
