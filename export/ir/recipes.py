"""Integer recipes: what the deploy IR holds for each quantized layer and attention core.

A recipe is read off a calibrated fake-quant module once, as plain arrays:

- `QLayerRecipe` (QuantConv / QuantLinear): weight codes per K-group (split halves are two
  groups, each with per-output-channel step and zero point), the activation grids (one, or
  two halves of dim 1: channel halves for NCHW and 2-D inputs, token halves for 3-D inputs),
  the LET scale already folded into the weights before they were quantized (the codes are
  codes of W*s, exactly as the fake-quant computes them), the input transform
  x' = (x - offset)/s that the backend applies before quantizing, the LET correction (a
  per-tap kernel for convs, whose map is exact at padded borders; a constant for linears),
  and the fake-quantized bias.
- `QAttentionRecipe` (QuantAttnProcessor): the q/k/v/P grids and the scales s_qk, s_vw.

`run_layer` and `run_attention` execute a recipe with the integer algebra of `int_algebra`
(integer sums in float64, which is exact here) and are the reference every backend is
checked against; tests check them against the fake-quant modules themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from passion_deploy.quant.attention import QuantAttnProcessor, reciprocal
from passion_deploy.quant.layers import QuantConv, QuantLayer, QuantLinear, split_point

from . import int_algebra as ia


@dataclass
class WeightGroup:
    k0: int  # input-channel range [k0, k1) of this K-group
    k1: int
    codes: np.ndarray  # int16, (Cout, k1-k0, *kernel)
    grid: ia.Grid  # per output channel

    def dequant(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.codes.ndim - 1)
        j = self.codes.astype(np.float32) + self.grid.zp.reshape(shape).astype(np.float32)
        return torch.from_numpy(j * self.grid.step.reshape(shape))


@dataclass
class QLayerRecipe:
    name: str
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    weights: list[WeightGroup]
    acts: list[ia.Grid] | None  # None: weight-only quantization (float activations)
    bias: np.ndarray | None  # fake-quantized bias, float32 (Cout,)
    let_scale: np.ndarray | None = None  # s (Cin,): x' = (x - let_input_offset) / s
    let_input_offset: np.ndarray | None = None  # o (consistent form) or -o (reference form)
    let_taps: np.ndarray | None = None  # conv: (Cout, *kernel) sum_c W[o,c,tap] o_c; linear: (Cout,) W o
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    eight_bit: bool = False  # a first/last layer kept at 8 bits

    @property
    def split(self) -> bool:
        return len(self.weights) == 2

    @property
    def w_bits(self) -> int:
        return self.weights[0].grid.bits

    @property
    def a_bits(self) -> int | None:
        return self.acts[0].bits if self.acts else None

    def act_split_on_tokens(self, x_ndim: int) -> bool:
        """Split activation halves are along dim 1: tokens for (B, N, C) linear inputs."""
        return self.split and self.kind == "linear" and x_ndim == 3

    def let_offset_nonzero(self) -> bool:
        return self.let_input_offset is not None and bool(np.any(self.let_input_offset != 0))

    def dequant_weight(self) -> torch.Tensor:
        return torch.cat([g.dequant() for g in self.weights], dim=1)


@dataclass
class QAttentionRecipe:
    name: str
    heads: int
    head_dim: int
    scale: float  # d^-0.5
    s_qk: np.ndarray  # (d,)
    s_vw: np.ndarray  # (Nk,)
    q: ia.Grid
    k: ia.Grid
    v: ia.Grid
    p: ia.Grid
    extra: dict = field(default_factory=dict)


# -- reading recipes off the fake-quant modules ---------------------------------------------

def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().copy()


@torch.no_grad()
def layer_recipe(name: str, layer: QuantLayer, eight_bit: bool = False) -> QLayerRecipe:
    if not isinstance(layer, (QuantConv, QuantLinear)):
        raise TypeError(f"{name}: not a quantized conv/linear layer")
    w = layer.scaled_weight().float()  # LET scale folded in before weight quantization
    c_in = layer.in_channels
    bounds = [(0, split_point(c_in)), (split_point(c_in), c_in)] if layer.split else [(0, c_in)]
    groups = []
    for (k0, k1), wq in zip(bounds, layer.w_quant):
        grid = ia.grid_of(wq)
        codes = ia.quant_codes(w[:, k0:k1], grid, channel_axis=0)
        groups.append(WeightGroup(k0, k1, codes.numpy().astype(np.int16), grid))
    acts = [ia.grid_of(aq) for aq in layer.a_quant] if layer.a_quant is not None else None
    qb = layer.quant_bias()
    rec = QLayerRecipe(name, "conv" if isinstance(layer, QuantConv) else "linear", c_in, layer.weight.shape[0],
                       groups, acts, None if qb is None else _np(qb), eight_bit=eight_bit)
    if isinstance(layer, QuantConv):
        rec.kernel = tuple(layer.weight.shape[2:])
        rec.stride, rec.padding, rec.dilation = tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation)
    if layer.use_let:
        o = layer.let_offset.float()
        rec.let_scale = _np(layer.let_scale)
        rec.let_input_offset = _np(-o if (layer.let_form == "reference" and rec.kind == "linear") else o)
        if bool(torch.any(o != 0)):
            rec.let_taps = _np(torch.einsum("oc...,c->o...", layer.weight.float(), o))
    return rec


@torch.no_grad()
def attention_recipe(name: str, attn, proc: QuantAttnProcessor) -> QAttentionRecipe:
    return QAttentionRecipe(name, attn.heads, attn.inner_dim // attn.heads, float(attn.scale),
                            _np(proc.s_qk), _np(proc.s_vw), ia.grid_of(proc.q_quant), ia.grid_of(proc.k_quant),
                            ia.grid_of(proc.v_quant), ia.grid_of(proc.p_quant))


# -- reference execution ---------------------------------------------------------------------

def transform_input(rec: QLayerRecipe, x: torch.Tensor) -> torch.Tensor:
    """x' = (x - offset) / s, with the same torch expression as the fake-quant layer."""
    if rec.let_scale is None:
        return x
    shape = (1, -1) + (1,) * (x.dim() - 2) if rec.kind == "conv" else (-1,)
    s = torch.from_numpy(rec.let_scale).to(x.dtype).view(shape)
    o = torch.from_numpy(rec.let_input_offset).to(x.dtype).view(shape)
    return (x - o) / s


def let_correction(rec: QLayerRecipe, out_spatial: tuple[int, ...] | None, in_spatial: tuple[int, ...] | None) -> torch.Tensor | None:
    """The LET correction term: conv -> (Cout, *out_spatial) map, linear -> (Cout,) vector."""
    if rec.let_taps is None:
        return None
    taps = torch.from_numpy(rec.let_taps)
    if rec.kind == "linear":
        return taps
    return ia.ones_conv_map(taps, in_spatial, rec.stride, rec.padding, rec.dilation)


def _halves(n: int) -> list[tuple[int, int]]:
    return [(0, split_point(n)), (split_point(n), n)]


def blocks(rec: QLayerRecipe, x_shape: tuple[int, ...]):
    """The (row range, K-group index, activation-grid index) blocks of a layer's integer GEMM.
    Row ranges are token ranges of a 3-D linear input (None: all rows)."""
    n_groups = len(rec.weights)
    if rec.act_split_on_tokens(len(x_shape)):
        return [(rows, g, r) for r, rows in enumerate(_halves(x_shape[1])) for g in range(n_groups)]
    return [(None, g, g if rec.acts and len(rec.acts) == 2 else 0) for g in range(n_groups)]


def _gemm(rec: QLayerRecipe, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact integer sum of a (activation operand minus zero) and b (weights minus zero), float64."""
    if rec.kind == "conv":
        fn = F.conv2d if len(rec.kernel) == 2 else F.conv1d
        return fn(a, b, None, rec.stride, rec.padding, rec.dilation)
    return a @ b.t()


@torch.no_grad()
def run_layer(rec: QLayerRecipe, x: torch.Tensor, isa: str = "portable") -> torch.Tensor:
    """The layer's output computed the integer way (float32 result)."""
    if rec.acts is None:
        raise ValueError(f"{rec.name}: weight-only layers have no integer path")
    x = x.float()
    xs = transform_input(rec, x)
    ch_axis = 1 if rec.kind == "conv" else -1  # K-groups are channel ranges
    out_rows = []
    row_ranges = sorted({b[0] for b in blocks(rec, tuple(x.shape))}, key=lambda r: -1 if r is None else r[0])
    for rows in row_ranges:
        acc = None
        for rr, g, ai in blocks(rec, tuple(x.shape)):
            if rr != rows:
                continue
            wg = rec.weights[g]
            part = xs if rows is None else xs[:, rows[0]:rows[1]]
            part = part.narrow(ch_axis, wg.k0, wg.k1 - wg.k0)
            aop = ia.act_operand(rec.acts[ai], "u8")
            a = ia.act_operand_values(part, aop).double() - aop.kernel_zero
            wop = ia.weight_operand(wg.codes, wg.grid, ia.choose_weight_dtype(aop, wg.grid.bits, isa))
            b = torch.from_numpy(wop.values.astype(np.float64) - _bview(wop.zero, wg.codes.ndim))
            y = _gemm(rec, a, b)
            shape = (1, -1) + (1,) * (y.dim() - 2) if rec.kind == "conv" else (-1,)
            if wop.has_residual:  # one-signed channels: + B' * (sum of the input codes over the window)
                ones = torch.ones_like(b[:1])
                y = y + torch.from_numpy(wop.residual.astype(np.float64)).view(shape) * _gemm(rec, a, ones)
            y = y * (float(aop.step) * torch.from_numpy(wop.step.astype(np.float64))).view(shape)
            taps = ia.act_residual_taps(aop, wg.dequant().double())
            if taps is not None:  # activation grid outside the operand type: static map over valid taps
                y = y + (ia.ones_conv_map(taps, tuple(part.shape[2:]), rec.stride, rec.padding, rec.dilation)
                         if rec.kind == "conv" else taps)
            acc = y if acc is None else acc + y
        out_rows.append(acc)
    y = (out_rows[0] if len(out_rows) == 1 else torch.cat(out_rows, dim=1)).float()
    shape = (1, -1) + (1,) * (y.dim() - 2) if rec.kind == "conv" else (-1,)
    if rec.bias is not None:
        y = y + torch.from_numpy(rec.bias).view(shape)
    corr = let_correction(rec, tuple(y.shape[2:]), tuple(x.shape[2:]))
    return y if corr is None else y + corr


def _bview(zero: np.ndarray, ndim: int) -> np.ndarray:
    return zero.astype(np.float64).reshape((-1,) + (1,) * (ndim - 1))


def _operand_sum(a: torch.Tensor, aop: ia.ActOperand, b: torch.Tensor, bop: ia.ActOperand, scale: float) -> torch.Tensor:
    """Da*Db*scale * sum_k ja_k jb_k for a (.., M, K) and b (.., K, N) activation operands."""
    am = a.double() - aop.kernel_zero
    bm = b.double() - bop.kernel_zero
    g = am @ bm
    if bop.residual:
        g = g + bop.residual * am.sum(-1, keepdim=True)
    if aop.residual:
        g = g + aop.residual * bm.sum(-2, keepdim=True)
    if aop.residual and bop.residual:
        g = g + aop.residual * bop.residual * am.shape[-1]
    return g * (float(aop.step) * float(bop.step) * scale)


@torch.no_grad()
def run_attention(rec: QAttentionRecipe, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, isa: str = "portable") -> torch.Tensor:
    """q, k, v: (B*heads, N, d) -> (B*heads, Nq, d), the integer way."""
    if v.shape[1] != rec.s_vw.size:
        raise ValueError(f"{rec.name}: calibrated for {rec.s_vw.size} key tokens, got {v.shape[1]}")
    s_qk = torch.from_numpy(rec.s_qk)
    s_vw = torch.from_numpy(rec.s_vw)
    qa = ia.act_operand(rec.q, "u8")
    kb = ia.act_operand(rec.k, ia.choose_act_b_dtype(qa, rec.k, isa))
    a = ia.act_operand_values(q.float() * s_qk, qa)
    b = ia.act_operand_values(k.float() * reciprocal(s_qk), kb)
    scores = _operand_sum(a, qa, b.transpose(-1, -2), kb, rec.scale).float()
    p = torch.softmax(scores, dim=-1)
    pa = ia.act_operand(rec.p, "u8")
    vb = ia.act_operand(rec.v, ia.choose_act_b_dtype(pa, rec.v, isa))
    ap = ia.act_operand_values(p * s_vw, pa)
    bv = ia.act_operand_values(v.float() * reciprocal(s_vw)[:, None], vb)
    return _operand_sum(ap, pa, bv, vb, 1.0).float()
