"""Quantized attention matmuls (spec section 4)."""
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

from passion_deploy.quant.attention import QuantAttnProcessor
from passion_deploy.quant.quantizer import QuantSpec, fake_quantize

from calib_helpers import observe_attention


def make_attn(cross=False):
    torch.manual_seed(0)
    return Attention(query_dim=16, cross_attention_dim=24 if cross else None, heads=2, dim_head=8)


def test_scales_alone_leave_attention_unchanged():
    for cross in (False, True):
        attn = make_attn(cross)
        hidden = torch.randn(2, 10, 16)
        ctx = torch.randn(2, 7, 24) if cross else None
        with torch.no_grad():
            ref = attn(hidden, encoder_hidden_states=ctx)
        proc = QuantAttnProcessor(QuantSpec(8), head_dim=8, s_alpha=0.5)
        attn.set_processor(proc)
        observe_attention(attn, hidden, ctx)
        assert proc.s_vw.numel() == (7 if cross else 10)
        assert not torch.allclose(proc.s_qk, torch.ones(8))  # non-trivial scales
        for q in proc.quantizers():
            q.enabled = False
        with torch.no_grad():
            out = attn(hidden, encoder_hidden_states=ctx)
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_quantized_attention_matches_the_spec_formula():
    attn = make_attn(cross=True)
    hidden, ctx = torch.randn(1, 6, 16), torch.randn(1, 5, 24)
    proc = QuantAttnProcessor(QuantSpec(6), head_dim=8, s_alpha=0.3)
    attn.set_processor(proc)
    observe_attention(attn, hidden, ctx)
    with torch.no_grad():
        q = attn.head_to_batch_dim(attn.to_q(hidden))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        v = attn.head_to_batch_dim(attn.to_v(ctx))

        def Q(t, qz):
            return fake_quantize(t, qz.x_min, qz.x_max, QuantSpec(6))

        s = Q(q * proc.s_qk, proc.q_quant) @ Q(k / proc.s_qk, proc.k_quant).transpose(1, 2) * 8**-0.5
        p = torch.softmax(s, dim=-1) * proc.s_vw
        out = Q(p, proc.p_quant) @ Q(v / proc.s_vw[:, None], proc.v_quant)
        expected = attn.to_out[0](attn.batch_to_head_dim(out))
        got = attn(hidden, encoder_hidden_states=ctx)
        attn.set_processor(AttnProcessor())
        fp = attn(hidden, encoder_hidden_states=ctx)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, fp, atol=1e-4)  # 6-bit matmuls do change the output
