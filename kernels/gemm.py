"""INT8 implicit GEMM: linear layers and 2-D convs (1x1, 3x3 stride 1 or 2) in one kernel.

    y[b, m, n] = sum_g  Da_g Dw_gn * sum_k (a_k - za_g)(b_kn - zb_gn)        int32 dot + zero points
               + sum_g  B'_gn Da_g Dw_gn * sum_k (a_k - za_g)                one-signed weight columns
               + bias[n] + border[class(oh), class(ow), n]                   LET / activation residual

A is the activation operand (uint8 or int8, as `operands.ActOperand` encodes it), read
channels-last as (B, H*W, C); a linear layer is the 1x1 case with H = 1, W = M. K is ordered
(tap, channel) and never materialised: each tap loads the input pixels it sees, and taps that
fall in the padding take the activation zero point, so (a - za) = 0 there, exactly the zero
grid value the fake-quant pads with. Split layers have two K-groups (channel halves) with their
own activation and weight scales: one int32 accumulator per group, summed in float.

Weights arrive as the deploy IR's packed containers (N, taps, row_bytes): one byte per 8-bit
code, or 4 6-bit codes in 3 bytes, unpacked in the load path (each 3-byte word's bytes loaded
once, its 4 codes extracted by shifts and interleaved into K order in registers). Operand
value = container code + W_OFFSET (= -2^(b-1), the integer algebra's signed encoding), so both
widths give int8 operands for the tensor-core dot.

Zero-point algebra (spec section 6) instead of subtracting before the dot, because (a - za)
does not fit int8:  sum (a-za)(b-zb) = sum ab - zb sum a - za sum b + K za zb,  with sum a
counted in the kernel (row sums, padded taps included) and sum b precomputed per column.
All four terms stay far inside int32 for K <= 11520 (sd21's largest, 1280 x 3 x 3).

A padded conv's border map (the LET correction and activation residuals summed over the valid
taps) is not stored per output pixel: its value depends only on how many taps of a window fall
in the padding at each side, so the epilogue reads a (row class, column class, channel) table,
the class of a row being (taps cut at the top) * (PAD + 1) + (taps cut at the bottom), the
arithmetic of export/ir/plan.py's `border_class`. Same floats, same order of additions as a
dense map: the output is bit-identical, the table the same for every input size.
"""
from __future__ import annotations

import torch

from . import tuning
from ._triton import check_device, interpreting, tl, triton
from .configs import Launch, qgemm_launches
from .operands import ActOperand, Epilogue, PackedWeights

TILE = ("BM", "BN", "BK")  # the kernel's block constexprs, in the order of a Launch's block


@triton.jit
def load_weight_tile(w_ptr, k0, cg, rn, nmask, stride_wn,
                     W_BITS: tl.constexpr, W_OFFSET: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    """(BK, BN) int8 operand tile of channels [k0, k0 + BK) of a packed weight row (w_ptr: the
    row of one tap; cg: its channels, the rest of the tile is 0)."""
    rk = k0 + tl.arange(0, BK)
    mask = (rk < cg)[:, None] & nmask[None, :]
    if W_BITS == 8:
        u = tl.load(w_ptr + rn[None, :] * stride_wn + rk[:, None], mask=mask, other=0).to(tl.int32)
    else:
        # whole 3-byte words (BK is a power of two >= 16, k0 a multiple of it, and pack_codes
        # starts every row on a word): each byte is loaded once, 3 loads per 4 codes instead of
        # 2 per code, and the 4 codes of word w, bits 6i..6i+5 of (b0 | b1 << 8 | b2 << 16),
        # come out by shifts
        tl.static_assert(BK % 4 == 0)
        rw = k0 // 4 + tl.arange(0, BK // 4)
        wmask = nmask[:, None] & (rw * 4 < cg)[None, :]
        word = w_ptr + rn[:, None] * stride_wn + rw[None, :] * 3  # (BN, BK/4)
        b0 = tl.load(word, mask=wmask, other=0).to(tl.int32)
        b1 = tl.load(word + 1, mask=wmask, other=0).to(tl.int32)
        b2 = tl.load(word + 2, mask=wmask, other=0).to(tl.int32)
        c0 = b0 & 63
        c1 = (b0 >> 6) | ((b1 & 15) << 2)
        c2 = (b1 >> 4) | ((b2 & 3) << 4)
        c3 = b2 >> 2
        # interleave in registers: join(join(c0, c2), join(c1, c3))[n, w, s, t] = c_(2s+t), so the
        # row-major reshape puts code i of word w at channel 4w + i, K's order on both operands
        u = tl.trans(tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), (BN, BK)))
    return tl.where(mask, u + W_OFFSET, 0).to(tl.int8)


@triton.jit
def qgemm_kernel(a_ptr, s_ab, s_ap, s_ac,
                 w_ptr, s_wg, s_wn, s_wt,
                 za_ptr, zb_ptr, cs_ptr, scale_ptr, res_ptr, bias_ptr, border_ptr,
                 out_ptr, s_ob, s_op, s_on,
                 acc_ptr, rs_ptr,
                 N, H, W, HO, WO, C, C_SPLIT,
                 KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
                 G: tl.constexpr, W_BITS: tl.constexpr, W_OFFSET: tl.constexpr, A_U8: tl.constexpr,
                 HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_BORDER: tl.constexpr, STORE_INT: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    P_OUT = HO * WO
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < P_OUT
    nmask = rn < N
    oh = rm // WO
    ow = rm % WO
    y = tl.zeros((BM, BN), tl.float32)
    for g in tl.static_range(G):
        if g == 0:
            c_lo = 0
            cg = C_SPLIT
        else:
            c_lo = C_SPLIT
            cg = C - C_SPLIT
        za = tl.load(za_ptr + g)
        if A_U8:
            za = za - 128  # the load path moves uint8 operands onto int8; the zero point moves with them
        acc = tl.zeros((BM, BN), tl.int32)
        rs = tl.zeros((BM,), tl.int32)
        # one flat loop over (tap, channel block), not KH*KW unrolled channel loops: one
        # software-pipelined loop instead of nine, so a split 3x3 conv compiles in ~3 s per
        # target instead of ~20 s and no longer spills registers on sm_80 (see configs.py)
        nkb = tl.cdiv(cg, BK)
        for kk in range(0, KH * KW * nkb):
            t = kk // nkb
            k0 = (kk - t * nkb) * BK
            rk = k0 + tl.arange(0, BK)
            ih = oh * STRIDE - PAD + t // KW
            iw = ow * STRIDE - PAD + t % KW
            inside = mmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a_row = a_ptr + b * s_ab + (ih * W + iw) * s_ap
            w_row = w_ptr + g * s_wg + t * s_wt
            kmask = rk < cg
            a = tl.load(a_row[:, None] + (c_lo + rk)[None, :] * s_ac, mask=inside[:, None] & kmask[None, :], other=0)
            a = a.to(tl.int32)
            if A_U8:
                a = a - 128
            a = tl.where(inside[:, None], a, za)  # padded taps: (a - za) = 0
            a = tl.where(kmask[None, :], a, 0).to(tl.int8)  # K tail: no contribution at all
            bt = load_weight_tile(w_row, k0, cg, rn, nmask, s_wn, W_BITS, W_OFFSET, BK, BN)
            acc += tl.dot(a, bt, out_dtype=tl.int32)
            rs += tl.sum(a.to(tl.int32), axis=1)
        k_len = cg * KH * KW
        zb = tl.load(zb_ptr + g * N + rn, mask=nmask, other=0)
        cs = tl.load(cs_ptr + g * N + rn, mask=nmask, other=0)
        exact = acc - zb[None, :] * rs[:, None] - za * cs[None, :] + (k_len * za) * zb[None, :]
        row_sum = rs - k_len * za  # sum_k (a - za), padded taps contributing 0
        sc = tl.load(scale_ptr + g * N + rn, mask=nmask, other=0.0)
        y += exact.to(tl.float32) * sc[None, :]
        if HAS_RES:
            rc = tl.load(res_ptr + g * N + rn, mask=nmask, other=0.0)
            y += row_sum.to(tl.float32)[:, None] * rc[None, :]
        if STORE_INT:  # the exact integer parts, for tests against the int64 reference
            base = (g * tl.num_programs(2) + b) * P_OUT
            tl.store(acc_ptr + (base + rm[:, None]) * N + rn[None, :], exact, mask=mmask[:, None] & nmask[None, :])
            if pid_n == 0:
                tl.store(rs_ptr + base + rm, row_sum, mask=mmask)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=nmask, other=0.0)[None, :]
    if HAS_BORDER:
        # (taps in the leading padding) * (PAD + 1) + (taps in the trailing padding), per axis
        r0 = oh * STRIDE - PAD
        c0 = ow * STRIDE - PAD
        rcls = tl.maximum(-r0, 0) * (PAD + 1) + tl.maximum(r0 + KH - H, 0)
        ccls = tl.maximum(-c0, 0) * (PAD + 1) + tl.maximum(c0 + KW - W, 0)
        cls = rcls * ((PAD + 1) * (PAD + 1)) + ccls  # table rows: (row class, column class)
        y += tl.load(border_ptr + cls[:, None] * N + rn[None, :], mask=mmask[:, None] & nmask[None, :], other=0.0)
    tl.store(out_ptr + b * s_ob + rm[:, None] * s_op + rn[None, :] * s_on, y.to(out_ptr.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


def qgemm(a: torch.Tensor, a_ops: list[ActOperand], w: PackedWeights, ep: Epilogue,
          spatial: tuple[int, int] | None = None, kernel: tuple[int, int] = (1, 1), stride: int = 1, padding: int = 0,
          out_dtype: torch.dtype = torch.float32, store_int: bool = False,
          block: tuple[int, int, int] | None = None, out: torch.Tensor | None = None, launch: Launch | None = None):
    """Launch the integer GEMM / implicit-GEMM conv.

    a: (B, P, C) operands (uint8 or int8, channel stride 1 preferred), P = H*W for a conv
    (`spatial` = (H, W)), or the rows of a linear layer. Returns y (B, P_out, N) of
    `out_dtype`, channels-last; with `store_int` also the exact int32 parts: (G, B, P_out, N)
    sum_k (a-za)(b-zb) and (G, B, P_out) sum_k (a-za). `out`, when given, is the (B, P_out, N)
    tensor (any strides) the kernel writes y into: an NCHW conv output viewed as
    `.view(B, N, P_out).transpose(1, 2)` gets y in NCHW order without a copy.

    The launch: `launch` as given (aot.py compiles each listed one so); else `block` (BM, BN, BK)
    with the warps and stages of the shape class's fixed launch (configs.GEMM_CLASSES); else, on
    a GPU, the class's candidate tuned for this GPU (tuning.py: autotuned once, kept on disk),
    and in Triton's interpreter (or with PASSION_DEPLOY_AUTOTUNE=0) the class's fixed launch."""
    if a.dim() != 3 or a.dtype not in (torch.uint8, torch.int8):
        raise ValueError(f"activation operands must be (B, P, C) uint8/int8, got {tuple(a.shape)} {a.dtype}")
    dt = "u8" if a.dtype == torch.uint8 else "s8"
    if len(a_ops) != w.groups or any(o.dtype != dt for o in a_ops):
        raise ValueError(f"need one {dt} activation operand per K-group ({w.groups})")
    if out_dtype not in (torch.float32, torch.float16):
        raise ValueError("output is float32 or float16")
    if block is not None and launch is not None:
        raise ValueError("give a block or a whole launch, not both")
    bsz, p, c = a.shape
    if sum(w.channels) != c:
        raise ValueError(f"weights cover {sum(w.channels)} input channels, activations have {c}")
    kh, kw = kernel
    if kh * kw != w.taps:
        raise ValueError(f"kernel {kernel} has {kh * kw} taps, weights have {w.taps}")
    h, wd = spatial if spatial is not None else (1, p)
    if h * wd != p:
        raise ValueError(f"spatial size {spatial} does not match {p} positions")
    if spatial is None and (w.taps != 1 or stride != 1 or padding != 0):
        raise ValueError("a linear GEMM has one tap, stride 1 and no padding")
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    n = w.out_channels
    classes = (padding + 1) ** 2  # per axis: export/ir/plan.py's border_classes
    if ep.border is not None and ep.border.shape != (classes * classes, n):
        raise ValueError(f"epilogue border table is {tuple(ep.border.shape)}, padding {padding} and {n} output "
                         f"channels need ({classes * classes}, {n})")
    check_device(a, w.data)
    dev = a.device
    ep = ep.to(dev)
    w = w.to(dev)
    if out is None:
        out = torch.empty((bsz, ho * wo, n), dtype=out_dtype, device=dev)
    elif out.shape != (bsz, ho * wo, n) or out.dtype != out_dtype or out.device != dev:
        raise ValueError(f"out must be a ({bsz}, {ho * wo}, {n}) {out_dtype} tensor on {dev}, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    g = w.groups
    acc = torch.empty((g, bsz, ho * wo, n) if store_int else (1,), dtype=torch.int32, device=dev)
    rs = torch.empty((g, bsz, ho * wo) if store_int else (1,), dtype=torch.int32, device=dev)
    dummy = ep.scale
    args = (a, a.stride(0), a.stride(1), a.stride(2),
            w.data, w.data.stride(0), w.data.stride(1), w.data.stride(2),
            ep.act_zero, w.zero, w.colsum, ep.scale,
            dummy if ep.res_coef is None else ep.res_coef,
            dummy if ep.bias is None else ep.bias,
            dummy if ep.border is None else ep.border,
            out, out.stride(0), out.stride(1), out.stride(2), acc, rs,
            n, h, wd, ho, wo, c, w.channels[0])
    constexprs = dict(KH=kh, KW=kw, STRIDE=stride, PAD=padding, G=g, W_BITS=w.container_bits, W_OFFSET=w.offset,
                      A_U8=dt == "u8", HAS_RES=ep.res_coef is not None, HAS_BIAS=ep.bias is not None,
                      HAS_BORDER=ep.border is not None, STORE_INT=store_int)

    def grid(blk):
        return triton.cdiv(ho * wo, blk[0]), triton.cdiv(n, blk[1]), bsz

    cls, candidates = qgemm_launches(bsz * ho * wo, n, g)
    if launch is None and block is not None:
        launch = Launch(tuple(block), candidates[0].num_warps, candidates[0].num_stages)
    if launch is None and (interpreting() or not tuning.enabled() or len(candidates) == 1):
        launch = candidates[0]  # the interpreter has nothing to time: the class's fixed launch
    if launch is not None:
        qgemm_kernel[grid(launch.block)](*args, **constexprs, **dict(zip(TILE, launch.block)), **launch.options())
    else:
        # tuned per class and per what changes the kernel's main loop (K-groups, weight width,
        # taps, operand and output dtypes); the epilogue's optional terms do not enter the key
        key = f"qgemm/{cls.name}/g{g}/w{w.container_bits}/k{kh}x{kw}/{dt}-{str(out_dtype)[6:]}"
        tuning.tuned_launch(qgemm_kernel, grid, args, constexprs, key, candidates, TILE, dev)
    return (out, acc, rs) if store_int else out
