"""Quantized attention (spec section 4): one streaming kernel, memory linear in tokens.

    codes_q = Q8(q * s_qk)   codes_k = Q8(k / s_qk)   codes_v = Q8(v / s_vw[:, None])   act_quant
    S       = Dq Dk d^-0.5 * sum_d jq jk                          (int8 dot, int32)
    codes_p = Q8(softmax(S) * s_vw)                               (exact normalised P)
    out     = Dp Dv * sum_j jp jv                                 (int8 dot, int32)

`streaming_attention` runs the last three lines in one kernel, one program per (block of BM
query rows, batch*head), and never stores S or P: the scores of a key block are recomputed
(an int8 dot of the q tile held in registers with a k tile) in each of three passes over the
keys,
    pass 1  the row max of S,
    pass 2  the row sum of exp(S - max),
    pass 3  exp(S - max) / sum * s_vw quantized to P codes, and their int8 dot with the v tile,
so memory is the codes and the (Z, N, d) output, linear in tokens (the float32 scores alone
were 335 MB per layer at sd21's 64x64 latent tile: 5 heads x 4096^2). P is quantized after
normalisation, which needs the max and the sum before the first code (a flash-style kernel
quantizing unnormalised exponentials would compute a different function); the price is the
QK^T dot three times. Offsets are int64 in every kernel here, from the program ids on: a
(Z, N, N) index of the materialised path passes 2^31 at sd21's top level from a 128x128
latent at batch 2, and no size or stride of the codes can overflow the streaming kernel's.

The materialised path, `act_matmul` (QK^T) -> `softmax_quant` -> `act_matmul` (PV), stores the
(Z, N, N) scores and P codes; `KernelAttention(store_int=True)` runs it to hand the tests those
intermediates and their exact int32 parts. Both paths give the same output bit for bit, on any
target and with any blocks (tests/kernels/test_kernels_attention.py asserts it), because every step
either is exact or is the same float operations on the same values in the same order:
- the integer dots and the row/column sums of the zero-point algebra are exact, whatever the
  blocking, and both paths finish them with one float epilogue (`_matmul_out`);
- the row max is exact;
- the softmax denominator is summed in fixed point, not float32: a float sum's order depends on
  the blocks and, compiled, on the register layout that `tl.sum` reduces (a dot's accumulator
  layout in one kernel, a load's in the other), so it could differ by an ulp between the paths
  and flip P codes. Each exp(S - max) in [0, 1] is truncated to an int64 count of 2^-40
  (`_exp_fixed`), the counts add exactly in any order, and the total is rounded to float32 once
  (`_fixed_sum`): the correctly rounded sum to within N * 2^-40 (the sum is >= 1, its max term
  being exp(0));
- exp, the correctly rounded division (div_rn) and the quantization are elementwise
  (`_p_codes`).
Both matmuls take two activation operands with scalar zero points: the zero-point algebra
needs the row sums of A and the column sums of B, both counted in the kernels.
"""
from __future__ import annotations

import torch

from ._triton import check_device, tl, triton
from .act_quant import TORCH_OF, act_quant, quantize_operand
from .configs import ACT_MATMUL, ACT_QUANT, SOFTMAX_QUANT, STREAMING_ATTENTION
from .operands import ActOperand

# an int8 tl.dot needs a K block of at least 32 on NVIDIA targets: the QK^T dot's K is the head
# dim, held in one tile of this many columns at least (masked past d)
MIN_DOT_K = 32
# keys per row: the P @ V sum is exact in int32 while N * 255^2 < 2^31 (|p - zp| and |v - zv|
# are at most 255), so 2^15; the fixed-point softmax sum (2^-40 units in int64, each exp() <= 1)
# alone would take 2^23. sd21 attends over at most 4096 keys (a 64x64 latent tile).
MAX_KEYS = 1 << 15


@triton.jit
def _exact_product(acc, rs, cs, K, za, zb):
    """sum_k (a - za)(b - zb) from the dot of the operands and their row and column sums (int32)."""
    return acc - zb * rs[:, None] - za * cs[None, :] + K * za * zb


@triton.jit
def _matmul_out(exact, rs, cs, K, za, zb, res_a, res_b, unit):
    """Da Db scale * sum_k ja jb in float32. Grid values are j = (operand - zero) + residual on
    both sides; the residual terms are exact integers too but can exceed int32 (a residual is
    unbounded), so they are added in float. One function for every matmul here, so that the
    streaming and materialised paths round the same operations in the same order."""
    y = exact.to(tl.float32)
    y += res_b * (rs - K * za).to(tl.float32)[:, None]
    y += res_a * (cs - K * zb).to(tl.float32)[None, :]
    y += res_a * res_b * K
    return y * unit


@triton.jit
def _exp_fixed(x, m):
    """exp(x - m) (in [0, 1] for m the row max) as an int64 count of 2^-40 (truncated)."""
    return (tl.exp(x - m[:, None]) * 1099511627776.0).to(tl.int64)  # 2^40


@triton.jit
def _fixed_sum(total):
    """An int64 sum of `_exp_fixed` counts as float32: one rounding, then an exact * 2^-40."""
    return total.to(tl.float32) * 9.094947017729282e-13  # 2^-40


@triton.jit
def _p_codes(x, m, den, vw, step, zero, lo, hi):
    """Codes of exp(x - max) / sum * s_vw (normalised P, scaled per key), as int32."""
    p = tl.math.div_rn(tl.exp(x - m[:, None]), den[:, None]) * vw[None, :]
    return quantize_operand(p, step, zero, lo, hi)


# -- the streaming kernel ---------------------------------------------------------------------

@triton.jit
def _score_block(q, rs_q, k_base, s_kn, s_kd, rn, rd, N, D, zq, zk, res_q, res_k, unit,
                 K_U8: tl.constexpr):
    """Scores of the query tile against keys rn: act_matmul's QK^T values bit for bit (one int8
    dot over the whole head dim instead of BK steps: integer sums, the same). Keys past N: -inf."""
    nmask = rn < N
    dmask = rd < D
    k = tl.load(k_base + rd[:, None] * s_kd + rn[None, :] * s_kn, mask=dmask[:, None] & nmask[None, :],
                other=0).to(tl.int32)
    if K_U8:
        k = k - 128
    k = tl.where(dmask[:, None], k, 0).to(tl.int8)  # head-dim padding must be 0 after the shift
    acc = tl.dot(q, k, out_dtype=tl.int32)
    cs = tl.sum(k.to(tl.int32), axis=0)
    s = _matmul_out(_exact_product(acc, rs_q, cs, D, zq, zk), rs_q, cs, D, zq, zk, res_q, res_k, unit)
    return tl.where(nmask[None, :], s, float("-inf"))


@triton.jit
def streaming_attention_kernel(q_ptr, s_qz, s_qm, s_qd, k_ptr, s_kz, s_kn, s_kd, v_ptr, s_vz, s_vn, s_vd,
                               vw_ptr, out_ptr, M, N, D, zq, zk, zp, zv, res_q, res_k, res_p, res_v,
                               unit_qk, unit_pv, p_step, p_zero, p_lo, p_hi,
                               Q_U8: tl.constexpr, K_U8: tl.constexpr, P_U8: tl.constexpr, V_U8: tl.constexpr,
                               BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    # int64 from the program ids on: every offset below is int64
    z = tl.program_id(1).to(tl.int64)
    rm = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD).to(tl.int64)
    mmask = rm < M
    dmask = rd < D
    if Q_U8:  # uint8 operands move onto int8 for the dots; their zero points move with them
        zq = zq - 128
    if K_U8:
        zk = zk - 128
    if P_U8:
        zp = zp - 128
    if V_U8:
        zv = zv - 128
    q = tl.load(q_ptr + z * s_qz + rm[:, None] * s_qm + rd[None, :] * s_qd, mask=mmask[:, None] & dmask[None, :],
                other=0).to(tl.int32)
    if Q_U8:
        q = q - 128
    q = tl.where(dmask[None, :], q, 0).to(tl.int8)
    rs_q = tl.sum(q.to(tl.int32), axis=1)
    k_base = k_ptr + z * s_kz
    v_base = v_ptr + z * s_vz

    m = tl.full((BM,), float("-inf"), tl.float32)
    for n0 in range(0, N, BN):  # pass 1: row max
        rn = n0 + tl.arange(0, BN).to(tl.int64)
        s = _score_block(q, rs_q, k_base, s_kn, s_kd, rn, rd, N, D, zq, zk, res_q, res_k, unit_qk, K_U8)
        m = tl.maximum(m, tl.max(s, axis=1))
    total = tl.zeros((BM,), tl.int64)
    for n0 in range(0, N, BN):  # pass 2: row sum of exp(s - max), exact in fixed point
        rn = n0 + tl.arange(0, BN).to(tl.int64)
        s = _score_block(q, rs_q, k_base, s_kn, s_kd, rn, rd, N, D, zq, zk, res_q, res_k, unit_qk, K_U8)
        total += tl.sum(_exp_fixed(s, m), axis=1)
    den = _fixed_sum(total)  # >= 1 on every row, padded ones included: no division by 0
    acc = tl.zeros((BM, BD), tl.int32)
    rs_p = tl.zeros((BM,), tl.int32)
    cs_v = tl.zeros((BD,), tl.int32)
    for n0 in range(0, N, BN):  # pass 3: P codes of the block, then the P @ V dot
        rn = n0 + tl.arange(0, BN).to(tl.int64)
        nmask = rn < N
        s = _score_block(q, rs_q, k_base, s_kn, s_kd, rn, rd, N, D, zq, zk, res_q, res_k, unit_qk, K_U8)
        vw = tl.load(vw_ptr + rn, mask=nmask, other=0.0)
        p = _p_codes(s, m, den, vw, p_step, p_zero, p_lo, p_hi)
        if P_U8:
            p = p - 128
        p = tl.where(nmask[None, :], p, 0).to(tl.int8)  # keys past N: no term (quantize(0) is no 0 here)
        v = tl.load(v_base + rn[:, None] * s_vn + rd[None, :] * s_vd, mask=nmask[:, None] & dmask[None, :],
                    other=0).to(tl.int32)
        if V_U8:
            v = v - 128
        v = tl.where(nmask[:, None], v, 0).to(tl.int8)
        acc += tl.dot(p, v, out_dtype=tl.int32)
        rs_p += tl.sum(p.to(tl.int32), axis=1)
        cs_v += tl.sum(v.to(tl.int32), axis=0)
    y = _matmul_out(_exact_product(acc, rs_p, cs_v, N, zp, zv), rs_p, cs_v, N, zp, zv, res_p, res_v, unit_pv)
    tl.store(out_ptr + z * M * D + rm[:, None] * D + rd[None, :], y, mask=mmask[:, None] & dmask[None, :])


def _check_operands(*pairs):
    for t, op in pairs:
        if t.dtype != TORCH_OF[op.dtype]:
            raise ValueError(f"operand dtype {t.dtype} does not match its encoding {op.dtype}")


def streaming_attention(cq: torch.Tensor, qop: ActOperand, ck: torch.Tensor, kop: ActOperand, cv: torch.Tensor,
                        vop: ActOperand, pop: ActOperand, s_vw: torch.Tensor, scale: float,
                        block: tuple[int, int] | None = None) -> torch.Tensor:
    """Dp Dv * sum_j Q(softmax(Dq Dk scale * sum_d jq jk) * s_vw) jv for the codes of q (Z, M, d),
    k and v (Z, N, d) (any strides), with P quantized to `pop` -> float32 (Z, M, d), contiguous.
    Allocates the output only (and s_vw as float32 if it is not). block: (BM, BN) query rows x keys;
    None: configs.STREAMING_ATTENTION, the GPU launch."""
    if cq.dim() != 3 or ck.shape != cv.shape or ck.dim() != 3 or cq.shape[0] != ck.shape[0] \
            or cq.shape[2] != ck.shape[2]:
        raise ValueError(f"codes must be q (Z, M, d), k and v (Z, N, d), got {tuple(cq.shape)}, {tuple(ck.shape)}, "
                         f"{tuple(cv.shape)}")
    z, m, d = cq.shape
    n = ck.shape[1]
    if s_vw.shape != (n,):
        raise ValueError(f"s_vw must have one entry per key ({n}), got {tuple(s_vw.shape)}")
    if not 0 < n <= MAX_KEYS:
        raise ValueError(f"attention takes 1 to {MAX_KEYS} keys (exact int32 sums), got {n}")
    _check_operands((cq, qop), (ck, kop), (cv, vop))
    check_device(cq, ck, cv, s_vw)
    out = torch.empty((z, m, d), dtype=torch.float32, device=cq.device)
    bm, bn = STREAMING_ATTENTION.block if block is None else block
    # the whole head dim in one tile: q stays in registers across the three passes
    bd = max(MIN_DOT_K, triton.next_power_of_2(d))
    # the same double products as act_matmul's `unit`, so the same float32 after the one rounding
    unit_qk = float(qop.step) * float(kop.step) * scale
    unit_pv = float(pop.step) * float(vop.step) * 1.0
    streaming_attention_kernel[(triton.cdiv(m, bm), z)](
        cq, cq.stride(0), cq.stride(1), cq.stride(2), ck, ck.stride(0), ck.stride(1), ck.stride(2),
        cv, cv.stride(0), cv.stride(1), cv.stride(2), s_vw.float().contiguous(), out, m, n, d,
        qop.kernel_zero, kop.kernel_zero, pop.kernel_zero, vop.kernel_zero,
        float(qop.residual), float(kop.residual), float(pop.residual), float(vop.residual), unit_qk, unit_pv,
        float(pop.step), float(pop.quant_zero), float(pop.lo), float(pop.hi),
        Q_U8=qop.dtype == "u8", K_U8=kop.dtype == "u8", P_U8=pop.dtype == "u8", V_U8=vop.dtype == "u8",
        BM=bm, BN=bn, BD=bd, **STREAMING_ATTENTION.options())
    return out


# -- the materialised path (debug: the tests read its intermediates) ---------------------------

@triton.jit
def act_matmul_kernel(a_ptr, s_az, s_am, s_ak, b_ptr, s_bz, s_bk, s_bn, out_ptr, acc_ptr,
                      M, N, K, za, zb, res_a, res_b, unit,
                      A_U8: tl.constexpr, B_U8: tl.constexpr, STORE_INT: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    z = tl.program_id(2).to(tl.int64)  # int64 offsets: Z * M * N passes 2^31 for attention scores
    rm = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rn = tl.program_id(1).to(tl.int64) * BN + tl.arange(0, BN)
    if A_U8:  # uint8 operands move onto int8 for the dot; their zero points move with them
        za = za - 128
    if B_U8:
        zb = zb - 128
    acc = tl.zeros((BM, BN), tl.int32)
    rs = tl.zeros((BM,), tl.int32)
    cs = tl.zeros((BN,), tl.int32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK).to(tl.int64)
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
    exact = _exact_product(acc, rs, cs, K, za, zb)  # sum_k (a - za)(b - zb)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if STORE_INT:
        tl.store(acc_ptr + z * M * N + rm[:, None] * N + rn[None, :], exact, mask=mask)
    y = _matmul_out(exact, rs, cs, K, za, zb, res_a, res_b, unit)
    tl.store(out_ptr + z * M * N + rm[:, None] * N + rn[None, :], y, mask=mask)


def act_matmul(a: torch.Tensor, aop: ActOperand, b: torch.Tensor, bop: ActOperand, scale: float = 1.0,
               store_int: bool = False, block: tuple[int, int, int] | None = None):
    """Da Db scale * sum_k ja jb for operands a (Z, M, K) and b (Z, K, N) (any strides) ->
    float32 (Z, M, N); with `store_int` also the int32 sum_k (a - za)(b - zb).
    block: (BM, BN, BK); None: configs.ACT_MATMUL, the GPU launch."""
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"act_matmul needs (Z, M, K) @ (Z, K, N), got {tuple(a.shape)} @ {tuple(b.shape)}")
    _check_operands((a, aop), (b, bop))
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
    rr = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    rmask = rr < R
    row = s_ptr + rr[:, None] * N
    m = tl.full((BR,), float("-inf"), tl.float32)
    for c0 in range(0, N, BC):  # pass 1: row max
        rc = c0 + tl.arange(0, BC).to(tl.int64)
        x = tl.load(row + rc[None, :], mask=rmask[:, None] & (rc[None, :] < N), other=float("-inf"))
        m = tl.maximum(m, tl.max(x, axis=1))
    m = tl.where(rmask, m, 0.0)  # rows past the end: keep exp() finite
    total = tl.zeros((BR,), tl.int64)
    for c0 in range(0, N, BC):  # pass 2: row sum of exp(s - max), exact in fixed point
        rc = c0 + tl.arange(0, BC).to(tl.int64)
        x = tl.load(row + rc[None, :], mask=rmask[:, None] & (rc[None, :] < N), other=float("-inf"))
        total += tl.sum(_exp_fixed(x, m), axis=1)
    den = tl.where(rmask, _fixed_sum(total), 1.0)
    for c0 in range(0, N, BC):  # pass 3: normalised P, times s_vw per key, quantized
        rc = c0 + tl.arange(0, BC).to(tl.int64)
        mask = rmask[:, None] & (rc[None, :] < N)
        x = tl.load(row + rc[None, :], mask=mask, other=float("-inf"))
        p = _p_codes(x, m, den, tl.load(vw_ptr + rc, mask=rc < N, other=0.0), step, zero, lo, hi)
        tl.store(q_ptr + rr[:, None] * N + rc[None, :], p.to(q_ptr.dtype.element_ty), mask=mask)


def softmax_quant(scores: torch.Tensor, s_vw: torch.Tensor, pop: ActOperand,
                  block: tuple[int, int] | None = None) -> torch.Tensor:
    """Operands of Q(softmax(scores, -1) * s_vw) for float32 scores (..., N), s_vw (N,).
    block: (BR, BC); None: configs.SOFTMAX_QUANT, the GPU launch."""
    if scores.dtype != torch.float32 or s_vw.shape != scores.shape[-1:]:
        raise ValueError(f"softmax_quant needs float32 scores (..., N) and s_vw (N,), got {tuple(scores.shape)}, "
                         f"{tuple(s_vw.shape)}")
    if not 0 < scores.shape[-1] <= MAX_KEYS:
        raise ValueError(f"attention takes 1 to {MAX_KEYS} keys (exact int32 sums), got {scores.shape[-1]}")
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
    deploy-IR attention recipe.)

    A call quantizes q, k, v (act_quant) and runs `streaming_attention` (block: its (BM, BN));
    with `store_int` it runs the materialised path instead (matmul_block, softmax_block: its
    act_matmul and softmax_quant tiles) and returns the same output with its intermediates."""

    def __init__(self, q: ActOperand, k: ActOperand, v: ActOperand, p: ActOperand, s_qk: torch.Tensor,
                 s_vw: torch.Tensor, scale: float, name: str = "attention",
                 block: tuple[int, int] = STREAMING_ATTENTION.block, act_block: tuple[int, int] = ACT_QUANT.block,
                 matmul_block: tuple[int, int, int] = ACT_MATMUL.block,
                 softmax_block: tuple[int, int] = SOFTMAX_QUANT.block):
        self.name, self.scale = name, scale
        self.q, self.k, self.v, self.p = q, k, v, p
        self.s_qk, self.s_vw = s_qk, s_vw
        self.block, self.act_block = block, act_block
        self.matmul_block, self.softmax_block = matmul_block, softmax_block

    def to(self, device) -> "KernelAttention":
        """Move the LET scales to `device` once (a call then copies nothing to the device)."""
        self.s_qk, self.s_vw = self.s_qk.to(device), self.s_vw.to(device)
        return self

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, store_int: bool = False):
        """float32 (B*heads, N_q, d); with `store_int` also a dict of the materialised path's
        intermediates: the codes q, k, v, p, the float scores, and the int32 parts qk_int, pv_int."""
        if q.dim() != 3 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
            raise ValueError(f"q, k, v must be (B*heads, N, d), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        if v.shape[1] != self.s_vw.numel():
            raise ValueError(f"{self.name}: calibrated for {self.s_vw.numel()} key tokens, got {v.shape[1]}")
        s_qk, s_vw = self.s_qk.to(q.device), self.s_vw.to(q.device)
        cq = act_quant(q.float(), [self.q], pre="mul", scale=s_qk, block=self.act_block)
        ck = act_quant(k.float(), [self.k], pre="div", scale=s_qk, block=self.act_block)
        cv = act_quant(v.float(), [self.v], pre="div", scale=s_vw, vec_on_rows=True, block=self.act_block)
        if not store_int:
            return streaming_attention(cq, self.q, ck, self.k, cv, self.v, self.p, s_vw, self.scale, self.block)
        scores, qk_int = act_matmul(cq, self.q, ck.transpose(1, 2), self.k, self.scale, True, self.matmul_block)
        cp = softmax_quant(scores, s_vw, self.p, self.softmax_block)
        out, pv_int = act_matmul(cp, self.p, cv, self.v, 1.0, True, self.matmul_block)
        return out, dict(q=cq, k=ck, v=cv, p=cp, scores=scores, qk_int=qk_int, pv_int=pv_int)
