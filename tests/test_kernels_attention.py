"""Quantized attention kernels (spec section 4): the integer matmuls bit-exact against int64
references, the exact normalised-P quantization against torch's softmax, and the whole core
against the fake-quant QuantAttnProcessor and the IR reference. On CUDA tensors when a GPU is
present, in Triton's interpreter otherwise; references always on the CPU."""
import numpy as np
import pytest
import torch

from passion_deploy.devices import cuda_available
from passion_deploy.kernels import use_interpreter_without_gpu

DEV = torch.device("cpu" if use_interpreter_without_gpu() or not cuda_available() else "cuda")
pytest.importorskip("triton", reason="the kernels need triton (pip install triton)")

from passion_deploy.export.ir import int_algebra as ia  # noqa: E402
from passion_deploy.export.ir.recipes import attention_recipe, run_attention  # noqa: E402
from passion_deploy.export.targets.triton.layers import kernel_attention  # noqa: E402
from passion_deploy.export.targets.triton.operands import kernel_act  # noqa: E402
from passion_deploy.kernels import reference as ref  # noqa: E402
from passion_deploy.kernels.attention import act_matmul, softmax_quant  # noqa: E402
from calib_helpers import head_qkv, observed_attention  # noqa: E402

# several tiles in M and N; K = 32, the int8 dot's minimum on NVIDIA GPUs (K = 37 and 8 below
# still leave K tails). Compiled for sm_80/sm_90 by test_kernels_aot ("test-small").
SMALL = (16, 16, 32)


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
    attn, proc, hidden, ctx = observed_attention(bits, cross, tokens=19)
    rec = attention_recipe("attn", attn, proc)
    q, k, v = head_qkv(attn, hidden, ctx)
    with torch.no_grad():
        fq = proc.attention(q, k, v, attn.scale)
    ka = kernel_attention(rec, block=SMALL, act_block=(32, 16), softmax_block=(16, 16)).to(DEV)
    out, parts = ka(q.to(DEV), k.to(DEV), v.to(DEV), store_int=True)
    out, parts = out.cpu(), {name: t.cpu() for name, t in parts.items()}
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
