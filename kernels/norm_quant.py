"""GroupNorm + SiLU + activation quantization fused (the input of every ResBlock conv):

    h = SiLU(GroupNorm(x) * gamma + beta);  codes = Q8((h - o) / s)     (LET, then act_quant's rule)

One program per (image, group): it reads the group's Cg x H x W block three times (mean, then
variance about the mean, then normalise-activate-quantize) and writes channels-last codes for
the implicit-GEMM conv, so the float activation never goes back to memory.

Not bit-identical to torch's group_norm, whose reductions sum in another order: a code can
differ by one where the float value sits within rounding of a half step (tests bound that).
"""
from __future__ import annotations

import torch

from passion_deploy.export import int_algebra as ia

from ._triton import check_device, tl, triton
from .act_quant import TORCH_OF, quantize_operand


@triton.jit
def groupnorm_silu_quant_kernel(x_ptr, gamma_ptr, beta_ptr, o_ptr, s_ptr, q_ptr, C, HW, CG, eps, C_SPLIT,
                                step0, zero0, lo0, hi0, step1, zero1, lo1, hi1,
                                HAS_LET: tl.constexpr, BLOCK: tl.constexpr):
    b, g = tl.program_id(0), tl.program_id(1)
    n = CG * HW
    base = x_ptr + (b * C + g * CG) * HW  # NCHW: a group is one contiguous block
    total = tl.zeros((BLOCK,), tl.float32)
    for e0 in range(0, n, BLOCK):
        e = e0 + tl.arange(0, BLOCK)
        total += tl.load(base + e, mask=e < n, other=0.0).to(tl.float32)
    mean = tl.sum(total, axis=0) / n
    sq = tl.zeros((BLOCK,), tl.float32)
    for e0 in range(0, n, BLOCK):
        e = e0 + tl.arange(0, BLOCK)
        d = tl.where(e < n, tl.load(base + e, mask=e < n, other=0.0).to(tl.float32) - mean, 0.0)
        sq += d * d
    rstd = 1.0 / tl.sqrt_rn(tl.sum(sq, axis=0) / n + eps)
    for e0 in range(0, n, BLOCK):
        e = e0 + tl.arange(0, BLOCK)
        mask = e < n
        c = g * CG + e // HW
        p = e % HW
        h = (tl.load(base + e, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
        h = h * tl.load(gamma_ptr + c, mask=mask, other=1.0) + tl.load(beta_ptr + c, mask=mask, other=0.0)
        h = h * tl.sigmoid(h)
        if HAS_LET:
            h = tl.math.div_rn(h - tl.load(o_ptr + c, mask=mask, other=0.0), tl.load(s_ptr + c, mask=mask, other=1.0))
        first = c < C_SPLIT
        q = quantize_operand(h, tl.where(first, step0, step1), tl.where(first, zero0, zero1),
                             tl.where(first, lo0, lo1), tl.where(first, hi0, hi1))
        tl.store(q_ptr + (b * HW + p) * C + c, q.to(q_ptr.dtype.element_ty), mask=mask)


def groupnorm_silu_quant(x: torch.Tensor, groups: int, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
                         ops: list[ia.ActOperand], c_split: int | None = None, let_scale: torch.Tensor | None = None,
                         let_offset: torch.Tensor | None = None, block: int = 1024) -> torch.Tensor:
    """x (B, C, H, W) contiguous float -> channels-last operands (B, H*W, C) of `ops[0].dtype`."""
    if x.dim() != 4 or not x.is_contiguous():
        raise ValueError(f"groupnorm_silu_quant takes a contiguous (B, C, H, W) tensor, got {tuple(x.shape)}")
    bsz, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"{c} channels do not split into {groups} groups")
    if gamma.shape != (c,) or beta.shape != (c,):
        raise ValueError("gamma and beta must have one entry per channel")
    if (let_scale is None) != (let_offset is None):
        raise ValueError("the LET transform needs both its scale and its offset")
    if len(ops) == 2 and not (c_split is not None and 0 < c_split < c):
        raise ValueError(f"two grids need a channel split point in (0, {c}), got {c_split}")
    check_device(x, gamma, beta, let_scale, let_offset)
    f32 = lambda t: t.to(device=x.device, dtype=torch.float32).contiguous()  # noqa: E731
    out = torch.empty((bsz, h * w, c), dtype=TORCH_OF[ops[0].dtype], device=x.device)
    o0, o1 = ops[0], ops[-1]
    has_let = let_scale is not None
    groupnorm_silu_quant_kernel[(bsz, groups)](
        x, f32(gamma), f32(beta), f32(let_offset) if has_let else x, f32(let_scale) if has_let else x, out,
        c, h * w, c // groups, float(eps), c if c_split is None else c_split,
        float(o0.step), float(o0.ql_zero), float(o0.lo), float(o0.hi),
        float(o1.step), float(o1.ql_zero), float(o1.lo), float(o1.hi), HAS_LET=has_let, BLOCK=block)
    return out
