"""Plain references of every kernel: integer parts in int64 (or float64 on integers, which is
exact below 2^53), float parts in float64. They take the kernels' operand scalars
(`operands.ActOperand`) but not their layouts: weights come as operand values in the layer's
own layout (`RefWeights`, never the packed bytes), convs are `F.conv2d` on zero-centred
operands (never an implicit GEMM). Tests hold the kernels bit-exact to the integer parts and
within float rounding to the rest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .operands import ActOperand


@dataclass
class RefWeights:
    """One K-group's weight operands b for input channels [k0, k1), in the layer's own layout:
    jw = (b - zero) + residual per output channel, weight value jw * step."""

    k0: int
    k1: int
    values: np.ndarray  # integer operands, (N, Cg) or (N, Cg, kh, kw)
    zero: np.ndarray  # (N,) zb
    residual: np.ndarray  # (N,) B'
    step: np.ndarray  # (N,) float32 Dw


def pre_op(x: torch.Tensor, pre: str, scale=None, offset=None, vec_on_rows: bool = False) -> torch.Tensor:
    """The float32 pre-op of `act_quant`, written as the fake-quant modules write it."""
    if pre == "none":
        return x
    s = scale.view(-1, 1) if vec_on_rows else scale
    if pre == "let":
        return (x - offset) / s
    return x / s if pre == "div" else x * s


def quantize_ref(x: torch.Tensor, op: ActOperand) -> torch.Tensor:
    """clamp(R(x / step) + quant_zero, lo, hi) in x's float dtype, R = round half away from zero
    (the fake-quant's torch expression)."""
    v = x / torch.tensor(op.step, dtype=x.dtype)
    r = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return torch.clamp(r + op.quant_zero, op.lo, op.hi)


def act_quant_ref(x: torch.Tensor, ops: list[ActOperand], c_split: int | None = None, pre: str = "none",
                  scale=None, offset=None, vec_on_rows: bool = False) -> torch.Tensor:
    """(B, P, C) float32 -> int64 operands."""
    xs = pre_op(x.float(), pre, scale, offset, vec_on_rows)
    if len(ops) == 1:
        return quantize_ref(xs, ops[0]).long()
    return torch.cat([quantize_ref(xs[..., :c_split], ops[0]), quantize_ref(xs[..., c_split:], ops[1])], dim=-1).long()


def qgemm_ref(a: torch.Tensor, a_ops: list[ActOperand], groups: list[RefWeights],
              spatial: tuple[int, int] | None = None, stride: int = 1, padding: int = 0,
              bias: torch.Tensor | None = None, map_: torch.Tensor | None = None):
    """Reference of `gemm.qgemm`: a (B, P, C) operands -> (exact (G, B, P_out, N) int64,
    row sums (G, B, P_out) int64, y (B, P_out, N) float64)."""
    bsz, p, _ = a.shape
    exacts, sums, y = [], [], 0
    for g, op in zip(groups, a_ops):
        values = np.asarray(g.values).astype(np.int64)
        bm = torch.from_numpy(values - np.asarray(g.zero).astype(np.int64).reshape((-1,) + (1,) * (values.ndim - 1)))
        am = a[..., g.k0:g.k1].long() - op.kernel_zero  # zero at padded taps = zero padding of (a - za)
        if values.ndim == 4:
            h, w = spatial
            img = am.double().transpose(1, 2).reshape(bsz, -1, h, w)
            ex = F.conv2d(img, bm.double(), stride=stride, padding=padding)
            rs = F.conv2d(img, torch.ones_like(bm[:1]).double(), stride=stride, padding=padding)[:, 0]
            ex, rs = ex.flatten(2).transpose(1, 2).round().long(), rs.flatten(1).round().long()
        else:
            ex, rs = am @ bm.t(), am.sum(-1)
        scale = float(op.step) * torch.from_numpy(np.asarray(g.step).astype(np.float64))
        y = y + ex.double() * scale + rs.double()[..., None] * (torch.from_numpy(np.asarray(g.residual).astype(np.float64)) * scale)
        exacts.append(ex)
        sums.append(rs)
    if bias is not None:
        y = y + bias.double()
    if map_ is not None:
        y = y + map_.double()
    return torch.stack(exacts), torch.stack(sums), y


def act_matmul_ref(a: torch.Tensor, aop: ActOperand, b: torch.Tensor, bop: ActOperand, scale: float):
    """Reference of `attention.act_matmul`: a (Z, M, K), b (Z, K, N) operands ->
    (exact sum_k (a-za)(b-zb) int64, y float64), y = Da Db scale * sum_k ja jb with both residuals."""
    am, bm = a.long() - aop.kernel_zero, b.long() - bop.kernel_zero
    ex = am @ bm
    j = ex + bop.residual * am.sum(-1, keepdim=True) + aop.residual * bm.sum(-2, keepdim=True) \
        + aop.residual * bop.residual * a.shape[-1]
    return ex, j.double() * (float(aop.step) * float(bop.step) * scale)


def softmax_quant_ref(scores: torch.Tensor, s_vw: torch.Tensor, pop: ActOperand) -> torch.Tensor:
    """Normalised softmax over the last axis, times s_vw per key, quantized (spec section 4)."""
    p = torch.softmax(scores.float(), dim=-1)
    return quantize_ref(p * s_vw, pop).long()
