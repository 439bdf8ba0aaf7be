"""Quantized attention (spec section 4) as separate kernels:

    codes_q = Q8(q * s_qk)   codes_k = Q8(k / s_qk)               act_quant (pre-op mul / div)
    S       = Dq Dk d^-0.5 * sum_d jq jk                          act_matmul (int8 dot, int32)
    codes_p = Q8(softmax(S) * s_vw)                               softmax_quant (exact normalised P)
    codes_v = Q8(v / s_vw[:, None])                               act_quant (per-row pre-op)
    out     = Dp Dv * sum_j jp jv                                 act_matmul

P is quantized after normalisation, so `softmax_quant` reads each row three times: its max,
then the sum of exp(s - max), then the normalised, scaled and quantized values. (A fused
flash-style kernel quantizing unnormalised exponentials would compute a different function.)
Both matmuls take two activation operands with scalar zero points: the zero-point algebra
needs the row sums of A and the column sums of B, both counted in the kernel.
"""
from __future__ import annotations

import torch

from ._triton import check_device, tl, triton
from .act_quant import TORCH_OF, act_quant, quantize_operand
from .configs import ACT_MATMUL, ACT_QUANT, SOFTMAX_QUANT
from .operands import ActOperand


@triton.jit
def act_matmul_kernel(a_ptr, s_az, s_am, s_ak, b_ptr, s_bz, s_bk, s_bn, out_ptr, acc_ptr,
                      M, N, K, za, zb, res_a, res_b, unit,
                      A_U8: tl.constexpr, B_U8: tl.constexpr, STORE_INT: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n, z = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    if A_U8:  # uint8 operands move onto int8 for the dot; their zero points move with them
        za = za - 128
    if B_U8:
        zb = zb - 128
    acc = tl.zeros((BM, BN), tl.int32)
    rs = tl.zeros((BM,), tl.int32)
    cs = tl.zeros((BN,), tl.int32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        kmask = rk < K
        a = tl.load(a_ptr + z * s_az + rm[:, None] * s_am + rk[None, :] * s_ak,
                    mask=(rm[:, None] < M) & kmask[None, :], other=0).to(tl.int32)
        b = tl.load(b_ptr + z * s_bz + rk[:, None] * s_bk + rn[None, :] * s_bn,
                    mask=kmask[:, None] & (rn[None, :] < N), other=0).to(tl.int32)
        if A_U8:
            a = a - 128
        if B_U8:
            b = b - 128
        a = tl.where(kmask[None, :], a, 0).to(tl.int8)
        b = tl.where(kmask[:, None], b, 0).to(tl.int8)
        acc += tl.dot(a, b, out_dtype=tl.int32)
        rs += tl.sum(a.to(tl.int32), axis=1)
        cs += tl.sum(b.to(tl.int32), axis=0)
    exact = acc - zb * rs[:, None] - za * cs[None, :] + K * za * zb  # sum_k (a - za)(b - zb)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if STORE_INT:
        tl.store(acc_ptr + z * M * N + rm[:, None] * N + rn[None, :], exact, mask=mask)
    # grid values j = (operand - zero) + residual on both sides; the residual terms are exact
    # integers too but can exceed int32 (a residual is unbounded), so they are added in float
    y = exact.to(tl.float32)
    y += res_b * (rs - K * za).to(tl.float32)[:, None]
    y += res_a * (cs - K * zb).to(tl.float32)[None, :]
    y += res_a * res_b * K
    tl.store(out_ptr + z * M * N + rm[:, None] * N + rn[None, :], y * unit, mask=mask)


def act_matmul(a: torch.Tensor, aop: ActOperand, b: torch.Tensor, bop: ActOperand, scale: float = 1.0,
               store_int: bool = False, block: tuple[int, int, int] | None = None):
    """Da Db scale * sum_k ja jb for operands a (Z, M, K) and b (Z, K, N) (any strides) ->
    float32 (Z, M, N); with `store_int` also the int32 sum_k (a - za)(b - zb).
    block: (BM, BN, BK); None: configs.ACT_MATMUL, the GPU launch."""
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"act_matmul needs (Z, M, K) @ (Z, K, N), got {tuple(a.shape)} @ {tuple(b.shape)}")
    for t, op in ((a, aop), (b, bop)):
        if t.dtype != TORCH_OF[op.dtype]:
            raise ValueError(f"operand dtype {t.dtype} does not match its encoding {op.dtype}")
    check_device(a, b)
    z, m, k = a.shape
    n = b.shape[2]
    out = torch.empty((z, m, n), dtype=torch.float32, device=a.device)
    acc = torch.empty((z, m, n) if store_int else (1,), dtype=torch.int32, device=a.device)
    unit = float(aop.step) * float(bop.step) * scale  # one rounding, as the IR reference's float64 product
    bm, bn, bk = ACT_MATMUL.block if block is None else block
    act_matmul_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn), z)](
        a, a.stride(0), a.stride(1), a.stride(2), b, b.stride(0), b.stride(1), b.stride(2), out, acc,
        m, n, k, aop.kernel_zero, bop.kernel_zero, float(aop.residual), float(bop.residual), unit,
        A_U8=aop.dtype == "u8", B_U8=bop.dtype == "u8", STORE_INT=store_int, BM=bm, BN=bn, BK=bk,
        **ACT_MATMUL.options())
    return (out, acc) if store_int else out


@triton.jit
def softmax_quant_kernel(s_ptr, vw_ptr, q_ptr, R, N, step, zero, lo, hi, BR: tl.constexpr, BC: tl.constexpr):
    rr = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rr < R
    row = s_ptr + rr[:, None] * N
    m = tl.full((BR,), float("-inf"), tl.float32)
    for c0 in range(0, N, BC):  # pass 1: row max
        rc = c0 + tl.arange(0, BC)
        x = tl.load(row + rc[None, :], mask=rmask[:, None] & (rc[None, :] < N), other=float("-inf"))
        m = tl.maximum(m, tl.max(x, axis=1))
    m = tl.where(rmask, m, 0.0)  # rows past the end: keep exp() finite
    den = tl.zeros((BR,), tl.float32)
    for c0 in range(0, N, BC):  # pass 2: row sum of exp(s - max)
        rc = c0 + tl.arange(0, BC)
        x = tl.load(row + rc[None, :], mask=rmask[:, None] & (rc[None, :] < N), other=float("-inf"))
        den += tl.sum(tl.exp(x - m[:, None]), axis=1)
    den = tl.where(rmask, den, 1.0)
    for c0 in range(0, N, BC):  # pass 3: normalised P, times s_vw per key, quantized
        rc = c0 + tl.arange(0, BC)
        mask = rmask[:, None] & (rc[None, :] < N)
        x = tl.load(row + rc[None, :], mask=mask, other=float("-inf"))
        p = tl.math.div_rn(tl.exp(x - m[:, None]), den[:, None])
        p = p * tl.load(vw_ptr + rc, mask=rc < N, other=0.0)[None, :]
        tl.store(q_ptr + rr[:, None] * N + rc[None, :], quantize_operand(p, step, zero, lo, hi).to(q_ptr.dtype.element_ty),
                 mask=mask)


def softmax_quant(scores: torch.Tensor, s_vw: torch.Tensor, pop: ActOperand,
                  block: tuple[int, int] | None = None) -> torch.Tensor:
    """Operands of Q(softmax(scores, -1) * s_vw) for float32 scores (..., N), s_vw (N,).
    block: (BR, BC); None: configs.SOFTMAX_QUANT, the GPU launch."""
    if scores.dtype != torch.float32 or s_vw.shape != scores.shape[-1:]:
        raise ValueError(f"softmax_quant needs float32 scores (..., N) and s_vw (N,), got {tuple(scores.shape)}, "
                         f"{tuple(s_vw.shape)}")
    check_device(scores, s_vw)
    s2 = scores.reshape(-1, scores.shape[-1]).contiguous()
    r, n = s2.shape
    out = torch.empty((r, n), dtype=TORCH_OF[pop.dtype], device=scores.device)
    br, bc = SOFTMAX_QUANT.block if block is None else block
    softmax_quant_kernel[(triton.cdiv(r, br),)](s2, s_vw.float().contiguous(), out, r, n, float(pop.step),
                                                float(pop.quant_zero), float(pop.lo), float(pop.hi), BR=br, BC=bc,
                                                **SOFTMAX_QUANT.options())
    return out.view(scores.shape)


class KernelAttention:
    """One quantized attention core run by the kernels above. q, k, v: (B*heads, N, d).

    q, k, v, p: the operand encodings of the four grids (q and P are the A sides of the two
    matmuls, k and v the B sides); s_qk (d,) and s_vw (N_keys,): the scales moved between q and
    k and between P and v; scale: the scores' d^-0.5. (The triton target builds one from a
    deploy-IR attention recipe.)"""

    def __init__(self, q: ActOperand, k: ActOperand, v: ActOperand, p: ActOperand, s_qk: torch.Tensor,
                 s_vw: torch.Tensor, scale: float, name: str = "attention",
                 block: tuple[int, int, int] = ACT_MATMUL.block, act_block: tuple[int, int] = ACT_QUANT.block,
                 softmax_block: tuple[int, int] = SOFTMAX_QUANT.block):
        self.name, self.scale = name, scale
        self.q, self.k, self.v, self.p = q, k, v, p
        self.s_qk, self.s_vw = s_qk, s_vw
        self.block, self.act_block, self.softmax_block = block, act_block, softmax_block

    def to(self, device) -> "KernelAttention":
        """Move the LET scales to `device` once (a call then copies nothing to the device)."""
        self.s_qk, self.s_vw = self.s_qk.to(device), self.s_vw.to(device)
        return self

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, store_int: bool = False):
        if q.dim() != 3 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
            raise ValueError(f"q, k, v must be (B*heads, N, d), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        if v.shape[1] != self.s_vw.numel():
            raise ValueError(f"{self.name}: calibrated for {self.s_vw.numel()} key tokens, got {v.shape[1]}")
        s_qk, s_vw = self.s_qk.to(q.device), self.s_vw.to(q.device)
        cq = act_quant(q.float(), [self.q], pre="mul", scale=s_qk, block=self.act_block)
        ck = act_quant(k.float(), [self.k], pre="div", scale=s_qk, block=self.act_block)
        scores = act_matmul(cq, self.q, ck.transpose(1, 2), self.k, self.scale, store_int, self.block)
        cp = softmax_quant(scores[0] if store_int else scores, s_vw, self.p, self.softmax_block)
        cv = act_quant(v.float(), [self.v], pre="div", scale=s_vw, vec_on_rows=True, block=self.act_block)
        out = act_matmul(cp, self.p, cv, self.v, 1.0, store_int, self.block)
        if not store_int:
            return out
        return out[0], dict(q=cq, k=ck, v=cv, p=cp, scores=scores[0], qk_int=scores[1], pv_int=out[1])
