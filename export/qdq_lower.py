"""Lower a deploy-IR graph to explicit-quantization ONNX for TensorRT (the `trt` target).

TensorRT fuses QuantizeLinear -> DequantizeLinear pairs into integer kernels when they sit
directly on the inputs of a Conv / Gemm / MatMul, and it accepts only int8 with zero point 0,
per-tensor activation scales and per-output-channel weight scales on axis 0. PassionSR's grids
are asymmetric, so every grid is shifted onto int8 exactly (int_algebra.sym_act / sym_weight:
j = m + c) and the constants are compensated after the integer op:

    conv    x -> [LET: Sub o, Div s] -> Sub c*D -> [Clip for < 8-bit grids] -> Q -> DQ -> Conv
            <- DQ <- int8 weights m (+ one all-ones output channel when some weight channel has
            a shift c_w: it yields D * (box sum of m over the window), which carries c_w*Dw)
            y = Conv + bias + c_w*Dw * ones_channel + map, where the map (valid-tap sum over the
            padded border, as in the fake-quant) holds the LET correction and c*D * sum(w^)
    linear  the same with Gemm(transB=1) on a 2-D view of the tokens (weights (Cout, K), axis 0)
    attention  q*s_qk, k/s_qk (transposed before quantizing, so DQ feeds MatMul directly) ->
            Q/DQ -> MatMul -> + shift terms -> *scale -> Softmax -> P*s_vw -> Q/DQ -> MatMul
            with Q/DQ(v/s_vw) -> + shift terms

Split halves are separate Q/DQ + Conv/Gemm pairs summed; 6-bit codes travel as int8 with a
Clip to their 64 values before Q (a 6-bit grid around 0 needs no shift, so W6A6 layers have no
compensation terms at all). The float ops are onnx_lower's. Every shift, step and map comes
from int_algebra and the recipes; nothing here re-derives them.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch

from . import int_algebra as ia
from .graph import Graph
from .onnx_lower import INT64_MAX, OnnxBuilder, _heads, _merge_heads, let_transform, lower_ir, ones_map, weight_only
from .recipes import QAttentionRecipe, QLayerRecipe


def qdq(b: OnnxBuilder, x: str, op: ia.SymAct, hint: str) -> str:
    """x -> DQ(Q(x - c*D)) = m*D: the integer operand as TensorRT sees it (j*D = m*D + c*D)."""
    if op.shift:
        x = b.node("Sub", [x, b.scalar(np.float32(op.shift * float(op.step)), np.float32)], hint)
    if op.needs_clip:  # clipping to [lo*D, hi*D] before Q is the code clamp: round(lo*D/D) = lo
        x = b.node("Clip", [x, b.scalar(np.float32(op.lo * float(op.step)), np.float32),
                            b.scalar(np.float32(op.hi * float(op.step)), np.float32)], hint)
    scale, zero = b.scalar(op.step, np.float32), b.scalar(0, np.int8)
    return b.node("DequantizeLinear", [b.node("QuantizeLinear", [x, scale, zero], hint), scale, zero], hint)


def dq_weight(b: OnnxBuilder, values: np.ndarray, step: np.ndarray, hint: str) -> str:
    """int8 initializer -> per-output-channel DequantizeLinear on axis 0."""
    return b.node("DequantizeLinear", [b.init(hint + ".w", values), b.init(hint + ".w_step", step.astype(np.float32)),
                                       b.init(hint + ".w_zero", np.zeros(values.shape[0], np.int8))], hint, axis=0)


def with_ones_channel(sw: ia.SymWeight) -> tuple[np.ndarray, np.ndarray]:
    """Weights and steps with an extra all-ones output channel (step 1) when any channel has a
    shift: that channel's output is D * sum of m over the window, exactly what c_w*Dw multiplies."""
    if not sw.has_shift:
        return sw.values, sw.step
    ones = np.ones((1,) + sw.values.shape[1:], np.int8)
    return np.concatenate([sw.values, ones]), np.append(sw.step, np.float32(1.0))


def add_weight_shift(b: OnnxBuilder, y: str, sw: ia.SymWeight, axis_shape: tuple, hint: str) -> str:
    """y (Cout + 1 channels on `axis_shape`'s -1 axis) -> main channels + c_w*Dw * ones channel."""
    if not sw.has_shift:
        return y
    cout = sw.values.shape[0]
    ax = len(axis_shape) - 1 - axis_shape[::-1].index(-1)  # the channel axis of y
    main = b.node("Slice", [y, b.i64([0]), b.i64([cout]), b.i64([ax])], hint)
    ones = b.node("Slice", [y, b.i64([cout]), b.i64([cout + 1]), b.i64([ax])], hint)
    coef = (sw.shift * sw.step.astype(np.float64)).astype(np.float32).reshape(axis_shape)
    return b.node("Add", [main, b.node("Mul", [ones, b.init(hint + ".w_shift", coef)], hint)], hint)


def act_shift_taps(op: ia.SymAct, wq: torch.Tensor) -> np.ndarray | None:
    """Per-tap kernel of the activation shift: c*D * sum_c w^[o, c, tap] (None when c = 0)."""
    if op.shift == 0:
        return None
    return (float(op.shift) * float(op.step) * wq.double().sum(dim=1)).numpy()


# -- quantized layers -------------------------------------------------------------------------

def lower_qconv(b: OnnxBuilder, rec: QLayerRecipe, x: str) -> str:
    h = rec.name
    if rec.acts is None:
        return weight_only(b, rec, x, float_weights=True)
    xs = let_transform(b, rec, x, 4)
    aops = [ia.sym_act(g) for g in rec.acts]
    map_taps = None if rec.let_taps is None else rec.let_taps.astype(np.float64)
    y = None
    for gi, (g, op) in enumerate(zip(rec.weights, aops)):
        part = xs if len(rec.weights) == 1 else b.node("Slice", [xs, b.i64([g.k0]), b.i64([g.k1]), b.i64([1])], h)
        sw = ia.sym_weight(g.codes, g.grid)
        w, steps = with_ones_channel(sw)
        yg = b.node("Conv", [qdq(b, part, op, f"{h}.a{gi}"), dq_weight(b, w, steps, f"{h}.g{gi}")], h,
                    strides=list(rec.stride), pads=list(rec.padding) * 2, dilations=list(rec.dilation))
        yg = add_weight_shift(b, yg, sw, (1, -1, 1, 1), f"{h}.g{gi}")
        taps = act_shift_taps(op, g.dequant())
        if taps is not None:
            map_taps = taps if map_taps is None else map_taps + taps
        y = yg if y is None else b.node("Add", [y, yg], h)
    bias = None if rec.bias is None else rec.bias.astype(np.float64)
    if map_taps is not None and not any(rec.padding):  # no border: the map is a constant per channel
        const = map_taps.reshape(rec.out_channels, -1).sum(1)
        bias, map_taps = (const if bias is None else bias + const), None
    if bias is not None:
        y = b.node("Add", [y, b.init(h + ".bias", bias.astype(np.float32).reshape(1, -1, 1, 1))], h)
    if map_taps is not None:
        y = b.node("Add", [y, ones_map(b, x, map_taps, rec, h)], h)
    return y


def _tokens_2d(b: OnnxBuilder, x: str, k: int, hint: str) -> str:
    return b.node("Reshape", [x, b.i64([-1, k])], hint)


def lower_qlinear(b: OnnxBuilder, rec: QLayerRecipe, x: str, shape: tuple) -> str:
    h = rec.name
    if rec.acts is None:
        return weight_only(b, rec, x, float_weights=True)
    xs = let_transform(b, rec, x, len(shape))
    aops = [ia.sym_act(g) for g in rec.acts]
    bias = np.zeros(rec.out_channels) if rec.bias is None else rec.bias.astype(np.float64)
    if rec.let_taps is not None:
        bias = bias + rec.let_taps
    for g, op in zip(rec.weights, aops if len(aops) == len(rec.weights) else aops[:1] * len(rec.weights)):
        taps = act_shift_taps(op, g.dequant())  # a linear's "map" is one constant per output
        if taps is not None and not rec.act_split_on_tokens(len(shape)):
            bias = bias + taps
    weights = []
    for gi, g in enumerate(rec.weights):
        sw = ia.sym_weight(g.codes, g.grid)
        w, steps = with_ones_channel(sw)
        weights.append((sw, dq_weight(b, w, steps, f"{h}.g{gi}")))
    if rec.act_split_on_tokens(len(shape)):  # token halves split at N // 2 with their own grids
        n = b.node("Shape", [xs], h, start=1, end=2)
        half = b.node("Div", [n, b.i64([2])], h)
        row_parts = [(b.node("Slice", [xs, r0, r1, b.i64([1])], h), op)
                     for (r0, r1), op in zip([(b.i64([0]), half), (half, b.i64([INT64_MAX]))], aops)]
    else:
        row_parts = [(xs, None)]
    outs = []
    for ri, (rows, rop) in enumerate(row_parts):
        k_total = rec.in_channels
        flat = _tokens_2d(b, rows, k_total, h) if len(shape) == 3 else rows
        y = None
        for gi, (g, (sw, wdq)) in enumerate(zip(rec.weights, weights)):
            op = rop if rop is not None else aops[gi if len(aops) > 1 else 0]
            a = flat if len(rec.weights) == 1 else b.node("Slice", [flat, b.i64([g.k0]), b.i64([g.k1]), b.i64([1])], h)
            yg = b.node("Gemm", [qdq(b, a, op, f"{h}.r{ri}a{gi}"), wdq], h, transB=1)
            yg = add_weight_shift(b, yg, sw, (1, -1), f"{h}.r{ri}g{gi}")
            if rop is not None:  # token halves: each half's own activation shift constant
                taps = act_shift_taps(op, g.dequant())
                if taps is not None:
                    yg = b.node("Add", [yg, b.init(f"{h}.r{ri}g{gi}.a_shift", taps.astype(np.float32))], h)
            y = yg if y is None else b.node("Add", [y, yg], h)
        y = b.node("Add", [y, b.init(f"{h}.r{ri}.bias", bias.astype(np.float32))], h)
        if len(shape) == 3:  # back to (B, N_rows, Cout)
            lead = b.node("Shape", [rows], h, start=0, end=2)
            y = b.node("Reshape", [y, b.node("Concat", [lead, b.i64([rec.out_channels])], h, axis=0)], h)
        outs.append(y)
    return outs[0] if len(outs) == 1 else b.node("Concat", outs, h, axis=1)


# -- attention ----------------------------------------------------------------------------------

def shifted_matmul(b: OnnxBuilder, a: str, ca: float, bb: str, cb: float, k: int, hint: str) -> str:
    """(a^ @ b^) from the DQ outputs a = a^ - ca, bb = b^ - cb (ca, cb: shift*step constants):
    a@bb + cb*rowsum(a) + ca*colsum(bb) + k*ca*cb."""
    y = b.node("MatMul", [a, bb], hint)
    if cb:
        rs = b.node("ReduceSum", [a, b.i64([-1])], hint, keepdims=1)
        y = b.node("Add", [y, b.node("Mul", [rs, b.scalar(np.float32(cb), np.float32)], hint)], hint)
    if ca:
        cs = b.node("ReduceSum", [bb, b.i64([-2])], hint, keepdims=1)
        y = b.node("Add", [y, b.node("Mul", [cs, b.scalar(np.float32(ca), np.float32)], hint)], hint)
    if ca and cb:
        y = b.node("Add", [y, b.scalar(np.float32(k * ca * cb), np.float32)], hint)
    return y


def const_codes(values: torch.Tensor, op: ia.SymAct) -> np.ndarray:
    """int8 m of a constant activation (folded cross-attention K/V), rounded as the fake-quant rounds."""
    v = values.double() / float(op.step)
    r = torch.sign(v) * torch.floor(v.abs() + 0.5) - op.shift
    return torch.clamp(r, op.lo, op.hi).numpy().astype(np.int8)


def const_dq(b: OnnxBuilder, codes: np.ndarray, op: ia.SymAct, hint: str) -> str:
    scale, zero = b.scalar(op.step, np.float32), b.scalar(0, np.int8)
    return b.node("DequantizeLinear", [b.init(hint, codes), scale, zero], hint)


def lower_qattention(b: OnnxBuilder, rec: QAttentionRecipe, q: str, k: str, v: str, consts: dict) -> str:
    h, heads, d = rec.name, rec.heads, rec.head_dim
    s_qk, s_vw = rec.s_qk.astype(np.float32), rec.s_vw.astype(np.float32)
    qop, kop, pop, vop = (ia.sym_act(g) for g in (rec.q, rec.k, rec.p, rec.v))
    qa = qdq(b, b.node("Mul", [_heads(b, q, heads, d, h), b.init(h + ".s_qk", s_qk)], h), qop, h + ".q")
    if k in consts:  # folded cross-attention: K's codes are constants, stored transposed
        kt = torch.from_numpy(consts[k]).reshape(consts[k].shape[0], -1, heads, d).transpose(1, 2)
        kb = const_dq(b, const_codes(kt / torch.from_numpy(s_qk), kop).transpose(0, 1, 3, 2), kop, h + ".k_codes")
    else:  # transpose before quantizing: per-tensor Q/DQ commutes with it, and DQ then feeds MatMul
        kk = b.node("Div", [_heads(b, k, heads, d, h), b.init(h + ".s_qk_k", s_qk)], h)
        kb = qdq(b, b.node("Transpose", [kk], h, perm=[0, 1, 3, 2]), kop, h + ".k")
    sq, sk = qop.shift * float(qop.step), kop.shift * float(kop.step)
    scores = b.node("Mul", [shifted_matmul(b, qa, sq, kb, sk, d, h + ".qk"), b.scalar(rec.scale, np.float32)], h)
    p = b.node("Softmax", [scores], h, axis=-1)
    pa = qdq(b, b.node("Mul", [p, b.init(h + ".s_vw", s_vw)], h), pop, h + ".p")
    if v in consts:
        vt = torch.from_numpy(consts[v]).reshape(consts[v].shape[0], -1, heads, d).transpose(1, 2)
        vb = const_dq(b, const_codes(vt / torch.from_numpy(s_vw)[:, None], vop), vop, h + ".v_codes")
    else:
        vv = b.node("Div", [_heads(b, v, heads, d, h), b.init(h + ".s_vw_v", s_vw[:, None])], h)
        vb = qdq(b, vv, vop, h + ".v")
    sp, sv = pop.shift * float(pop.step), vop.shift * float(vop.step)
    return _merge_heads(b, shifted_matmul(b, pa, sp, vb, sv, s_vw.size, h + ".pv"), heads, d, h)


# -- whole graphs ----------------------------------------------------------------------------------

def lower_graph_qdq(g: Graph, input_shapes: dict[str, tuple] | None = None,
                    probes: list[str] | None = None) -> onnx.ModelProto:
    """The explicit-quantization ONNX of IR graph `g` (see onnx_lower.lower_ir). `input_shapes`:
    the fixed shape of each input (the artifact's tile); default: the IR's traced shapes."""

    def quantized(b: OnnxBuilder, n, rec, ins: list[str], g: Graph) -> str:
        if n.op == "qconv":
            return lower_qconv(b, rec, ins[0])
        if n.op == "qlinear":
            return lower_qlinear(b, rec, ins[0], g.shapes[n.inputs[0]])
        return lower_qattention(b, rec, *ins, consts=g.consts)

    return lower_ir(g, quantized, probes, input_shapes)
