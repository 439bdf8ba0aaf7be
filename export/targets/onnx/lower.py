"""Lower a deploy-IR graph to ONNX for ONNX Runtime's CPU provider.

Float ops become the standard ONNX ops. Quantized ops become integer subgraphs built only
from what ONNX Runtime runs with its integer GEMM (MLAS QGEMM) kernels, per spec section 6:

    conv    [LET: Sub o, Div s] -> QuantizeLinear (u8; one per channel half of a split layer)
            -> Transpose to NHWC (u8) -> Pad with the operand zero point -> k*k Slices ->
            Concat (im2col) -> MatMulIntegerToFloat (per-column weight scale, zero point and
            the folded bias in the GEMM epilogue) -> Transpose to NCHW [-> + exact border map]
    linear  [LET] -> QuantizeLinear -> MatMulIntegerToFloat (one per K-group and token half)
    attention  q*s_qk, k/s_qk -> QuantizeLinear -> MatMulIntegerToFloat -> Softmax ->
            P*s_vw -> QuantizeLinear -> MatMulIntegerToFloat with v/s_vw (onnx_graph.lower_attention)

QConv/ConvInteger are avoided (ConvInteger is slower than fp32 here and rejects per-channel
weight zero points; QLinearConv requantizes its output, which is not the fake-quant function).
The K-groups, token halves, all-ones columns and folded constants of each layer come from its
plan (ir/plan.py), every zero point and residual from `int_algebra`; nothing here re-derives them.

`isa` selects the weight operand type: "portable" is exact on every x86 CPU (uint8 weights
where int8 could saturate without VNNI), "vnni" uses int8 weights everywhere (fastest, exact
only on CPUs with VNNI; the artifact records it and the loader checks the CPU).
"""
from __future__ import annotations

import numpy as np
import onnx
import torch

from ...ir import int_algebra as ia
from ...ir.graph import Graph
from ...ir.plan import Encoding, GroupPlan, layer_plan
from ...ir.recipes import QAttentionRecipe, QLayerRecipe
from ...onnx_graph import (INT64_MAX, OPSET, AttentionOps, OnnxBuilder, add_constants, add_offset_products,
                           add_ones_column, group_input, let_transform, lower_attention, lower_ir, quantized_lowering, row_inputs,
                           shared, weight_only)

MS_DOMAIN = "com.microsoft"
NP_OF = {"u8": np.uint8, "s8": np.int8}


def encoding(isa: str) -> Encoding:
    """uint8 activations; int8 weights where `isa` makes them exact, else uint8 (int_algebra)."""

    def weight(wg, act: ia.ActOperand) -> ia.WeightOperand:
        dtype = ia.choose_weight_dtype(act, wg.grid.bits, isa, ones_column=True)
        return ia.weight_operand(wg.codes, wg.grid, dtype)

    return Encoding(lambda grid: ia.act_operand(grid, "u8"), weight, ia.act_residual_taps)


# -- shared pieces --------------------------------------------------------------------------

def quantize(b: OnnxBuilder, x: str, op: ia.ActOperand, hint: str) -> str:
    """x -> operand (`op.dtype`), exactly clip(round(x / step) + zero, lo, hi) (ties aside:
    QuantizeLinear rounds half to even where the fake-quant rounds half away from zero)."""
    if op.wide:
        # round(x/step) + zero does not fit an 8-bit zero point (e.g. softmax outputs whose range
        # starts above 0): round into uint16, move by the zero point exactly in float, then let an
        # 8-bit QuantizeLinear (scale 1) saturate; every step is exact on integers < 2^24
        z16, zdq = (op.ql_zero, 0) if op.ql_zero >= 0 else (0, -op.ql_zero)
        q = b.node("QuantizeLinear", [x, b.scalar(op.step, np.float32), b.scalar(z16, np.uint16)], hint)
        f = b.node("DequantizeLinear", [q, b.scalar(1.0, np.float32), b.scalar(zdq, np.uint16)], hint)
        q = b.node("QuantizeLinear", [f, b.scalar(1.0, np.float32), b.scalar(0, NP_OF[op.dtype])], hint)
        if (op.lo, op.hi) != ia.DTYPE_RANGE[op.dtype]:
            q = b.node("Clip", [q, b.scalar(op.lo, NP_OF[op.dtype]), b.scalar(op.hi, NP_OF[op.dtype])], hint)
        return q
    q = b.node("QuantizeLinear", [x, b.scalar(op.step, np.float32), b.scalar(op.ql_zero, NP_OF[op.dtype])], hint)
    if op.needs_clip:
        q = b.node("Clip", [q, b.scalar(op.lo, NP_OF[op.dtype]), b.scalar(op.hi, NP_OF[op.dtype])], hint)
    return q


def weight_matrix(values: np.ndarray) -> np.ndarray:
    """(Cout, Cin_g, *k) operand values -> (K, Cout) with K ordered (tap, channel) like im2col."""
    v = values.transpose(2, 3, 1, 0) if values.ndim == 4 else values.T  # conv: kh, kw, c, o
    return v.reshape(-1, v.shape[-1])


def int_gemm(b: OnnxBuilder, a: str, g: GroupPlan, bias: np.ndarray | None, hint: str, wkey: str) -> str:
    """Da * Dw_o * sum_k (a - za)(b - zb) + bias, with the plan's all-ones column for weight
    residuals. GEMMs with the same `wkey` (token halves of one K-group) share one weight initializer."""
    values, zero, step = g.columns()
    w = shared(b, ("gemm", wkey), lambda: (b.init(hint + ".w", weight_matrix(values)), b.init(hint + ".w_step", step),
                                           b.init(hint + ".w_zero", zero)))
    ins = [a, w[0], b.scalar(g.act.step, np.float32), w[1], b.scalar(g.act.kernel_zero, np.uint8), w[2]]
    if bias is not None:  # the ones column's bias stays 0
        ins.append(b.init(hint + ".bias", np.append(bias, np.zeros(len(step) - len(bias))).astype(np.float32)))
    return add_ones_column(b, b.node("MatMulIntegerToFloat", ins, hint, domain=MS_DOMAIN), g, hint)


def im2col_nhwc(b: OnnxBuilder, a: str, rec: QLayerRecipe, pad_value: int, dtype: str, hint: str) -> str:
    """(1, H, W, C) operand -> (1, Ho, Wo, kh*kw*C), padded with the operand zero point."""
    kh, kw = rec.kernel
    sh, sw = rec.stride
    ph, pw = rec.padding
    dh, dw = rec.dilation
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        return a
    if ph or pw:
        a = b.node("Pad", [a, b.i64([0, ph, pw, 0, 0, ph, pw, 0]), b.scalar(pad_value, NP_OF[dtype])], hint)
    cols = []
    for dy in range(kh):
        for dx in range(kw):
            # rows dy*dh, dy*dh + sh, ... ; the end is relative so any input size works
            end_h = -((kh - 1 - dy) * dh) or INT64_MAX
            end_w = -((kw - 1 - dx) * dw) or INT64_MAX
            cols.append(b.node("Slice", [a, b.i64([dy * dh, dx * dw]), b.i64([end_h, end_w]), b.i64([1, 2]),
                                         b.i64([sh, sw])], hint))
    return cols[0] if len(cols) == 1 else b.node("Concat", cols, hint, axis=3)


# -- quantized layers -------------------------------------------------------------------------

def lower_qconv(b: OnnxBuilder, rec: QLayerRecipe, x: str, isa: str) -> str:
    h = rec.name
    if rec.acts is None:
        return weight_only(b, rec, x)
    plan = layer_plan(rec, 4, encoding(isa))
    xs = let_transform(b, rec, x, 4)
    (row,) = plan.rows
    y = None
    for g in row.groups:
        # one per-tensor QuantizeLinear per channel half (contiguous NCHW slices): a per-channel
        # QuantizeLinear would be exact too, but ONNX Runtime's transpose optimizer moves it behind
        # the NHWC transpose, where per-axis quantization along the last axis is ~50x slower
        a = quantize(b, group_input(b, xs, rec, g, 1, h), g.act, h + ".a")
        cols = im2col_nhwc(b, b.node("Transpose", [a], h, perm=[0, 2, 3, 1]), rec, g.act.kernel_zero, "u8", h)
        yg = int_gemm(b, cols, g, row.bias if g.index == 0 else None, f"{h}.g{g.index}", f"{h}.{g.key}")
        y = yg if y is None else b.node("Add", [y, yg], h)
    y = b.node("Transpose", [y], h, perm=[0, 3, 1, 2])
    return add_constants(b, y, x, rec, None, plan.map_taps, h)  # the bias is in the GEMM epilogue


def lower_qlinear(b: OnnxBuilder, rec: QLayerRecipe, x: str, shape: tuple, isa: str) -> str:
    h = rec.name
    if rec.acts is None:
        return weight_only(b, rec, x)
    plan = layer_plan(rec, len(shape), encoding(isa))
    outs = []
    for ri, (xr, row) in enumerate(zip(row_inputs(b, let_transform(b, rec, x, len(shape)), plan, h), plan.rows)):
        # one QuantizeLinear per row block when its K-groups share a grid, else one per group
        q = None if row.act is None else quantize(b, xr, row.act, h + ".a")
        y = None
        for g in row.groups:
            if q is not None:
                a = group_input(b, q, rec, g, -1, h)
            else:
                a = quantize(b, group_input(b, xr, rec, g, -1, h), g.act, h + ".a")
            yg = int_gemm(b, a, g, row.bias if g.index == 0 else None, f"{h}.r{ri}g{g.index}", f"{h}.{g.key}")
            y = yg if y is None else b.node("Add", [y, yg], h)
        outs.append(y)
    return outs[0] if len(outs) == 1 else b.node("Concat", outs, h, axis=1)


# -- attention ----------------------------------------------------------------------------------

def act_matmul(b: OnnxBuilder, a: str, aop: ia.ActOperand, bb: str, bop: ia.ActOperand, scale: float, k: int,
               hint: str) -> str:
    """Da*Db*scale * sum_k ja jb for two activation operands, with the residual terms of
    int_algebra when a grid lies outside its operand type (never for ranges containing 0)."""
    b_step = np.float32(bop.step * scale)
    zeros = [b.scalar(aop.kernel_zero, NP_OF[aop.dtype]), b.scalar(bop.kernel_zero, NP_OF[bop.dtype])]
    y = b.node("MatMulIntegerToFloat", [a, bb, b.scalar(aop.step, np.float32), b.scalar(b_step, np.float32), *zeros],
               hint, domain=MS_DOMAIN)
    # j = (operand - zero) + residual: the float A and B are the dequantized (operand - zero)
    deq_a = lambda: b.node("DequantizeLinear", [a, b.scalar(aop.step, np.float32), zeros[0]], hint)
    deq_b = lambda: b.node("DequantizeLinear", [bb, b.scalar(b_step, np.float32), zeros[1]], hint)
    return add_offset_products(b, y, deq_a, float(aop.step) * aop.residual, deq_b, float(b_step) * bop.residual, k, hint)


def const_operand(b: OnnxBuilder, values: torch.Tensor, op: ia.ActOperand, hint: str) -> str:
    """Operand codes of a constant activation (folded cross-attention K/V), as the fake-quant rounds."""
    return b.init(hint, ia.act_operand_values(values, op).numpy().astype(NP_OF[op.dtype]))


def lower_qattention(b: OnnxBuilder, rec: QAttentionRecipe, q: str, k: str, v: str, consts: dict, isa: str) -> str:
    qop, pop = ia.act_operand(rec.q, "u8"), ia.act_operand(rec.p, "u8")
    kop = ia.act_operand(rec.k, ia.choose_act_b_dtype(qop, rec.k, isa))
    vop = ia.act_operand(rec.v, ia.choose_act_b_dtype(pop, rec.v, isa))
    return lower_attention(b, rec, q, k, v, consts, AttentionOps((qop, kop, pop, vop), quantize, const_operand, act_matmul))


# -- whole graphs ----------------------------------------------------------------------------------

def lower_graph(g: Graph, isa: str = "portable", probes: list[str] | None = None) -> onnx.ModelProto:
    """The ONNX model of IR graph `g` for ONNX Runtime's CPU int8 kernels (see lower_ir)."""
    if isa not in ia.ISAS:
        raise ValueError(f"unknown ISA {isa!r}; choose one of {', '.join(ia.ISAS)}")

    return lower_ir(g, quantized_lowering(lower_qconv, lower_qlinear, lower_qattention, isa=isa), probes,
                    opsets=(("", OPSET), (MS_DOMAIN, 1)))
