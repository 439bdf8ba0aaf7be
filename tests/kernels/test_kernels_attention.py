"""Quantized attention kernels (spec section 4): the integer matmuls bit-exact against int64
references, the exact normalised-P quantization against torch's softmax, the streaming kernel
bit for bit equal to the materialised path (and linear in memory), and the whole core against
the fake-quant QuantAttnProcessor and the IR reference. On CUDA tensors when a GPU is present,
in Triton's interpreter otherwise; references always on the CPU."""
import numpy as np
import pytest
import torch
import torch.utils._pytree
from torch.utils._python_dispatch import TorchDispatchMode

from passion_deploy.devices import cuda_available
from passion_deploy.kernels import use_interpreter_without_gpu

DEV = torch.device("cpu" if use_interpreter_without_gpu() or not cuda_available() else "cuda")
pytest.importorskip("triton", reason="the kernels need triton (pip install triton)")

from passion_deploy.export.ir import int_algebra as ia  # noqa: E402
from passion_deploy.export.ir.recipes import attention_recipe, run_attention  # noqa: E402
from passion_deploy.export.targets.triton.layers import kernel_attention  # noqa: E402
from passion_deploy.export.targets.triton.operands import kernel_act  # noqa: E402
from passion_deploy.kernels import reference as ref  # noqa: E402
from passion_deploy.kernels.attention import MAX_KEYS, act_matmul, softmax_quant, streaming_attention  # noqa: E402
from calib_helpers import attention_probe, head_qkv, observed_attention  # noqa: E402

# several tiles in M and N; K = 32, the int8 dot's minimum on NVIDIA GPUs (K = 37 and 8 below
# still leave K tails). Compiled for sm_80/sm_90 by test_kernels_aot ("test-small").
SMALL = (16, 16, 32)
# the streaming kernel's (query rows, keys): 32 keys, the PV dot's minimum K on NVIDIA GPUs
# (configs "test-small"); None: its GPU launch, 64 x 64
STREAM_SMALL = (16, 32)


def operand(lo_j, bits, step, dtype):
    """Kernel operand of an unsigned grid whose values start at lo_j (zp = lo_j)."""
    return kernel_act(ia.act_operand(ia.Grid(np.float32(step), np.int64(lo_j), bits, False), dtype))


@pytest.mark.parametrize("grids", ["in-range", "residuals"])
def test_act_matmul_exact(grids):
    g = torch.Generator().manual_seed(0)
    if grids == "in-range":
        aop, bop = operand(-100, 8, 0.05, "u8"), operand(-20, 6, 0.2, "s8")
    else:  # grids away from 0: neither zero point fits 8 bits, residuals on both sides
        aop, bop = operand(700, 8, 0.01, "u8"), operand(-400, 6, 0.03, "s8")
    assert (aop.residual != 0) == (bop.residual != 0) == (grids == "residuals")
    z, m, k, n = 2, 19, 37, 21  # several tiles, none full

    def codes(op, shape):
        return torch.randint(op.lo, op.hi + 1, shape, generator=g).to(torch.uint8 if op.dtype == "u8" else torch.int8)

    a, b = codes(aop, (z, m, k)), codes(bop, (z, n, k)).transpose(1, 2)  # b strided, as K^T is
    y, acc = act_matmul(a.to(DEV), aop, b.to(DEV), bop, 0.125, store_int=True, block=SMALL)
    y, acc = y.cpu(), acc.cpu()
    ex, y_ref = ref.act_matmul_ref(a, aop, b, bop, 0.125)
    assert torch.equal(acc.long(), ex)
    assert (y.double() - y_ref).abs().max() <= 1e-6 * y_ref.abs().max()


def test_softmax_quant_is_the_normalised_softmax():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 5, 150, generator=g) * 4  # two column blocks of 128, odd row count
    s_vw = torch.rand(150, generator=g) + 0.5
    pop = operand(0, 8, 1.5 / 255, "u8")
    codes = softmax_quant(scores.to(DEV), s_vw.to(DEV), pop).cpu()
    want = ref.softmax_quant_ref(scores, s_vw, pop)
    diff = (codes.long() - want).abs()
    # exp and the sum order may differ from torch's by an ulp: a code can move only where
    # P * s_vw / D sits within rounding of a half step
    assert diff.max() <= 1 and diff.float().mean() < 0.01
    # normalised before quantization: each row's codes dequantize to P * s_vw
    p = (codes.double() - pop.kernel_zero) * float(pop.step) / s_vw.double()
    assert (p.sum(-1) - 1).abs().max() < 150 * float(pop.step)


def test_softmax_quant_checks_shapes():
    pop = operand(0, 8, 0.01, "u8")
    with pytest.raises(ValueError, match="s_vw"):
        softmax_quant(torch.zeros(2, 5), torch.ones(4), pop)


@pytest.mark.parametrize("bits", [8, 6])
@pytest.mark.parametrize("cross", [False, True])
def test_attention_kernels_match_fake_quant(bits, cross):
    rec, q, k, v, fq = attention_probe(bits, cross, tokens=19)
    ka = kernel_attention(rec, block=STREAM_SMALL, act_block=(32, 16), matmul_block=SMALL,
                          softmax_block=(16, 16)).to(DEV)
    out, parts = ka(q.to(DEV), k.to(DEV), v.to(DEV), store_int=True)
    out, parts = out.cpu(), {name: t.cpu() for name, t in parts.items()}
    # the default call (streaming) is the materialised path bit for bit, so all below holds for it
    assert torch.equal(ka(q.to(DEV), k.to(DEV), v.to(DEV)).cpu(), out)
    s_qk, s_vw = torch.from_numpy(rec.s_qk), torch.from_numpy(rec.s_vw)
    # operands: bit-exact against the IR's operand reference
    assert torch.equal(parts["q"].long(), ref.act_quant_ref(q, [ka.q], pre="mul", scale=s_qk))
    assert torch.equal(parts["k"].long(), ref.act_quant_ref(k, [ka.k], pre="div", scale=s_qk))
    assert torch.equal(parts["v"].long(), ref.act_quant_ref(v, [ka.v], pre="div", scale=s_vw, vec_on_rows=True))
    # QK^T: int32 exact, scores to float rounding
    ex, s_ref = ref.act_matmul_ref(parts["q"], ka.q, parts["k"].transpose(1, 2), ka.k, rec.scale)
    assert torch.equal(parts["qk_int"].long(), ex)
    assert (parts["scores"].double() - s_ref).abs().max() <= 1e-6 * s_ref.abs().max()
    # P: the normalised softmax of those scores, quantized (ulp-level code moves only)
    dp = (parts["p"].long() - ref.softmax_quant_ref(parts["scores"], s_vw, ka.p)).abs()
    assert dp.max() <= 1 and dp.float().mean() < 0.02
    # PV: int32 exact, output to float rounding
    ex, o_ref = ref.act_matmul_ref(parts["p"], ka.p, parts["v"], ka.v, 1.0)
    assert torch.equal(parts["pv_int"].long(), ex)
    assert (out.double() - o_ref).abs().max() <= 1e-6 * o_ref.abs().max()
    # against the fake-quant and the IR reference: a P code may flip where P*s_vw/D sits within
    # rounding of a half step, moving an output by at most one P step times max |v / s_vw|
    bound = float(rec.p.step) * float((v.abs() / s_vw[:, None]).max()) * 2
    for want in (fq, run_attention(rec, q, k, v)):
        assert (out - want).abs().max().item() <= max(bound, 1e-6 * want.abs().max().item())
        assert ((out - want).abs() > 1e-5 * want.abs().max()).float().mean() < 0.05


# -- the streaming kernel against the materialised path ----------------------------------------

def random_codes(op, shape, g):
    return torch.randint(op.lo, op.hi + 1, shape, generator=g).to(torch.uint8 if op.dtype == "u8" else torch.int8)


def materialised(cq, qop, ck, kop, cv, vop, pop, s_vw, scale, softmax_block=None):
    """The (Z, N, N) path of KernelAttention(store_int=True), at its GPU tiles unless told: the
    output and the P codes."""
    scores = act_matmul(cq, qop, ck.transpose(1, 2), kop, scale)
    cp = softmax_quant(scores, s_vw, pop, block=softmax_block)
    return act_matmul(cp, pop, cv, vop, 1.0), cp


# (Z, M queries, N keys, d), (q and P, k and v) operand dtypes, the streaming (BM, BN) (None: the
# GPU launch, 64 x 64). N is never a multiple of the key blocks (32, 64; the materialised path's
# 64 and 128), M never one of the row blocks; self-attention and cross-attention on 77 text
# tokens; d below the dot's K minimum (8: padded to 32), the tiny model's 16, an odd 37 and
# sd21's 64; each side of each dot both uint8 and int8
CASES = {
    "self-d8-u8s8-16x32": ((2, 100, 100, 8), ("u8", "s8"), STREAM_SMALL),
    "self-d8-s8u8-gpu": ((2, 100, 100, 8), ("s8", "u8"), None),
    "self-d37-s8u8-16x32": ((2, 45, 45, 37), ("s8", "u8"), STREAM_SMALL),
    "self-d64-u8s8-gpu": ((2, 130, 130, 64), ("u8", "s8"), None),
    "cross77-d16-u8s8-gpu": ((2, 100, 77, 16), ("u8", "s8"), None),
    "cross77-d16-s8u8-16x32": ((2, 40, 77, 16), ("s8", "u8"), STREAM_SMALL),
    "cross77-d64-s8s8-gpu": ((2, 70, 77, 64), ("s8", "s8"), None),
}


@pytest.mark.parametrize("case", CASES)
def test_streaming_attention_is_the_materialised_path(case):
    (z, m, n, d), (a, b), block = CASES[case]
    g = torch.Generator().manual_seed(d * 1000 + n)
    qop, kop = operand(-128, 8, 0.12 / d**0.25, a), operand(-128, 8, 0.12 / d**0.25, b)
    vop, pop = operand(-40, 6, 0.1, b), operand(0, 8, 2.0 / 255, a)  # P * s_vw in [0, 2]
    s_vw = (torch.rand(n, generator=g) * 1.5 + 0.5).to(DEV)
    cq, ck, cv = (random_codes(op, (z, t, d), g).to(DEV) for op, t in ((qop, m), (kop, n), (vop, n)))
    ck = ck.transpose(1, 2).contiguous().transpose(1, 2)  # k laid out (Z, d, N): codes are read through strides
    out = streaming_attention(cq, qop, ck, kop, cv, vop, pop, s_vw, d**-0.5, block)
    want, cp = materialised(cq, qop, ck, kop, cv, vop, pop, s_vw, d**-0.5)
    assert out.shape == (z, m, d) and out.dtype == torch.float32
    assert torch.equal(out.cpu(), want.cpu())
    # a meaningful case: P spread over many codes, an output that is no constant
    assert cp.unique().numel() > 20 and out.std() > 0


@pytest.mark.parametrize("softmax_block", [(16, 16), (8, 128)])
def test_streaming_attention_with_residual_grids(softmax_block):
    """Grids no 8-bit zero point reaches (residuals on all four operands), and softmax blocks
    unlike the streaming kernel's: the fixed-point softmax sum does not depend on the blocking."""
    g = torch.Generator().manual_seed(1)
    z, m, n, d = 2, 33, 77, 16
    qop, kop = operand(700, 8, 0.006, "u8"), operand(-400, 8, 0.006, "s8")
    vop, pop = operand(300, 6, 0.05, "s8"), operand(10, 8, 0.002, "u8")  # P * s_vw on [0.02, 0.53]
    assert all(op.residual != 0 for op in (qop, kop, vop, pop))
    s_vw = (torch.rand(n, generator=g) + 0.5).to(DEV)
    cq, ck, cv = (random_codes(op, (z, t, d), g).to(DEV) for op, t in ((qop, m), (kop, n), (vop, n)))
    out = streaming_attention(cq, qop, ck, kop, cv, vop, pop, s_vw, 0.25, STREAM_SMALL)
    want, cp = materialised(cq, qop, ck, kop, cv, vop, pop, s_vw, 0.25, softmax_block)
    assert torch.equal(out.cpu(), want.cpu())
    assert cp.unique().numel() > 50


def test_streaming_attention_checks_shapes():
    op = operand(0, 8, 0.01, "s8")
    c = lambda *shape: torch.zeros(*shape, dtype=torch.int8)  # noqa: E731
    with pytest.raises(ValueError, match="s_vw"):
        streaming_attention(c(1, 4, 8), op, c(1, 5, 8), op, c(1, 5, 8), op, op, torch.ones(4), 1.0)
    with pytest.raises(ValueError, match="codes must be"):
        streaming_attention(c(1, 4, 8), op, c(1, 5, 8), op, c(1, 6, 8), op, op, torch.ones(5), 1.0)
    with pytest.raises(ValueError, match="does not match its encoding"):
        streaming_attention(c(1, 4, 8).to(torch.uint8), op, c(1, 5, 8), op, c(1, 5, 8), op, op, torch.ones(5), 1.0)
    n = MAX_KEYS + 1  # past it, the P @ V sums could leave int32
    with pytest.raises(ValueError, match="keys"):
        streaming_attention(c(1, 4, 8), op, c(1, n, 8), op, c(1, n, 8), op, op, torch.ones(n), 1.0)


class Allocations(TorchDispatchMode):
    """Every tensor an aten op returns while active (factories included): its number of elements."""

    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numels += [t.numel() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def test_streaming_attention_memory_is_linear_in_tokens():
    """KernelAttention's call allocates O(tokens) (codes and output): no (Z, N, N) scores or P, and
    doubling the tokens at most doubles what it allocates. The materialised path, checked the
    same way, fails both (so the check sees the allocations it has to)."""
    def allocated(tokens, store_int):
        attn, proc, hidden, _ = observed_attention(8, False, tokens=tokens)
        q, k, v = (t.to(DEV) for t in head_qkv(attn, hidden, None))
        ka = kernel_attention(attention_recipe("attn", attn, proc)).to(DEV)
        with Allocations() as seen:
            ka(q, k, v, store_int=store_int)
        assert q.shape[0] == 2 and seen.numels  # Z = batch 1 x 2 heads
        return seen.numels

    streaming = {n: allocated(n, False) for n in (96, 192)}
    full = {n: allocated(n, True) for n in (96, 192)}
    for n in (96, 192):
        assert max(streaming[n]) < n * n, f"{n} tokens: a tensor of {max(streaming[n])} elements"
        assert max(full[n]) >= 2 * n * n  # the materialised scores
    assert sum(streaming[192]) <= 2 * sum(streaming[96])
    assert sum(full[192]) > 3 * sum(full[96])
