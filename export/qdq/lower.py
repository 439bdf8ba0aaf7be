"""Lower a deploy-IR graph to explicit-quantization ONNX for TensorRT (the `trt` target).

TensorRT fuses QuantizeLinear -> DequantizeLinear pairs into integer kernels when they sit
directly on the inputs of a Conv / Gemm / MatMul, and it accepts only int8 with zero point 0,
per-tensor activation scales and per-output-channel weight scales on axis 0. PassionSR's grids
are asymmetric, so every grid is shifted onto int8 exactly (int_algebra.sym_act / sym_weight:
j = m + c) and the constants are compensated after the integer op. Each activation code is
decided as the fake-quant decides it (`codes`: divide by D, round half away from zero, subtract
the integer c), and the Q/DQ pair has scale 1 with D folded into the weight scales:

    conv    x -> [LET: Sub o, Div s] -> Div D -> R -> Sub c -> [Clip for < 8-bit grids] -> Q(1) ->
            DQ(1) -> Conv <- DQ(Dw*Da) <- int8 weights m (+ one all-ones output channel when some
            weight channel has a shift c_w: it yields Da * (box sum of m over the window), which
            carries c_w*Dw)
            y = Conv + bias + c_w*Dw * ones_channel + map, where the map (valid-tap sum over the
            padded border, as in the fake-quant) holds the LET correction and c*D * sum(w^)
    linear  the same with Gemm(transB=1) on a 2-D view of the tokens (weights (Cout, K), axis 0)
    attention  q*s_qk, k*(1/s_qk) (transposed before quantizing, so DQ feeds MatMul directly) ->
            codes -> MatMul -> + integer shift terms -> *(Dq*Dk*scale) -> Softmax -> P*s_vw ->
            codes -> MatMul with codes(v*(1/s_vw)) -> + integer shift terms -> *(Dp*Dv)

Split halves are separate Q/DQ + Conv/Gemm pairs summed; 6-bit codes travel as int8 with a
Clip to their 64 values before Q (a 6-bit grid around 0 needs no shift, so W6A6 layers have no
compensation terms at all). The float ops are onnx_graph's. The K-groups, token halves, ones
channels and folded constants of each layer come from its plan (ir/plan.py), every shift and
step from int_algebra; nothing here re-derives them.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch

from ..ir import int_algebra as ia
from ..ir.graph import Graph
from ..ir.plan import Encoding, GroupPlan, layer_plan
from ..ir.recipes import QAttentionRecipe, QLayerRecipe, WeightGroup
from ..onnx_graph import (AttentionOps, OnnxBuilder, add_constants, add_offset_products, add_ones_column, group_input,
                           let_transform, lower_attention, lower_ir, quantized_lowering, row_inputs, shared, weight_only)
from .static_maps import fold_border_maps


def sym_weight_operand(wg: WeightGroup, act: ia.SymAct) -> ia.WeightOperand:
    """TensorRT's int8 weights (ia.sym_weight) as the plan's operand: jw = (m - 0) + shift.
    The activation operand does not matter here: TensorRT's weights are always int8."""
    sw = ia.sym_weight(wg.codes, wg.grid)
    return ia.WeightOperand("s8", sw.values, np.zeros(sw.shift.shape, np.int8), sw.shift, sw.step)


ENCODING = Encoding(ia.sym_act, sym_weight_operand, ia.act_shift_taps)


def round_half_away(b: OnnxBuilder, v: str, hint: str) -> str:
    """LBQ's R(v) = sign(v) * floor(|v| + 0.5), with the same float32 ops as the fake-quant."""
    mag = b.node("Floor", [b.node("Add", [b.node("Abs", [v], hint), b.scalar(np.float32(0.5), np.float32)], hint)], hint)
    return b.node("Mul", [b.node("Sign", [v], hint), mag], hint)


def int_qdq(b: OnnxBuilder, m: str, op: ia.SymAct, hint: str) -> str:
    """The integer-valued m clipped to the grid's codes (the 8-bit range is Q's own saturation)
    through a scale-1 Q/DQ pair: the int8 operand TensorRT takes, with no rounding left to Q."""
    if op.needs_clip:
        m = b.node("Clip", [m, b.scalar(np.float32(op.lo), np.float32), b.scalar(np.float32(op.hi), np.float32)], hint)
    one, zero = b.scalar(np.float32(1.0), np.float32), b.scalar(0, np.int8)
    return b.node("DequantizeLinear", [b.node("QuantizeLinear", [m, one, zero], hint), one, zero], hint)


def codes(b: OnnxBuilder, x: str, op: ia.SymAct, hint: str) -> str:
    """DQ(Q(m)) = m, the int8 operand as an integer-valued float, decided as the fake-quant decides
    its code: v = x / D (a true float32 division, as LBQ divides), j = R(v) rounded half away from
    zero, m = j - c (c: the integer shift onto int8), clipped to the grid's codes. The Q/DQ pair
    then has scale 1: it only carries an integer TensorRT can take as int8, so QuantizeLinear's
    half-to-even rounding never decides a code. (Subtracting c*D before a QuantizeLinear of scale
    D instead rounds at |m| up to 128, where float32 spacing turns near-ties into exact ties that
    Q then rounds to even.)"""
    j = round_half_away(b, b.node("Div", [x, b.scalar(np.float32(op.step), np.float32)], hint), hint)
    return int_qdq(b, b.node("Sub", [j, b.scalar(np.float32(op.shift), np.float32)], hint) if op.shift else j, op, hint)


def group_operands(b: OnnxBuilder, x: str, rec: QLayerRecipe, groups: list[GroupPlan], axis: int, ndim: int,
                   hint: str) -> list[str]:
    """The integer operand m of each K-group. K-groups with their own grids (channel halves) are
    coded in one pass over per-channel vectors of D and c (Div, round, one Sub: the same float32
    operation per element as per half), then split; groups sharing a grid are coded per slice."""
    if len(groups) == 1 or all(g.act is groups[0].act for g in groups):
        return [codes(b, group_input(b, x, rec, g, axis, hint), g.act, f"{hint}.a{g.index}") for g in groups]
    shape = (-1,) + (1,) * (ndim - 1 - axis % ndim)  # the channel axis and the axes after it
    steps = np.concatenate([np.full(g.k1 - g.k0, np.float32(g.act.step), np.float32) for g in groups])
    shifts = np.concatenate([np.full(g.k1 - g.k0, g.act.shift, np.float32) for g in groups])
    j = round_half_away(b, b.node("Div", [x, b.init(hint + ".act_step", steps.reshape(shape))], hint), hint)
    if shifts.any():
        j = b.node("Sub", [j, b.init(hint + ".act_shift", shifts.reshape(shape))], hint)
    return [int_qdq(b, group_input(b, j, rec, g, axis, hint), g.act, f"{hint}.a{g.index}") for g in groups]


def dq_weight(b: OnnxBuilder, g: GroupPlan, hint: str) -> str:
    """The K-group's int8 weights (with the plan's all-ones channel, step 1: its output is the
    window sum of the activation operand that a weight shift multiplies) -> per-channel
    DequantizeLinear on axis 0, whose scale carries the activation step too (Dw * Da, one
    float32 rounding of the product, as TensorRT's dequantization scale): the activation
    operand is m itself (`codes`), so the op's output is sum(m * w) * Dw * Da in real units."""
    values, zero, step = g.columns()
    unit = (step.astype(np.float64) * float(g.act.step)).astype(np.float32)
    return b.node("DequantizeLinear", [b.init(hint + ".w", values), b.init(hint + ".w_step", unit),
                                       b.init(hint + ".w_zero", zero)], hint, axis=0)


def bias_input(b: OnnxBuilder, bias: np.ndarray | None, g: GroupPlan, hint: str) -> list[str]:
    """The plan's folded bias as the integer op's own bias input (TensorRT adds it in the int8
    kernel's epilogue, after the dequantization scale: no separate Add), zero on the all-ones
    channel; [] when there is none. Only the first K-group of a row takes it."""
    if bias is None:
        return []
    bias = bias.astype(np.float32)
    if g.ones_column:
        bias = np.concatenate([bias, np.zeros(1, np.float32)])
    return [b.init(hint + ".bias", bias)]


# -- quantized layers -------------------------------------------------------------------------

def lower_qconv(b: OnnxBuilder, rec: QLayerRecipe, x: str) -> str:
    h = rec.name
    if rec.acts is None:
        return weight_only(b, rec, x, float_weights=True)
    plan = layer_plan(rec, 4, ENCODING)
    xs = let_transform(b, rec, x, 4)
    (row,) = plan.rows
    y = None
    for g, a in zip(row.groups, group_operands(b, xs, rec, row.groups, 1, 4, h)):
        ins = [a, dq_weight(b, g, f"{h}.g{g.index}")] + bias_input(b, row.bias if y is None else None, g, f"{h}.g{g.index}")
        yg = b.node("Conv", ins, h, strides=list(rec.stride), pads=list(rec.padding) * 2, dilations=list(rec.dilation))
        yg = add_ones_column(b, yg, g, f"{h}.g{g.index}", spatial_dims=2)
        y = yg if y is None else b.node("Add", [y, yg], h)
    return add_constants(b, y, x, rec, None, plan.map_taps, h, spatial_dims=2)


def lower_qlinear(b: OnnxBuilder, rec: QLayerRecipe, x: str, shape: tuple) -> str:
    """Gemm(transB=1) on a 2-D view of the tokens: TensorRT quantizes Gemm weights on axis 0."""
    h = rec.name
    if rec.acts is None:
        return weight_only(b, rec, x, float_weights=True)
    plan = layer_plan(rec, len(shape), ENCODING)
    outs = []
    for ri, (rows, row) in enumerate(zip(row_inputs(b, let_transform(b, rec, x, len(shape)), plan, h), plan.rows)):
        flat = b.node("Reshape", [rows, b.i64([-1, rec.in_channels])], h) if len(shape) == 3 else rows
        y = None
        for g, a in zip(row.groups, group_operands(b, flat, rec, row.groups, 1, 2, f"{h}.r{ri}")):
            # token halves share the weights only where they share the activation step folded in
            w = shared(b, ("qdq", h, g.key, float(g.act.step)), lambda: dq_weight(b, g, f"{h}.r{ri}g{g.index}"))
            bias = bias_input(b, row.bias if y is None else None, g, f"{h}.r{ri}g{g.index}")
            yg = add_ones_column(b, b.node("Gemm", [a, w] + bias, h, transB=1), g, f"{h}.r{ri}g{g.index}")
            y = yg if y is None else b.node("Add", [y, yg], h)
        if len(shape) == 3:  # back to (B, N_rows, Cout)
            lead = b.node("Shape", [rows], h, start=0, end=2)
            y = b.node("Reshape", [y, b.node("Concat", [lead, b.i64([rec.out_channels])], h, axis=0)], h)
        outs.append(y)
    return outs[0] if len(outs) == 1 else b.node("Concat", outs, h, axis=1)


# -- attention ----------------------------------------------------------------------------------

def qdq_matmul(b: OnnxBuilder, a: str, aop: ia.SymAct, bb: str, bop: ia.SymAct, scale: float, k: int, hint: str) -> str:
    """scale * (a^ @ b^) from the integer operands a = ja - ca, bb = jb - cb (`codes`): the shift
    terms are integer sums, and Da * Db * scale (float64, rounded once) scales the exact result."""
    y = add_offset_products(b, b.node("MatMul", [a, bb], hint), lambda: a, aop.shift, lambda: bb, bop.shift, k, hint)
    unit = np.float32(float(aop.step) * float(bop.step) * scale)
    return b.node("Mul", [y, b.scalar(unit, np.float32)], hint)


def const_dq(b: OnnxBuilder, values: torch.Tensor, op: ia.SymAct, hint: str) -> str:
    """DQ (scale 1) of the int8 m of a constant activation (folded cross-attention K/V), coded as
    the fake-quant codes it: float32 x / D, rounded half away from zero, minus the shift."""
    v = values.float() / torch.tensor(op.step, dtype=torch.float32)
    j = torch.sign(v) * torch.floor(v.abs() + 0.5)
    m = torch.clamp(j - op.shift, op.lo, op.hi).numpy().astype(np.int8)
    one, zero = b.scalar(np.float32(1.0), np.float32), b.scalar(0, np.int8)
    return b.node("DequantizeLinear", [b.init(hint, m), one, zero], hint)


def lower_qattention(b: OnnxBuilder, rec: QAttentionRecipe, q: str, k: str, v: str, consts: dict) -> str:
    ops = tuple(ia.sym_act(g) for g in (rec.q, rec.k, rec.p, rec.v))
    return lower_attention(b, rec, q, k, v, consts, AttentionOps(ops, codes, const_dq, qdq_matmul))


# -- whole graphs ----------------------------------------------------------------------------------

def lower_graph_qdq(g: Graph, input_shapes: dict[str, tuple] | None = None,
                    probes: list[str] | None = None) -> onnx.ModelProto:
    """The explicit-quantization ONNX of IR graph `g` (see onnx_graph.lower_ir). `input_shapes`:
    the fixed shape of each input (the artifact's tile); default: the IR's traced shapes."""
    model = lower_ir(g, quantized_lowering(lower_qconv, lower_qlinear, lower_qattention), probes, input_shapes)
    # at a fixed tile the border maps are constants (static_maps.py); size-generic graphs keep them computed
    return model if input_shapes is None else fold_border_maps(model)
