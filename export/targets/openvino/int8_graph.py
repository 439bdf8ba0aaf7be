"""The int8 mode's graph: the deploy IR as ONNX Q/DQ built for OpenVINO's CPU plugin, not for
TensorRT's rules.

The Q/DQ graph of the trt target (export/qdq) takes only int8 with zero point 0, so PassionSR's
asymmetric grids reach it through shifts: a Sub before each quantizer, a compensation map per
shifted activation, an all-ones output channel per weight shift that a `VariadicSplit` cuts off
again (a reference kernel, `ref_f32`, in OpenVINO's CPU plugin), one Q/DQ GEMM per K-group and
token half. OpenVINO's low-precision transformations (LPT) and oneDNN take more than that, which
is what this graph uses (measured on OpenVINO 2026.4.1, AVX-512 VNNI, tests/targets/
test_openvino_int8.py holds the graph to it):

- activations as u8 with PassionSR's own zero point: QuantizeLinear(x, D, z = -zp) is its grid
  (ia.act_operand(grid, "u8"): operand = q, no residual for unsigned asymmetric grids). oneDNN
  adds the zero point in the kernel, padding included (a padded tap holds the zero point, i.e.
  grid value 0, as the fake-quant pads). No Sub, no compensation map;
- weights as int8 with zero point 0 (an int8 weight zero point makes the plugin decompress the
  weights and run the conv in f32: measured), jw = m + c per output channel (ia.sym_weight, the
  plan's weight residual). The c term, c * Dw * sum over the window of the input's grid values,
  is rank one: one ReduceSum of the dequantized input over channels, shared by every output
  channel (for a conv, one 1-channel box-sum Conv over the window), times the plan's per-channel
  coefficient. No extra output channel, no Split;
- token halves (a split (B, N, C) linear): the halves as a batch axis, (B, 2, N/2, C), each
  quantized on its own grid (a per-axis QuantizeLinear): the plugin's FullyConnected dequantizes
  per half (one int8 GEMM per K-group over all tokens, and no dense per-token constants);
- channel halves (split convs / 2-D linears): one int8 GEMM per K-group, their grids differ;
- attention cores as int8 MatMuls the plugin fuses into one int8 MHA kernel (lower_qattention):
  zero-point-free operands, the score terms softmax ignores dropped, V with a column of ones.
- channel Splits (K-groups) and Concats (skips) of NCHW tensors that the plugin runs as reference
  kernels (it lays them out channels-last next to the int8 convs; found by compiling): at a static
  shape, where narrow (ONE_HOT_MAX_CHANNELS), as one-hot 1x1 Convs (channel_copies_as_convs),
  exact; wide ones stay reference copies, which cost less than their convs (measured on sd21).

Bit-exactness is not promised where the plugin's float arithmetic moves a value that sits at a
rounding boundary (its FakeQuantize multiplies by a reciprocal and may fold the LET transform into
its ranges): such codes are counted per layer by `boundary_codes` and reported.
"""
from __future__ import annotations


from dataclasses import dataclass, replace

import numpy as np
import onnx
import torch

from passion_deploy.quant.attention import reciprocal

from ...ir import int_algebra as ia
from ...ir.graph import Graph
from ...ir.plan import Encoding, GroupPlan, LayerPlan, layer_plan
from ...ir.recipes import QAttentionRecipe, QLayerRecipe, WeightGroup
from ...onnx_graph import (OnnxBuilder, add_constants, add_offset_products, group_input, heads_of, let_transform, lower_ir,
                           merge_heads, quantized_lowering, row_inputs, shared, weight_only)


def _sym_weight_operand(wg: WeightGroup, _act) -> ia.WeightOperand:
    """int8 weights with zero point 0 (ia.sym_weight): jw = (m - 0) + shift; the shift is the
    plan's weight residual, whose coefficient (GroupPlan.ones_coef) multiplies the input sum."""
    sw = ia.sym_weight(wg.codes, wg.grid)
    return ia.WeightOperand("s8", sw.values, np.zeros(sw.shift.shape, np.int8), sw.shift, sw.step)


ENCODING = Encoding(lambda grid: ia.act_operand(grid, "u8"), _sym_weight_operand, ia.act_residual_taps)


# -- activations -----------------------------------------------------------------------------------

def quantize(b: OnnxBuilder, x: str, op: ia.ActOperand, hint: str) -> str:
    """x -> DQ(Q(x)) on the u8 operand: (operand - z) * D = j * D, the grid value itself. A grid
    narrower than 8 bits is clipped to its codes first (Clip to [(lo - z)D, (hi - z)D] rounds to
    lo and hi); LPT keeps the Clip as a float op in front of the u8 FakeQuantize."""
    if op.residual or op.wide:
        raise ValueError(f"{hint}: activation grid has no u8 form with a zero point (residual {op.residual})")
    step, zero = b.scalar(op.step, np.float32), b.scalar(op.kernel_zero, np.uint8)
    if op.needs_clip:
        x = b.node("Clip", [x, b.scalar(np.float32((op.lo - op.kernel_zero) * float(op.step)), np.float32),
                            b.scalar(np.float32((op.hi - op.kernel_zero) * float(op.step)), np.float32)], hint)
    return b.node("DequantizeLinear", [b.node("QuantizeLinear", [x, step, zero], hint), step, zero], hint)


def dq_weight(b: OnnxBuilder, g: GroupPlan, hint: str) -> str:
    """The K-group's int8 weights m (zero point 0) -> per-output-channel DequantizeLinear on axis 0."""
    w = g.weight
    return b.node("DequantizeLinear", [b.init(hint + ".w", w.values), b.init(hint + ".w_step", w.step),
                                       b.init(hint + ".w_zero", w.zero)], hint, axis=0)


def add_weight_shift(b: OnnxBuilder, y: str, a: str, g: GroupPlan, rec: QLayerRecipe, hint: str) -> str:
    """y + c * Dw * (sum of the input's grid values over each output's window): the weight shift's
    term (spec section 6: zw * sum qx), from one channel sum of the dequantized input `a` shared
    by all output channels; for a conv a 1-channel Conv with an all-ones kernel sums the window
    (zero padding: padded taps have grid value 0, as in the fake-quant)."""
    if not g.ones_column:
        return y
    coef = g.ones_coef()
    # the sum is taken of the dequantized values behind a Max(a, -FLT_MAX) (an identity): on a
    # ReduceSum of a dequantized tensor directly, LPT sums the u8 codes and mis-scales the zero
    # point (measured: tiny UNet 4 dB vs the same graph in ONNX Runtime; 59 dB with the guard)
    a = b.node("Max", [a, b.scalar(np.finfo(np.float32).min, np.float32)], hint)
    if rec.kind == "conv":
        s = b.node("ReduceSum", [a, b.i64([1])], hint, keepdims=1)
        ones = np.ones((1, 1) + tuple(rec.kernel), np.float32)
        s = b.node("Conv", [s, b.init(hint + ".window", ones)], hint, strides=list(rec.stride),
                   pads=list(rec.padding) * 2, dilations=list(rec.dilation))
        coef = coef.reshape(-1, 1, 1)
    else:
        s = b.node("ReduceSum", [a, b.i64([-1])], hint, keepdims=1)
    return b.node("Add", [y, b.node("Mul", [s, b.init(hint + ".shift_coef", coef)], hint)], hint)


def group_channels(b: OnnxBuilder, x: str, rec: QLayerRecipe, g: GroupPlan, axis: int, hint: str) -> str:
    """K-group g's input channels [k0, k1) of a (B, N, C) x along its last axis `axis` (x itself for
    an unsplit layer), by a Gather of constant indices: the CPU plugin runs a Split or Slice along
    that axis as a reference kernel (`ref_f32` / `ref_I8`) and this Gather as a jit one (measured;
    on an NCHW conv input it is the other way round: Gather ref_any, Split mostly in place, so
    convs keep onnx_graph.group_input's Split, which channel_copies_as_convs
    turns into 1x1 Convs at a static shape)."""
    if len(rec.weights) == 1:
        return x
    return shared(b, ("channels", x, axis, g.k0, g.k1),
                  lambda: b.node("Gather", [x, b.i64(np.arange(g.k0, g.k1))], hint, axis=axis))


def _one_bias(plan: LayerPlan) -> np.ndarray | None:
    """The folded bias every row block adds: with u8 operands no activation leaves a residual, so
    the row blocks' biases are the same (checked, not assumed)."""
    biases = [r.bias for r in plan.rows]
    if any((x is None) != (biases[0] is None) or (x is not None and not np.array_equal(x, biases[0])) for x in biases):
        raise ValueError(f"{plan.rec.name}: row blocks with different constants")
    return biases[0]


def _bias_input(b: OnnxBuilder, bias: np.ndarray | None, hint: str) -> list[str]:
    return [] if bias is None else [b.init(hint + ".bias", bias.astype(np.float32))]


def lower_qconv(b: OnnxBuilder, rec: QLayerRecipe, x: str) -> str:
    h = rec.name
    if rec.acts is None:
        return weight_only(b, rec, x)
    plan = layer_plan(rec, 4, ENCODING)
    (row,) = plan.rows
    xs = let_transform(b, rec, x, 4)
    y = None
    for g in row.groups:
        hg = f"{h}.g{g.index}"
        a = quantize(b, group_input(b, xs, rec, g, 1, h), g.act, hg + ".act")
        ins = [a, dq_weight(b, g, hg)] + _bias_input(b, row.bias if y is None else None, hg)
        yg = b.node("Conv", ins, h, strides=list(rec.stride), pads=list(rec.padding) * 2, dilations=list(rec.dilation))
        yg = add_weight_shift(b, yg, a, g, rec, hg)
        y = yg if y is None else b.node("Add", [y, yg], h)
    return add_constants(b, y, x, rec, None, plan.map_taps, h, spatial_dims=2)


def quantize_halves(b: OnnxBuilder, x: str, plan: LayerPlan, hint: str) -> str:
    """x (B, 2, n/2, C), the token halves of the plan as a batch axis -> DQ(Q(x)) with each half's
    own u8 grid: a per-axis QuantizeLinear on axis 1 (vectors of two steps and zero points). The
    plugin's FullyConnected then dequantizes per half with a (2, 1, Cout) constant. (Per-token
    vectors on the token axis gave it per-row scales and zero points that it folded with the
    per-channel weight scales into dense (tokens x Cout) constants, two per GEMM: 37 MB beside the
    tiny UNet's 0.9 MB of int8 weights.)"""
    ops = [r.groups[0].act for r in plan.rows]
    if any(op.residual or op.wide for op in ops):
        raise ValueError(f"{hint}: activation grid has no u8 form with a zero point")
    per_half = lambda f, dt: np.array([f(op) for op in ops], dt)
    if any(op.needs_clip for op in ops):  # < 8-bit grids: each half clipped to its own codes
        bound = lambda f: b.init(hint + ".bound", per_half(lambda op: np.float32(f(op) * float(op.step)), np.float32).reshape(2, 1, 1))
        x = b.node("Min", [b.node("Max", [x, bound(lambda op: op.lo - op.kernel_zero)], hint),
                          bound(lambda op: op.hi - op.kernel_zero)], hint)
    zeros = {op.kernel_zero for op in ops}
    if len(zeros) == 1:
        # one zero point for both halves: ONNX's per-axis form wants a vector of it, and LPT collapses an
        # all-equal vector and then fails to broadcast it in the GEMM (measured: MatMulTransformation
        # throws). So the per-half step goes around a unit-step quantizer: x / D_h -> Q/DQ(1, z) -> * D_h,
        # which the plugin folds into one FakeQuantize with per-half ranges and dequantization
        step = b.init(hint + ".step", per_half(lambda op: op.step, np.float32).reshape(2, 1, 1))
        one, zero = b.scalar(np.float32(1.0), np.float32), b.scalar(zeros.pop(), np.uint8)
        q = b.node("QuantizeLinear", [b.node("Div", [x, step], hint), one, zero], hint)
        return b.node("Mul", [b.node("DequantizeLinear", [q, one, zero], hint), step], hint)
    step = b.init(hint + ".step", per_half(lambda op: op.step, np.float32))
    zero = b.init(hint + ".zero", per_half(lambda op: op.kernel_zero, np.uint8))
    return b.node("DequantizeLinear", [b.node("QuantizeLinear", [x, step, zero], hint, axis=1), step, zero], hint, axis=1)


def _token_halves_by_rows(b: OnnxBuilder, rec: QLayerRecipe, plan: LayerPlan, xs: str, x: str, bias, h: str) -> str:
    outs = []
    for ri, (t, row) in enumerate(zip(row_inputs(b, xs, plan, h), plan.rows)):
        y = None
        for g in row.groups:
            hg = f"{h}.g{g.index}"
            a = quantize(b, group_channels(b, t, rec, g, -1, f"{h}.r{ri}"), g.act, f"{h}.r{ri}.g{g.index}.act")
            wt = shared(b, ("int8", h, g.key), lambda: b.node("Transpose", [dq_weight(b, g, hg)], hg, perm=[1, 0]))
            yg = add_weight_shift(b, b.node("MatMul", [a, wt], hg), a, g, rec, f"{h}.r{ri}.g{g.index}")
            y = yg if y is None else b.node("Add", [y, yg], h)
        outs.append(y)
    return add_constants(b, b.node("Concat", outs, h, axis=1), x, rec, bias, None, h)


def lower_qlinear(b: OnnxBuilder, rec: QLayerRecipe, x: str, shape: tuple, static_tokens: bool = False) -> str:
    h = rec.name
    if rec.acts is None:
        return weight_only(b, rec, x)
    plan = layer_plan(rec, len(shape), ENCODING)
    xs = let_transform(b, rec, x, len(shape))
    bias = _one_bias(plan)
    batch, tokens = shape[0], shape[1]
    halves_as_batch = plan.token_halves and static_tokens and plan.row_spans(tokens)[0] == (0, tokens // 2) and tokens % 2 == 0
    if halves_as_batch:
        # the two token halves as a batch axis, (B, N, C) -> (B, 2, N/2, C), a reshape that moves no
        # data: each half quantized on its own grid, each K-group still one int8 GEMM over all tokens.
        # Channels are taken before quantizing
        xs = b.node("Reshape", [xs, b.i64([batch, 2, tokens // 2, -1])], h)
        inputs = [quantize_halves(b, group_channels(b, xs, rec, g, -1, h), plan, f"{h}.g{g.index}.act")
                  for g in plan.rows[0].groups]
    elif plan.token_halves:
        # a token count known only at run time (VAE attention at any image size), or halves of unequal
        # length: each half quantized on its own, one GEMM per half (measured on the tiny UNet: 1.8x
        # slower than the batch form, from twice the GEMM nodes and the Concat)
        return _token_halves_by_rows(b, rec, plan, xs, x, bias, h)
    else:
        inputs = [quantize(b, group_channels(b, xs, rec, g, -1, h), g.act, f"{h}.g{g.index}.act") for g in plan.rows[0].groups]
    y = None
    for g, a in zip(plan.rows[0].groups, inputs):
        hg = f"{h}.g{g.index}"
        wt = shared(b, ("int8", h, g.key), lambda: b.node("Transpose", [dq_weight(b, g, hg)], hg, perm=[1, 0]))
        yg = add_weight_shift(b, b.node("MatMul", [a, wt], hg), a, g, rec, hg)
        y = yg if y is None else b.node("Add", [y, yg], h)
    if halves_as_batch:
        y = b.node("Reshape", [y, b.i64([batch, tokens, -1])], h)
    return add_constants(b, y, x, rec, bias, None, h)


# -- attention ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ZeroFreeAct:
    """An attention operand as an int8 MatMul of the CPU plugin takes it, zero point 0 (measured: it
    runs int8 only then): u8 where the grid starts at 0 and fits (j = operand), else int8 with the
    shift closest to 0 (j = m + shift, ia.sym_act)."""

    dtype: str
    step: np.float32
    shift: int
    lo: int
    hi: int


def zero_free_act(grid: ia.Grid) -> ZeroFreeAct:
    u8 = ia.act_operand(grid, "u8")
    if u8.kernel_zero == 0 and not u8.residual and not u8.wide:
        return ZeroFreeAct("u8", np.float32(u8.step), 0, u8.lo, u8.hi)
    s = ia.sym_act(grid)
    return ZeroFreeAct("s8", np.float32(s.step), s.shift, s.lo, s.hi)


def quantize_zero_free(b: OnnxBuilder, x: str, op: ZeroFreeAct, hint: str) -> str:
    """x -> DQ(Q(x - shift*D)) = m * D, zero point 0 (a clip first where the grid is narrower)."""
    step = float(op.step)
    if op.shift:
        x = b.node("Sub", [x, b.scalar(np.float32(op.shift * step), np.float32)], hint)
    if (op.lo, op.hi) != ia.DTYPE_RANGE[op.dtype]:
        x = b.node("Clip", [x, b.scalar(np.float32(op.lo * step), np.float32), b.scalar(np.float32(op.hi * step), np.float32)], hint)
    scale, zero = b.scalar(op.step, np.float32), b.scalar(0, np.uint8 if op.dtype == "u8" else np.int8)
    return b.node("DequantizeLinear", [b.node("QuantizeLinear", [x, scale, zero], hint), scale, zero], hint)


def const_codes(b: OnnxBuilder, values: torch.Tensor, op: ZeroFreeAct, hint: str, ones_column: bool = False) -> str:
    """DQ of the int8 m = j - shift of a folded constant (cross-attention K/V), j rounded half away
    from zero as the fake-quant rounds (spec section 2); `ones_column` appends codes 1 (lower_qattention)."""
    v = values.double() / float(op.step)
    m = torch.clamp(torch.sign(v) * torch.floor(v.abs() + 0.5) - op.shift, op.lo, op.hi)
    if ones_column:
        m = torch.cat([m, torch.ones(m.shape[:-1] + (1,), dtype=m.dtype)], dim=-1)
    scale, zero = b.scalar(op.step, np.float32), b.scalar(0, np.int8)
    return b.node("DequantizeLinear", [b.init(hint, m.numpy().astype(np.int8)), scale, zero], hint)


def _heads_operand(b: OnnxBuilder, x: str, rec: QAttentionRecipe, consts: dict, inv: np.ndarray, op: ZeroFreeAct,
                   hint: str, transpose: bool = False, ones_column: bool = False) -> str:
    """x * inv in heads layout (B, h, N, d) as int8 codes (K transposed to (B, h, d, N)); with
    `ones_column`, codes [m | 1] (B, h, N, d + 1): one more output column of P @ V is rowsum(P)."""
    heads, d = rec.heads, rec.head_dim
    if x in consts:
        c = torch.from_numpy(consts[x])
        t = c.reshape(c.shape[0], -1, heads, d).transpose(1, 2) * torch.from_numpy(inv)
        return const_codes(b, t.transpose(-1, -2) if transpose else t, op, hint + "_codes", ones_column)
    xs = b.node("Mul", [heads_of(b, x, heads, d, hint), b.init(hint + ".inv_scale", inv)], hint)
    if transpose:
        xs = b.node("Transpose", [xs], hint, perm=[0, 1, 3, 2])
    if not ones_column:
        return quantize_zero_free(b, xs, op, hint)
    # the shift is taken before the column is appended, so the column quantizes to exactly 1 (a
    # value of one step). Appended by a MatMul with [I | 0] plus [0 .. 0, D], not a Concat: the plugin
    # runs that Concat as a reference kernel (measured); the MatMul is exact (1 * x + zeros) and costs
    # d + 1 products per value, little beside the core's 2N
    xs = b.node("Sub", [xs, b.scalar(np.float32(op.shift * float(op.step)), np.float32)], hint)
    widen = np.eye(d, d + 1, dtype=np.float32)
    last = np.zeros(d + 1, np.float32)
    last[d] = op.step
    xs = b.node("Add", [b.node("MatMul", [xs, b.init(hint + ".widen", widen)], hint), b.init(hint + ".ones", last)], hint)
    return quantize_zero_free(b, xs, replace(op, shift=0), hint)


def lower_qattention(b: OnnxBuilder, rec: QAttentionRecipe, q: str, k: str, v: str, consts: dict) -> str:
    """softmax(scale * Q(q*s_qk) @ Q(k/s_qk)^T) -> Q(P*s_vw) @ Q(v/s_vw) per head (spec section 4),
    as int8 MatMuls in the form the CPU plugin fuses into one int8 MHA kernel (snippets) that never
    writes the N x N scores to memory. Its MatMuls take operands with zero point 0 (m = j - c):
      scores: (m_q + c_q) . (m_k + c_k) = m_q . m_k + c_q * colsum(m_k) + [c_k * rowsum(m_q) + d c_q c_k];
              the bracket is the same along each row of the scores, which softmax ignores, so only
              the per-key term is added (a (B, h, 1, N) tensor, as an attention mask is);
      P @ V:  (m_p + c_p) @ (m_v + c_v) = m_p @ m_v + c_v * rowsum(m_p) + c_p * colsum(m_v) + N c_p c_v;
              rowsum(m_p) needs P again, which would end the fused kernel, so V gets a column of
              codes 1: P @ [m_v | 1] gives m_p @ m_v and rowsum(m_p) together (d + 1 columns), and
              the c_v term is added after the kernel; c_p's terms are per column (colsum of V).
    Measured (VNNI EPYC, 2 threads): the sd21 UNet 1.34x faster than with the float core; the
    int8 MatMuls of the earlier form, with all offset terms as separate nodes, were not fused."""
    h, heads, d = rec.name, rec.heads, rec.head_dim
    s_qk, s_vw = rec.s_qk.astype(np.float32), rec.s_vw.astype(np.float32)
    qop, kop, pop, vop = (zero_free_act(g) for g in (rec.q, rec.k, rec.p, rec.v))
    qa = quantize_zero_free(b, b.node("Mul", [heads_of(b, q, heads, d, h), b.init(h + ".s_qk", s_qk)], h), qop, h + ".q")
    kb = _heads_operand(b, k, rec, consts, reciprocal(s_qk), kop, h + ".k", transpose=True)
    s = b.node("MatMul", [qa, kb], h + ".qk")
    if qop.shift:
        s = add_offset_products(b, s, None, qop.shift * float(qop.step), lambda: kb, 0.0, d, h + ".qk")
    p = b.node("Softmax", [b.node("Mul", [s, b.scalar(np.float32(rec.scale), np.float32)], h)], h, axis=-1)
    pa = quantize_zero_free(b, b.node("Mul", [p, b.init(h + ".s_vw", s_vw)], h), pop, h + ".p")
    vb = _heads_operand(b, v, rec, consts, reciprocal(s_vw)[:, None], vop, h + ".v", ones_column=bool(vop.shift))
    y = b.node("MatMul", [pa, vb], h + ".pv")
    if pop.shift:
        y = add_offset_products(b, y, None, pop.shift * float(pop.step), lambda: vb, 0.0, s_vw.size, h + ".pv")
    if vop.shift:  # the last column is D_v * rowsum(P^): the c_v term. Gathers, not Slices: the
        # plugin runs a last-axis Slice/Split as a reference kernel, a Gather as a jit one (group_channels)
        main = b.node("Gather", [y, b.i64(np.arange(d))], h, axis=-1)
        sums = b.node("Gather", [y, b.i64([d])], h, axis=-1)
        y = b.node("Add", [main, b.node("Mul", [sums, b.scalar(np.float32(vop.shift), np.float32)], h)], h)
    return merge_heads(b, y, heads, d, h)


def splits_to_gathers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every Split along the last axis (GEGLU's halves) as one Gather of constant indices per part:
    the CPU plugin runs such a Split as a reference kernel, a Gather as a jit one (group_channels).
    The split axis must have a static size (channel axes do)."""
    from onnx import helper, numpy_helper, shape_inference

    splits = [n for n in model.graph.node if n.op_type == "Split"]
    if not splits:
        return model
    info = {v.name: v for v in shape_inference.infer_shapes(model).graph.value_info}
    info.update({v.name: v for v in model.graph.input})
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for n in model.graph.node:
        if n.op_type != "Split":
            nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        dims = info[n.input[0]].type.tensor_type.shape.dim
        axis = attrs.get("axis", 0) % len(dims)
        if axis != len(dims) - 1:  # an NCHW channel Split stays a Split (see group_channels)
            nodes.append(n)
            continue
        if len(n.input) > 1 and n.input[1]:
            sizes = numpy_helper.to_array(inits[n.input[1]]).tolist()
        else:
            if not dims[axis].HasField("dim_value") or dims[axis].dim_value % len(n.output):
                raise ValueError(f"{n.name}: a Split whose parts have no static size")
            sizes = [dims[axis].dim_value // len(n.output)] * len(n.output)
        start = 0
        for out, size in zip(n.output, sizes):
            idx = out + ".indices"
            model.graph.initializer.append(numpy_helper.from_array(np.arange(start, start + size, dtype=np.int64), idx))
            nodes.append(helper.make_node("Gather", [n.input[0], idx], [out], axis=axis, name=out + ".gather"))
            start += size
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


# a one-hot 1x1 Conv does one multiply-add per output channel for each element it copies: cheap on
# narrow tensors, not on wide ones. Measured (VNNI EPYC, 2 threads): the tiny UNet's 34 (<= 128
# channels) cost 0.4 ms of 23 ms; the sd21 UNet's 32 (320-1920 channels) cost 770 ms of 5.5 s as
# convs against 7 ms of 2.1 s as the plugin's reference copies (plain memory copies), so those stay
ONE_HOT_MAX_CHANNELS = 128


def channel_copies_as_convs(model: onnx.ModelProto, only: set[str] | None = None,
                            max_channels: int | None = None) -> onnx.ModelProto:
    """Every channel Split / Concat of an NCHW tensor as 1x1 Convs with one-hot weights (a Concat:
    one Conv per part placing it in the output's channels, the parts added). Why: the int8 convs
    make the CPU plugin lay these tensors out channels-last, where a channel Split or Concat is no
    longer in place and runs its only other kernel, a reference one (`ref_f32`: the tiny UNet's 11
    K-group Splits of downsamplers, upsamplers and shortcuts and its 6 skip Concats; measured). The
    1x1 Convs run as oneDNN kernels and are exact in f32: each output is 1 * x plus zeros times the
    other channels (finite inputs). Measured on the tiny UNet (VNNI EPYC): no reference kernel
    left, output bit for bit unchanged, but no faster: those reference kernels are plain copies
    (0.11 ms of a 22.9 ms profile), the 34 Convs cost about 0.4 ms (wall time 1.02x, median of
    41). A Split of a graph input is left alone: it is in place there, and as a Conv it cost the
    tiny VAE encoder's conv_in 5 dB (64.1 -> 59.3, cause not found). `only`: the names of the
    nodes to rewrite (reference_copies), else every such node; `max_channels`: leave a copy whose
    source (Split) or result (Concat) has more channels (ONE_HOT_MAX_CHANNELS says why)."""
    from onnx import helper, numpy_helper, shape_inference

    info = {v.name: v for v in shape_inference.infer_shapes(model).graph.value_info}
    graph_inputs = {v.name for v in model.graph.input}
    inits = {t.name: t for t in model.graph.initializer}

    def channels(name: str) -> int | None:
        """C of a 4-D tensor with a static channel count, else None."""
        v = info.get(name)
        if v is None:
            return None
        dims = v.type.tensor_type.shape.dim
        return dims[1].dim_value if len(dims) == 4 and dims[1].HasField("dim_value") else None

    def one_hot(name: str, rows: int, cols: int, r0: int, c0: int, k: int) -> str:
        w = np.zeros((rows, cols, 1, 1), np.float32)
        w[r0 + np.arange(k), c0 + np.arange(k), 0, 0] = 1.0
        model.graph.initializer.append(numpy_helper.from_array(w, name))
        return name

    nodes = []
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if only is not None and n.name not in only:
            nodes.append(n)
            continue
        wide = lambda c: max_channels is not None and c > max_channels
        if (n.op_type == "Split" and n.input[0] not in graph_inputs and channels(n.input[0])
                and not wide(channels(n.input[0])) and attrs.get("axis", 0) % 4 == 1 and len(n.input) > 1
                and n.input[1] in inits):
            c, start = channels(n.input[0]), 0
            for out, k in zip(n.output, numpy_helper.to_array(inits[n.input[1]]).tolist()):
                w = one_hot(out + ".select", k, c, 0, start, k)
                nodes.append(helper.make_node("Conv", [n.input[0], w], [out], name=out + ".select"))
                start += k
            continue
        parts = [channels(i) for i in n.input]
        if n.op_type == "Concat" and attrs["axis"] % 4 == 1 and all(parts) and not wide(sum(parts)):
            c, start, placed = sum(parts), 0, []
            for i, (inp, k) in enumerate(zip(n.input, parts)):
                name = f"{n.output[0]}.place{i}"
                nodes.append(helper.make_node("Conv", [inp, one_hot(name + ".w", c, k, start, 0, k)], [name], name=name))
                placed.append(name)
                start += k
            acc = placed[0]
            for i, p in enumerate(placed[1:], 1):
                out = n.output[0] if i == len(placed) - 1 else f"{n.output[0]}.sum{i}"
                nodes.append(helper.make_node("Add", [acc, p], [out], name=out + ".add"))
                acc = out
            continue
        nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def static_inputs(g: Graph) -> bool:
    """Whether every input of `g` has a fixed shape (the UNet at its tile; the VAE graphs take any size)."""
    return all(d is not None for shape in g.inputs.values() for d in shape)


def int8_lowering(static: bool):
    """lower_ir's quantized-op lowering of the int8 graph (static: the graph's inputs have fixed shapes)."""
    return quantized_lowering(_conv, lower_qlinear, _attention, static_tokens=static)


def lower_graph_int8(g: Graph, probes: list[str] | None = None) -> onnx.ModelProto:
    """The int8 mode's ONNX of IR graph `g` (module docstring), traced input shapes kept."""
    static = static_inputs(g)
    return int8_layout(lower_ir(g, int8_lowering(static), probes), static)


def int8_layout(model: onnx.ModelProto, static: bool) -> onnx.ModelProto:
    """The rewrites of the lowered int8 graph that keep the plugin off its reference kernels."""
    model = splits_to_gathers(model)
    # only at a static shape (the UNet): there the rewrite leaves no reference kernel at all; the
    # dynamic-shape VAE keeps its shape arithmetic's reference nodes either way. Only the copies the
    # plugin runs as reference kernels: the others are in place (free), and rewriting all of them
    # (82 Convs in the tiny UNet) cost 5% of its profiled time against the 17 nodes' 1.4%. Only
    # narrow ones (ONE_HOT_MAX_CHANNELS): a wide tensor's reference copy is far cheaper than its conv
    if not static:
        return model
    return channel_copies_as_convs(model, reference_copies(model), max_channels=ONE_HOT_MAX_CHANNELS)


def reference_copies(model: onnx.ModelProto) -> set[str]:
    """Names of the Split / Concat nodes of `model` that the CPU plugin at hand runs as reference
    kernels, found by compiling it as the int8 mode does (the layout that decides it is the
    plugin's choice, not visible in the ONNX). Another CPU or plugin version may place others in
    memory or not: the rewrite is exact either way, only the count of reference nodes can differ."""
    import tempfile
    from pathlib import Path

    from .ovcore import convert
    from .ovcore import compile_config, core

    with tempfile.TemporaryDirectory(prefix="passion-ov-layout-") as tmp:
        compiled = core().compile_model(convert(model, Path(tmp), "layout"), "CPU", compile_config("f32", "int8", None))
    names = set()
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in ("Split", "Concatenation") and rt["primitiveType"].astype(str).startswith("ref"):
            names.add(op.get_friendly_name())
    return names


def _conv(b, rec, x, **_):
    return lower_qconv(b, rec, x)


def _attention(b, rec, q, k, v, consts, **_):
    return lower_qattention(b, rec, q, k, v, consts)


def int8_op_count(g: Graph) -> int:
    """Convs/matmuls on quantized activations and int8 weights: one per K-group of a layer (token
    halves share one). Attention cores run in float (lower_qattention)."""
    return sum(len(g.recipes[n.attrs["recipe"]].weights) for n in g.nodes
               if n.op in ("qconv", "qlinear") and g.recipes[n.attrs["recipe"]].acts is not None)


def fused_attention_kernels(compiled) -> list[str]:
    """The exec types of the nodes of a compiled model that run a whole attention core (the
    plugin's MHA kernel: one node whose original layers hold both a MatMul and the Softmax)."""
    found = []
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        names = rt["originalLayersNames"].astype(str) if "originalLayersNames" in rt else ""
        if "Softmax" in names and "MatMul" in names:
            found.append(rt["primitiveType"].astype(str))
    return found
