"""Lower a deploy-IR graph to ONNX for ONNX Runtime's CPU provider.

Float ops become the standard ONNX ops. Quantized ops become integer subgraphs built only
from what ONNX Runtime runs with its integer GEMM (MLAS QGEMM) kernels, per spec section 6:

    conv    [LET: Sub o, Div s] -> QuantizeLinear (u8; per-channel scales for split halves)
            -> Transpose to NHWC (u8) -> Pad with the operand zero point -> k*k Slices ->
            Concat (im2col) -> MatMulIntegerToFloat (per-column weight scale, zero point and
            bias fused into the GEMM epilogue) -> Transpose to NCHW [-> + exact border map]
    linear  [LET] -> QuantizeLinear -> MatMulIntegerToFloat (one per K-group and token half)
    attention  q*s_qk, k/s_qk -> QuantizeLinear -> MatMulIntegerToFloat -> Softmax ->
            P*s_vw -> QuantizeLinear -> MatMulIntegerToFloat with v/s_vw

QConv/ConvInteger are avoided (ConvInteger is slower than fp32 here and rejects per-channel
weight zero points; QLinearConv requantizes its output, which is not the fake-quant function).
Every zero point, shift and residual comes from `int_algebra`; nothing here re-derives them.

`isa` selects the weight operand type: "portable" is exact on every x86 CPU (uint8 weights
where int8 could saturate without VNNI), "vnni" uses int8 weights everywhere (fastest, exact
only on CPUs with VNNI; the artifact records it and the loader checks the CPU).
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from . import int_algebra as ia
from .graph import Graph, Node
from .recipes import QAttentionRecipe, QLayerRecipe

OPSET = 21
MS_DOMAIN = "com.microsoft"
NP_OF = {"u8": np.uint8, "s8": np.int8}
ONNX_OF = {"u8": TensorProto.UINT8, "s8": TensorProto.INT8}
DTYPE_RANGE_OF = ia.DTYPE_RANGE
INT64_MAX = np.iinfo(np.int64).max


class OnnxBuilder:
    def __init__(self, prefix: str = ""):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        base = hint.replace("/", ".")
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def init(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def scalar(self, value, dtype) -> str:
        """Shared small constants (scalars, axes lists) by value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init("k", arr)
        return self._consts[key]

    def node(self, op: str, inputs: list[str], hint: str, n_out: int = 1, domain: str = "", **attrs) -> str | list[str]:
        outs = [self.fresh(f"{hint}.{op}" if n_out == 1 else f"{hint}.{op}.{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh("n." + hint + "." + op), domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def i64(self, values) -> str:
        return self.scalar(np.asarray(values, np.int64).reshape(-1), np.int64)


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
        if (op.lo, op.hi) != DTYPE_RANGE_OF[op.dtype]:
            q = b.node("Clip", [q, b.scalar(op.lo, NP_OF[op.dtype]), b.scalar(op.hi, NP_OF[op.dtype])], hint)
        return q
    q = b.node("QuantizeLinear", [x, b.scalar(op.step, np.float32), b.scalar(op.ql_zero, NP_OF[op.dtype])], hint)
    if op.needs_clip:
        q = b.node("Clip", [q, b.scalar(op.lo, NP_OF[op.dtype]), b.scalar(op.hi, NP_OF[op.dtype])], hint)
    return q


def let_transform(b: OnnxBuilder, rec: QLayerRecipe, x: str, ndim: int) -> str:
    """x' = (x - o) / s, the same float expression as the fake-quant layer."""
    if rec.let_scale is None:
        return x
    shape = (-1,) + (1,) * (ndim - 2) if rec.kind == "conv" else (-1,)
    if rec.let_offset_nonzero():
        x = b.node("Sub", [x, b.init(rec.name + ".let_offset", rec.let_input_offset.reshape(shape))], rec.name)
    return b.node("Div", [x, b.init(rec.name + ".let_scale", rec.let_scale.reshape(shape))], rec.name)


def weight_matrix(op: ia.WeightOperand, codes_ndim: int) -> np.ndarray:
    """(Cout, Cin_g, *k) operand values -> (K, Cout) with K ordered (tap, channel) like im2col."""
    v = op.values
    if codes_ndim == 4:
        v = v.transpose(2, 3, 1, 0)  # kh, kw, c, o
    else:
        v = v.T
    return v.reshape(-1, v.shape[-1])


def int_gemm(b: OnnxBuilder, a: str, aop: ia.ActOperand, wop: ia.WeightOperand, wmat: np.ndarray,
             bias: np.ndarray | None, hint: str, wkey: str | None = None) -> str:
    """Da * Dw_o * sum_k (a - za)(b - zb) + bias, plus the one-signed-channel residual
    B'_o * Da * Dw_o * sum_k (a - za) taken from an extra all-ones GEMM column.
    GEMMs with the same `wkey` (token halves of one K-group) share one weight initializer."""
    cout = wmat.shape[1]
    steps = wop.step.astype(np.float32)
    zeros = wop.zero
    bias = np.zeros(cout, np.float32) if bias is None else bias.astype(np.float32)
    if wop.has_residual:
        wmat = np.concatenate([wmat, np.ones((wmat.shape[0], 1), wmat.dtype)], axis=1)
        steps = np.append(steps, np.float32(1.0))
        zeros = np.append(zeros, np.zeros(1, zeros.dtype))
        bias = np.append(bias, np.float32(0.0))
    key = ("gemm", wkey or hint)
    if key not in b._consts:
        b._consts[key] = (b.init(hint + ".w", wmat), b.init(hint + ".w_step", steps), b.init(hint + ".w_zero", zeros))
    w, w_step, w_zero = b._consts[key]
    y = b.node("MatMulIntegerToFloat", [a, w, b.scalar(aop.step, np.float32), w_step, b.scalar(aop.kernel_zero, np.uint8),
                                         w_zero, b.init(hint + ".bias", bias)], hint, domain=MS_DOMAIN)
    if not wop.has_residual:
        return y
    main = b.node("Slice", [y, b.i64([0]), b.i64([cout]), b.i64([-1])], hint)
    rows = b.node("Slice", [y, b.i64([cout]), b.i64([cout + 1]), b.i64([-1])], hint)
    coef = (wop.residual * wop.step.astype(np.float64)).astype(np.float32)
    return b.node("Add", [main, b.node("Mul", [rows, b.init(hint + ".residual", coef)], hint)], hint)


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


def ones_map(b: OnnxBuilder, x: str, taps: np.ndarray, rec: QLayerRecipe, hint: str) -> str:
    """conv(all-ones image shaped like x's spatial dims, taps): the exact border-aware map
    (ONNX Runtime folds it to a constant when the input shape is static)."""
    shape = b.node("Shape", [x], hint, start=2)
    full = b.node("Concat", [b.i64([1, 1]), shape], hint, axis=0)
    ones = b.node("ConstantOfShape", [full], hint, value=numpy_helper.from_array(np.ones(1, np.float32)))
    return b.node("Conv", [ones, b.init(hint + ".map_taps", taps[:, None].astype(np.float32))], hint,
                  strides=list(rec.stride), pads=list(rec.padding) * 2, dilations=list(rec.dilation))


# -- quantized layers -------------------------------------------------------------------------

def lower_qconv(b: OnnxBuilder, rec: QLayerRecipe, x: str, isa: str) -> str:
    h = rec.name
    if rec.acts is None:
        return weight_only(b, rec, x)
    xs = let_transform(b, rec, x, 4)
    aops = [ia.act_operand(g, "u8") for g in rec.acts]
    groups = rec.weights
    # one per-tensor QuantizeLinear per channel half (contiguous NCHW slices): a per-channel
    # QuantizeLinear would be exact too, but ONNX Runtime's transpose optimizer moves it behind
    # the NHWC transpose, where per-axis quantization along the last axis is ~50x slower
    parts = []
    for g, op in zip(groups, aops):
        part = xs if len(groups) == 1 else b.node("Slice", [xs, b.i64([g.k0]), b.i64([g.k1]), b.i64([1])], h)
        parts.append(b.node("Transpose", [quantize(b, part, op, h + ".a")], h, perm=[0, 2, 3, 1]))
    # per-tap constants summed over the valid taps: the LET correction and the residual of
    # activation grids outside the operand type (int_algebra.act_residual_taps)
    map_taps = None if rec.let_taps is None else rec.let_taps.astype(np.float64)
    for g, op in zip(groups, aops):
        taps = ia.act_residual_taps(op, g.dequant().double())
        if taps is not None:
            map_taps = taps.numpy() if map_taps is None else map_taps + taps.numpy()
    spatial_map = map_taps is not None and any(rec.padding)
    bias = None if rec.bias is None else rec.bias.astype(np.float64)
    if map_taps is not None and not spatial_map:  # no padding: the map is a constant per channel
        const = map_taps.reshape(rec.out_channels, -1).sum(1)
        bias = const if bias is None else bias + const
    y = None
    for gi, (g, op, a) in enumerate(zip(groups, aops, parts)):
        wop = ia.weight_operand(g.codes, g.grid, ia.choose_weight_dtype(op, g.grid.bits, isa, ones_column=True))
        cols = im2col_nhwc(b, a, rec, op.kernel_zero, "u8", h)
        gb = None if (gi or bias is None) else bias.astype(np.float32)
        yg = int_gemm(b, cols, op, wop, weight_matrix(wop, 4), gb, f"{h}.g{gi}")
        y = yg if y is None else b.node("Add", [y, yg], h)
    y = b.node("Transpose", [y], h, perm=[0, 3, 1, 2])
    if spatial_map:
        y = b.node("Add", [y, ones_map(b, x, map_taps, rec, h)], h)
    return y


def _conv_bias(rec: QLayerRecipe) -> np.ndarray | None:
    """Fake-quantized bias, plus the LET correction when no padding makes it spatial."""
    bias = None if rec.bias is None else rec.bias.astype(np.float64)
    if rec.let_taps is not None and not any(rec.padding):
        const = rec.let_taps.reshape(rec.out_channels, -1).sum(1)
        bias = const if bias is None else bias + const
    return None if bias is None else bias.astype(np.float32)


def lower_qlinear(b: OnnxBuilder, rec: QLayerRecipe, x: str, shape: tuple, isa: str) -> str:
    h = rec.name
    if rec.acts is None:
        return weight_only(b, rec, x)
    xs = let_transform(b, rec, x, len(shape))
    bias = None if rec.bias is None else rec.bias.astype(np.float64)
    if rec.let_taps is not None:
        bias = rec.let_taps.astype(np.float64) if bias is None else bias + rec.let_taps
    bias = None if bias is None else bias.astype(np.float32)
    aops = [ia.act_operand(g, "u8") for g in rec.acts]
    groups = rec.weights
    if rec.act_split_on_tokens(len(shape)):
        # token halves split at N // 2 of the actual input (VAE attention sees any image size)
        n = b.node("Shape", [xs], h, start=1, end=2)
        half = b.node("Div", [n, b.i64([2])], h)
        bounds = [(b.i64([0]), half), (half, b.i64([INT64_MAX]))]
        rows = [quantize(b, b.node("Slice", [xs, r0, r1, b.i64([1])], h), op, h + ".a") for (r0, r1), op in zip(bounds, aops)]
        row_ops = aops
    elif len(aops) == 2:  # 2-D input: activation halves are channel halves = the K-groups
        rows, row_ops = [None], [None]
    else:
        rows, row_ops = [quantize(b, xs, aops[0], h + ".a")], [aops[0]]
    outs = []
    for ri, (q, rop) in enumerate(zip(rows, row_ops)):
        y = None
        for gi, g in enumerate(groups):
            op = rop if rop is not None else aops[gi]
            if q is None:
                a = quantize(b, b.node("Slice", [xs, b.i64([g.k0]), b.i64([g.k1]), b.i64([-1])], h), op, h + ".a")
            elif len(groups) == 2:
                a = b.node("Slice", [q, b.i64([g.k0]), b.i64([g.k1]), b.i64([-1])], h)
            else:
                a = q
            wop = ia.weight_operand(g.codes, g.grid, ia.choose_weight_dtype(op, g.grid.bits, isa, ones_column=True))
            yg = int_gemm(b, a, op, wop, weight_matrix(wop, 2), bias if gi == 0 else None, f"{h}.r{ri}g{gi}",
                          wkey=f"{h}.g{gi}.{wop.dtype}")
            if op.residual:  # activation grid outside the operand type: a constant per output
                res = ia.act_residual_taps(op, g.dequant().double()).numpy().astype(np.float32)
                yg = b.node("Add", [yg, b.init(h + ".act_residual", res)], h)
            y = yg if y is None else b.node("Add", [y, yg], h)
        outs.append(y)
    return outs[0] if len(outs) == 1 else b.node("Concat", outs, h, axis=1)


def weight_only(b: OnnxBuilder, rec: QLayerRecipe, x: str, float_weights: bool = False) -> str:
    """Weight-only quantization: float activations times dequantized weights (the int codes are
    what the artifact stores; ONNX Runtime folds the DequantizeLinear at load). `float_weights`
    stores the grid values instead (TensorRT fuses a DQ weight only beside a DQ activation)."""
    h = rec.name
    ndim = 4 if rec.kind == "conv" else 2
    ws = []
    for gi, g in enumerate(rec.weights):
        wop = ia.weight_operand(g.codes, g.grid, "u8")
        if wop.has_residual or float_weights:
            ws.append(b.init(f"{h}.w{gi}", g.dequant().numpy()))
        else:
            ws.append(b.node("DequantizeLinear", [b.init(f"{h}.w{gi}", wop.values), b.init(f"{h}.w{gi}.step", wop.step),
                                                  b.init(f"{h}.w{gi}.zero", wop.zero)], h, axis=0))
    w = ws[0] if len(ws) == 1 else b.node("Concat", ws, h, axis=1)
    xs = let_transform(b, rec, x, ndim if rec.kind == "conv" else 3)
    if rec.kind == "conv":
        bias = _conv_bias(rec)
        ins = [xs, w] + ([b.init(h + ".bias", bias)] if bias is not None else [])
        y = b.node("Conv", ins, h, strides=list(rec.stride), pads=list(rec.padding) * 2, dilations=list(rec.dilation))
        if rec.let_taps is not None and any(rec.padding):
            y = b.node("Add", [y, ones_map(b, x, rec.let_taps, rec, h)], h)
        return y
    y = b.node("MatMul", [xs, b.node("Transpose", [w], h, perm=[1, 0])], h)
    bias = None if rec.bias is None else rec.bias.astype(np.float64)
    if rec.let_taps is not None:
        bias = rec.let_taps.astype(np.float64) if bias is None else bias + rec.let_taps
    return y if bias is None else b.node("Add", [y, b.init(h + ".bias", bias.astype(np.float32))], h)


def _heads(b: OnnxBuilder, x: str, heads: int, d: int, hint: str) -> str:
    """(B, N, h*d) -> (B, h, N, d)"""
    r = b.node("Reshape", [x, b.i64([0, 0, heads, d])], hint)
    return b.node("Transpose", [r], hint, perm=[0, 2, 1, 3])


def _merge_heads(b: OnnxBuilder, x: str, heads: int, d: int, hint: str) -> str:
    t = b.node("Transpose", [x], hint, perm=[0, 2, 1, 3])
    return b.node("Reshape", [t, b.i64([0, 0, heads * d])], hint)


def _act_matmul(b: OnnxBuilder, a: str, aop: ia.ActOperand, bb: str, bop: ia.ActOperand, b_scale: float,
                k: int, hint: str) -> str:
    """Da*Db*scale * sum_k ja jb for two activation operands, with the residual terms of
    int_algebra when a grid lies outside its operand type (never for ranges containing 0)."""
    y = b.node("MatMulIntegerToFloat", [a, bb, b.scalar(aop.step, np.float32), b.scalar(np.float32(bop.step * b_scale), np.float32),
                                         b.scalar(aop.kernel_zero, NP_OF[aop.dtype]), b.scalar(bop.kernel_zero, NP_OF[bop.dtype])],
               hint, domain=MS_DOMAIN)
    if not (aop.residual or bop.residual):
        return y
    unit = float(aop.step) * float(bop.step) * b_scale
    if bop.residual:
        am = b.node("Sub", [b.node("Cast", [a], hint, to=TensorProto.FLOAT), b.scalar(float(aop.kernel_zero), np.float32)], hint)
        rs = b.node("ReduceSum", [am, b.i64([-1])], hint, keepdims=1)
        y = b.node("Add", [y, b.node("Mul", [rs, b.scalar(unit * bop.residual, np.float32)], hint)], hint)
    if aop.residual:
        bm = b.node("Sub", [b.node("Cast", [bb], hint, to=TensorProto.FLOAT), b.scalar(float(bop.kernel_zero), np.float32)], hint)
        cs = b.node("ReduceSum", [bm, b.i64([-2])], hint, keepdims=1)
        y = b.node("Add", [y, b.node("Mul", [cs, b.scalar(unit * aop.residual, np.float32)], hint)], hint)
    if aop.residual and bop.residual:
        y = b.node("Add", [y, b.scalar(unit * aop.residual * bop.residual * k, np.float32)], hint)
    return y


def const_operand(values: torch.Tensor, op: ia.ActOperand) -> np.ndarray:
    """Operand codes of a constant activation (folded cross-attention K/V), as the fake-quant rounds."""
    return ia.act_operand_values(values, op).numpy().astype(NP_OF[op.dtype])


def lower_qattention(b: OnnxBuilder, rec: QAttentionRecipe, q: str, k: str, v: str, consts: dict, isa: str) -> str:
    h, heads, d = rec.name, rec.heads, rec.head_dim
    s_qk = rec.s_qk.astype(np.float32)
    s_vw = rec.s_vw.astype(np.float32)
    qop = ia.act_operand(rec.q, "u8")
    kop = ia.act_operand(rec.k, ia.choose_act_b_dtype(qop, rec.k, isa))
    pop = ia.act_operand(rec.p, "u8")
    vop = ia.act_operand(rec.v, ia.choose_act_b_dtype(pop, rec.v, isa))
    qa = quantize(b, b.node("Mul", [_heads(b, q, heads, d, h), b.init(h + ".s_qk", s_qk)], h), qop, h + ".q")
    if k in consts:  # folded cross-attention: K and V codes are constants
        kt = torch.from_numpy(consts[k]).reshape(consts[k].shape[0], -1, heads, d).transpose(1, 2)
        kb = b.init(h + ".k_codes", const_operand(kt / torch.from_numpy(s_qk), kop).transpose(0, 1, 3, 2))
    else:
        kk = b.node("Div", [_heads(b, k, heads, d, h), b.init(h + ".s_qk_k", s_qk)], h)
        kb = b.node("Transpose", [quantize(b, kk, kop, h + ".k")], h, perm=[0, 1, 3, 2])
    scores = _act_matmul(b, qa, qop, kb, kop, rec.scale, d, h + ".qk")
    p = b.node("Softmax", [scores], h, axis=-1)
    pa = quantize(b, b.node("Mul", [p, b.init(h + ".s_vw", s_vw)], h), pop, h + ".p")
    if v in consts:
        vt = torch.from_numpy(consts[v]).reshape(consts[v].shape[0], -1, heads, d).transpose(1, 2)
        vb = b.init(h + ".v_codes", const_operand(vt / torch.from_numpy(s_vw)[:, None], vop))
    else:
        vv = b.node("Div", [_heads(b, v, heads, d, h), b.init(h + ".s_vw_v", s_vw[:, None])], h)
        vb = quantize(b, vv, vop, h + ".v")
    out = _act_matmul(b, pa, pop, vb, vop, 1.0, s_vw.size, h + ".pv")
    return _merge_heads(b, out, heads, d, h)


# -- float ops ------------------------------------------------------------------------------------

def lower_fp(b: OnnxBuilder, n: Node, val, g: Graph) -> str:
    """One float IR op; `val(name)` gives the ONNX name of an IR value (registering constants
    on first use, so constants that are re-laid-out here are not stored twice)."""
    op, a, hint = n.op, n.attrs, n.name or n.outputs[0]
    if op == "linear":
        wt = b.init(hint + ".wT", np.ascontiguousarray(g.consts[n.inputs[1]].T))
        y = b.node("MatMul", [val(n.inputs[0]), wt], hint)
        return b.node("Add", [y, val(n.inputs[2])], hint) if len(n.inputs) > 2 else y
    if op == "group_norm":
        groups, x = a["groups"], val(n.inputs[0])
        r = b.node("Reshape", [x, b.i64([0, groups, -1])], hint)
        r = b.node("InstanceNormalization", [r, b.scalar(np.ones(groups), np.float32), b.scalar(np.zeros(groups), np.float32)],
                   hint, epsilon=a["eps"])
        r = b.node("Reshape", [r, b.node("Shape", [x], hint)], hint)
        c = g.consts[n.inputs[1]].size
        gamma = b.init(hint + ".gamma", g.consts[n.inputs[1]].reshape(c, 1, 1))
        beta = b.init(hint + ".beta", g.consts[n.inputs[2]].reshape(c, 1, 1))
        return b.node("Add", [b.node("Mul", [r, gamma], hint), beta], hint)
    ins = [val(i) for i in n.inputs]
    if op == "conv":
        p = a["padding"]
        return b.node("Conv", ins, hint, strides=a["stride"], pads=list(p) * 2, dilations=a["dilation"])
    if op == "layer_norm":
        return b.node("LayerNormalization", ins, hint, axis=-1, epsilon=a["eps"])
    if op == "silu":
        return b.node("Mul", [ins[0], b.node("Sigmoid", ins, hint)], hint)
    if op == "geglu":
        hid, gate = b.node("Split", [ins[0]], hint, n_out=2, axis=-1, num_outputs=2)
        return b.node("Mul", [hid, b.node("Gelu", [gate], hint)], hint)
    if op in ("add", "mul", "div"):
        return b.node(op.capitalize(), ins, hint)
    if op == "affine":
        y = ins[0]
        if a["mul"] != 1.0:
            y = b.node("Mul", [y, b.scalar(a["mul"], np.float32)], hint)
        if a["add"] != 0.0:
            y = b.node("Add", [y, b.scalar(a["add"], np.float32)], hint)
        return y
    if op == "concat":
        return b.node("Concat", ins, hint, axis=a["axis"])
    if op == "pad":
        hb, wb, he, we = a["pads"]
        return b.node("Pad", [ins[0], b.i64([0, 0, hb, wb, 0, 0, he, we])], hint)
    if op == "upsample2x":
        return b.node("Resize", [ins[0], "", b.scalar([1.0, 1.0, 2.0, 2.0], np.float32)], hint, mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if op == "to_tokens":
        r = b.node("Reshape", [ins[0], b.i64([0, 0, -1])], hint)
        return b.node("Transpose", [r], hint, perm=[0, 2, 1])
    if op == "to_nchw":
        t = b.node("Transpose", [ins[0]], hint, perm=[0, 2, 1])
        return b.node("Reshape", [t, b.node("Shape", [ins[1]], hint)], hint)
    if op == "slice_channels":
        return b.node("Slice", [ins[0], b.i64([a["start"]]), b.i64([a["stop"]]), b.i64([1])], hint)
    if op == "unsqueeze_hw":
        return b.node("Unsqueeze", [ins[0], b.i64([2, 3])], hint)
    if op == "timestep_embedding":
        t = b.node("Unsqueeze", [ins[0], b.i64([1])], hint)
        e = b.node("Mul", [t, b.node("Unsqueeze", [ins[1], b.i64([0])], hint)], hint)
        sin, cos = b.node("Sin", [e], hint), b.node("Cos", [e], hint)
        return b.node("Concat", [cos, sin] if a["flip_sin_to_cos"] else [sin, cos], hint, axis=-1)
    if op == "attention":
        heads = a["heads"]
        d = g.shapes[n.inputs[0]][-1] // heads
        qh, kh, vh = (_heads(b, x, heads, d, hint) for x in ins)
        s = b.node("MatMul", [qh, b.node("Transpose", [kh], hint, perm=[0, 1, 3, 2])], hint)
        p = b.node("Softmax", [b.node("Mul", [s, b.scalar(a["scale"], np.float32)], hint)], hint, axis=-1)
        return _merge_heads(b, b.node("MatMul", [p, vh], hint), heads, d, hint)
    raise ValueError(f"no ONNX lowering for IR op {op!r}")


# -- whole graphs ----------------------------------------------------------------------------------

def _value_info(name: str, shape: tuple, dim_names: tuple[str, ...]) -> onnx.ValueInfoProto:
    dims = [d if d is not None else dim_names[i] for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


PROBE_PREFIX = "probe:"


QUANTIZED_OPS = ("qconv", "qlinear", "qattention")


def lower_ir(g: Graph, lower_quantized, probes: list[str] | None = None, input_shapes: dict[str, tuple] | None = None,
             opsets: tuple[tuple[str, int], ...] = (("", OPSET),)) -> onnx.ModelProto:
    """The walk every ONNX lowering shares: float ops by `lower_fp`, the quantized ones by
    `lower_quantized(b, node, recipe, inputs, g)`. `probes`: IR values to expose as extra outputs
    named "probe:<value>" (verification reads layer outputs); `input_shapes` overrides the
    traced input shapes (a None dim stays dynamic)."""
    b = OnnxBuilder()
    env: dict[str, str] = {}
    for name in g.inputs:
        b._names.add(name)
        env[name] = name

    def val(name: str) -> str:
        if name not in env:
            if name not in g.consts:
                raise ValueError(f"IR value {name!r} is used before it is defined")
            env[name] = b.init(name, g.consts[name])
        return env[name]

    for n in g.nodes:
        if n.op in QUANTIZED_OPS:
            # folded K/V constants stay IR constants: the lowering turns them into integer codes,
            # never float initializers
            ins = [i if (n.op == "qattention" and k and i in g.consts) else val(i) for k, i in enumerate(n.inputs)]
            out = lower_quantized(b, n, g.recipes[n.attrs["recipe"]], ins, g)
        elif n.op == "identity":
            out = n.outputs[0]  # graph outputs keep their IR names
            b._names.add(out)
            b.nodes.append(helper.make_node("Identity", [val(n.inputs[0])], [out], name=b.fresh("n.output." + out)))
        else:
            out = lower_fp(b, n, val, g)
        env[n.outputs[0]] = out
    dyn = ("batch", "channels", "height", "width")
    shapes = {**g.inputs, **(input_shapes or {})}
    inputs = [_value_info(k, shapes[k], dyn) for k in g.inputs]
    outputs = [_value_info(k, s, dyn) for k, s in g.outputs.items()]
    for name in probes or []:
        pname = PROBE_PREFIX + name
        b.nodes.append(helper.make_node("Identity", [env[name]], [pname], name=b.fresh("n." + pname)))
        outputs.append(onnx.ValueInfoProto(name=pname))
    graph = helper.make_graph(b.nodes, g.name, inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                              producer_name="passion-deploy")
    model.ir_version = 10
    return model


def lower_graph(g: Graph, isa: str = "portable", probes: list[str] | None = None) -> onnx.ModelProto:
    """The ONNX model of IR graph `g` for ONNX Runtime's CPU int8 kernels (see lower_ir)."""
    if isa not in ia.ISAS:
        raise ValueError(f"unknown ISA {isa!r}; choose one of {', '.join(ia.ISAS)}")

    def quantized(b: OnnxBuilder, n: Node, rec, ins: list[str], g: Graph) -> str:
        if n.op == "qconv":
            return lower_qconv(b, rec, ins[0], isa)
        if n.op == "qlinear":
            return lower_qlinear(b, rec, ins[0], g.shapes[n.inputs[0]], isa)
        return lower_qattention(b, rec, *ins, consts=g.consts, isa=isa)

    return lower_ir(g, quantized, probes, opsets=(("", OPSET), (MS_DOMAIN, 1)))
