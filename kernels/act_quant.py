"""Fused activation quantization: an optional per-channel or per-row pre-op, then per-tensor
asymmetric quantization to 8-bit operands, in one pass over the float input.

    pre-op     LET     x' = (x - o_c) / s_c         (QuantConv / QuantLinear input)
               div     x' = x / s                   (attention k / s_qk, v / s_vw per token)
               mul     x' = x * s                   (attention q * s_qk, P * s_vw per key)
    quantize   operand = clamp(R(x' / D) + zero, lo, hi),  R = round half away from zero

`zero`, `lo`, `hi`, `D` are an `operands.ActOperand`'s (quant_zero, lo, hi, step: the deploy IR's
integer algebra, copied in by the triton target; `reference.act_quant_ref` is the reference);
two operands may split the channel axis at C_SPLIT (split layers' channel halves).
The input is read through strides as (B, P, C) and codes are written contiguous (B, P, C):
an NCHW conv input comes out channels-last, the layout the implicit-GEMM conv reads.

Exactness: the fake-quant computes x', x'/D with IEEE float32 division; Triton's `/` on a GPU
is an approximate division (div.full.f32, up to 2 ulp), which can move a value across a
rounding half-step, so the divisions here use `div_rn` (correctly rounded). Float16 inputs are widened to float32
first: the fake-quant reference computes in float32.
"""
from __future__ import annotations

import torch

from ._triton import check_device, tl, triton
from .configs import ACT_QUANT
from .operands import ActOperand

PRE_OPS = ("none", "let", "div", "mul")
TORCH_OF = {"u8": torch.uint8, "s8": torch.int8}


@triton.jit
def round_half_away(v):
    """R(v) = sign(v) * floor(|v| + 0.5), the same float32 operations as the fake-quant."""
    r = tl.floor(tl.abs(v) + 0.5)
    return tl.where(v < 0, -r, r)


@triton.jit
def quantize_operand(v, step, zero, lo, hi):
    """clamp(R(v / step) + zero, lo, hi) as an int32 tensor (clamped in float, so huge v is safe)."""
    r = round_half_away(tl.math.div_rn(v, step)) + zero
    return tl.minimum(tl.maximum(r, lo), hi).to(tl.int32)


@triton.jit
def act_quant_kernel(x_ptr, sxb, sxp, sxc, vs_ptr, vo_ptr, q_ptr, P, C, C_SPLIT,
                     step0, zero0, lo0, hi0, step1, zero1, lo1, hi1,
                     PRE: tl.constexpr, VEC_ON_ROWS: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    pid_p, pid_c, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rp = pid_p * BP + tl.arange(0, BP)
    rc = pid_c * BC + tl.arange(0, BC)
    mask = (rp[:, None] < P) & (rc[None, :] < C)
    x = tl.load(x_ptr + b * sxb + rp[:, None] * sxp + rc[None, :] * sxc, mask=mask, other=0.0).to(tl.float32)
    if PRE != 0:
        if VEC_ON_ROWS:
            s = tl.load(vs_ptr + rp, mask=rp < P, other=1.0)[:, None]
        else:
            s = tl.load(vs_ptr + rc, mask=rc < C, other=1.0)[None, :]
        if PRE == 1:  # LET: (x - o) / s, o along the channel axis
            o = tl.load(vo_ptr + rc, mask=rc < C, other=0.0)[None, :]
            x = tl.math.div_rn(x - o, s)
        elif PRE == 2:
            x = tl.math.div_rn(x, s)
        else:
            x = x * s
    first = rc[None, :] < C_SPLIT
    step = tl.where(first, step0, step1)
    q = quantize_operand(x, step, tl.where(first, zero0, zero1), tl.where(first, lo0, lo1), tl.where(first, hi0, hi1))
    tl.store(q_ptr + b * P * C + rp[:, None] * C + rc[None, :], q.to(q_ptr.dtype.element_ty), mask=mask)


def act_quant(x: torch.Tensor, ops: list[ActOperand], c_split: int | None = None, pre: str = "none",
              scale: torch.Tensor | None = None, offset: torch.Tensor | None = None, vec_on_rows: bool = False,
              block: tuple[int, int] | None = None) -> torch.Tensor:
    """x (B, P, C), any strides, float -> contiguous (B, P, C) operands of `ops[0].dtype`.

    ops: one ActOperand, or two split at channel `c_split` (channels < c_split use ops[0]).
    pre: "let" needs `scale` and `offset` (C,); "div"/"mul" need `scale`, (C,) or, with
    `vec_on_rows`, (P,). block: (BP, BC); None: configs.ACT_QUANT, the GPU launch."""
    if x.dim() != 3 or not x.is_floating_point():
        raise ValueError(f"act_quant takes a float (B, P, C) tensor, got {tuple(x.shape)} {x.dtype}")
    if pre not in PRE_OPS:
        raise ValueError(f"pre-op must be one of {PRE_OPS}, got {pre!r}")
    if len(ops) not in (1, 2) or len({o.dtype for o in ops}) != 1:
        raise ValueError("one or two activation operands of one dtype")
    bsz, p, c = x.shape
    if len(ops) == 2 and not (c_split is not None and 0 < c_split < c):
        raise ValueError(f"two grids need a channel split point in (0, {c}), got {c_split}")
    if pre != "none":
        want = p if vec_on_rows else c
        if scale is None or scale.shape != (want,) or (pre == "let" and (offset is None or offset.shape != (c,))):
            raise ValueError(f"pre-op {pre!r} needs a scale of shape ({want},)" + (" and an offset (C,)" if pre == "let" else ""))
        if pre == "let" and vec_on_rows:
            raise ValueError("the LET transform is per channel")
    check_device(x, scale, offset)
    o0, o1 = ops[0], ops[-1]
    out = torch.empty((bsz, p, c), dtype=TORCH_OF[o0.dtype], device=x.device)
    f32 = lambda t: x if t is None else t.to(device=x.device, dtype=torch.float32).contiguous()  # noqa: E731
    bp, bc = ACT_QUANT.block if block is None else block
    grid = (triton.cdiv(p, bp), triton.cdiv(c, bc), bsz)
    act_quant_kernel[grid](x, x.stride(0), x.stride(1), x.stride(2), f32(scale), f32(offset), out, p, c,
                           c if c_split is None else c_split,
                           float(o0.step), float(o0.quant_zero), float(o0.lo), float(o0.hi),
                           float(o1.step), float(o1.quant_zero), float(o1.lo), float(o1.hi),
                           PRE=PRE_OPS.index(pre), VEC_ON_ROWS=vec_on_rows, BP=bp, BC=bc, **ACT_QUANT.options())
    return out
