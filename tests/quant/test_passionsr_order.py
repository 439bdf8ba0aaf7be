"""The fake-quant layers compute in PassionSR's order (docs/quant-semantics.md section 7): each
reproduces, bit for bit, a recomputation written here from the spec's formulas in that order."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from passion_deploy.quant.attention import LdmVaeAttnProcessor, QuantAttnProcessor
from passion_deploy.quant.layers import QuantConv, QuantLinear
from passion_deploy.quant.quantizer import QuantSpec

SPEC = QuantSpec(8)


def R(v):
    return torch.sign(v) * torch.floor(v.abs() + 0.5)


def lbq(x, lo, hi, bits=8, per_tensor=True):
    """Asymmetric unsigned LBQ; per-tensor D and zp in float64, then float32 (PassionSR's bounds)."""
    if per_tensor:
        d64 = (hi.double() - lo.double()) / (2**bits - 1)
        d, zp = d64.float(), R(lo.double() / d64).float()
    else:
        lo, hi = lo.view(-1, *([1] * (x.dim() - 1))), hi.view(-1, *([1] * (x.dim() - 1)))
        d = (hi - lo) / (2**bits - 1)
        zp = R(lo / d)
    return (torch.clamp(R(x / d) - zp, 0, 2**bits - 1) + zp) * d


def _calibrated(layer, g):
    """Random LET and bounds on a layer (no statistics pass: any values define the function)."""
    with torch.no_grad():
        layer.let_scale.copy_(torch.rand(layer.in_channels, generator=g) + 0.5)
        layer.let_offset.copy_(torch.randn(layer.in_channels, generator=g) * 0.3)
        w = layer.scaled_weight()
        for q in layer.w_quant:
            flat = w.reshape(w.shape[0], -1)
            q.x_min.copy_(flat.min(1).values)
            q.x_max.copy_(flat.max(1).values)
            q.initialized.fill_(True)
        for q in list(layer.a_quant) + [layer.b_quant]:
            q.x_min.fill_(-2.1)
            q.x_max.fill_(2.3)
            q.initialized.fill_(True)
            q.per_tensor_float64 = True
    return layer


def _fq_weight(layer):
    w = layer.weight * layer.let_scale.view((1, -1) + (1,) * (layer.weight.dim() - 2))
    return lbq(w, layer.w_quant[0].x_min, layer.w_quant[0].x_max, per_tensor=False)


def test_conv_let_correction_is_a_conv_of_the_spread_offset():
    g = torch.Generator().manual_seed(0)
    conv = _calibrated(QuantConv(nn.Conv2d(16, 24, 3, padding=1), wspec=SPEC, aspec=SPEC, split=False, use_let=True,
                                 let_form="consistent", s_alpha=0.5, only_weight=False), g)
    x = torch.randn(2, 16, 12, 12, generator=g)
    o, s = conv.let_offset.view(1, -1, 1, 1), conv.let_scale.view(1, -1, 1, 1)
    xq = lbq((x - o) / s, conv.a_quant[0].x_min, conv.a_quant[0].x_max)
    bq = lbq(conv.bias, conv.b_quant.x_min, conv.b_quant.x_max)
    want = F.conv2d(xq, _fq_weight(conv), bq, 1, 1) + F.conv2d(o.expand_as(x), conv.weight, None, 1, 1)
    with torch.no_grad():
        got = conv(x)
    assert torch.equal(got, want)
    # the ones-image form is the same number in exact arithmetic, but not bit for bit
    taps = torch.einsum("oc...,c->o...", conv.weight, conv.let_offset).unsqueeze(1)
    cheap = F.conv2d(xq, _fq_weight(conv), bq, 1, 1) + F.conv2d(torch.ones(1, 1, 12, 12), taps, None, 1, 1)
    assert not torch.equal(cheap, want)


def test_vae_projection_as_1x1_conv():
    g = torch.Generator().manual_seed(1)
    lin = _calibrated(QuantLinear(nn.Linear(64, 64), wspec=SPEC, aspec=SPEC, split=False, use_let=True,
                                  let_form="consistent", s_alpha=0.5, only_weight=False), g)
    lin.conv1x1 = True
    x = torch.randn(1, 64, 16, 16, generator=g)
    o, s = lin.let_offset.view(1, -1, 1, 1), lin.let_scale.view(1, -1, 1, 1)
    w4 = lin.weight[:, :, None, None]
    xq = lbq((x - o) / s, lin.a_quant[0].x_min, lin.a_quant[0].x_max)
    want = F.conv2d(xq, _fq_weight(lin)[:, :, None, None], lbq(lin.bias, lin.b_quant.x_min, lin.b_quant.x_max)) \
        + F.conv2d(o.expand_as(x), w4)
    with torch.no_grad():
        assert torch.equal(lin(x), want)
        tokens = x.flatten(2).transpose(1, 2)
        assert torch.equal(lin(tokens), want.flatten(2).transpose(1, 2))  # the same sums from (B, N, C) tokens


def test_attention_multiplies_by_the_reciprocal():
    g = torch.Generator().manual_seed(2)
    proc = QuantAttnProcessor(SPEC, head_dim=8, s_alpha=0.5)
    proc.resize_s_vw(20)
    with torch.no_grad():
        proc.s_qk.copy_(torch.rand(8, generator=g) + 0.5)
        proc.s_vw.copy_(torch.rand(20, generator=g) + 0.5)
        for q, (lo, hi) in zip(proc.quantizers(), [(-3.0, 3.1), (-2.9, 3.3), (-2.0, 2.2), (0.0, 0.9)]):
            q.x_min.fill_(lo)
            q.x_max.fill_(hi)
            q.initialized.fill_(True)
            q.per_tensor_float64 = True
    q, k, v = (torch.randn(2, 20, 8, generator=g) for _ in range(3))
    qq = [(p.x_min, p.x_max) for p in proc.quantizers()]
    s = lbq(q * proc.s_qk, *qq[0]) @ lbq(k * (1 / proc.s_qk), *qq[1]).transpose(-1, -2)
    p = torch.softmax(s * 8**-0.5, dim=-1)
    want = lbq(p * proc.s_vw, *qq[3]) @ lbq(v * (1 / proc.s_vw)[:, None], *qq[2])
    with torch.no_grad():
        assert torch.equal(proc.attention(q, k, v, 8**-0.5), want)


def test_quantized_vae_runs_ldm_silu_and_attn_block(tiny_w8a8):
    """The tiny VAE's SiLUs are ldm's x * sigmoid(x), and its mid attention is ldm's AttnBlock,
    recomputed here from its pieces in ldm's order."""
    vae = tiny_w8a8.vae
    acts = [m for m in vae.modules() if isinstance(m, nn.SiLU)]
    x = torch.randn(1000)
    assert acts and all(torch.equal(a(x), x * torch.sigmoid(x)) for a in acts)
    attn = vae.encoder.mid_block.attentions[0]
    assert isinstance(attn.processor, LdmVaeAttnProcessor)
    c = attn.to_q.weight.shape[0]
    h = torch.randn(1, c, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = attn(h)
        n = attn.group_norm(h)

        def proj(m, t):  # a split (token-halves) projection runs as the linear it was calibrated as
            if getattr(m, "conv1x1", False):
                return m(t)
            return m(t.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(t.shape)
        q, k, v = (proj(m, n).reshape(1, c, 64) for m in (attn.to_q, attn.to_k, attn.to_v))
        w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * (int(c) ** -0.5), dim=2)
        o = torch.bmm(v, w.permute(0, 2, 1)).reshape(1, c, 8, 8)
        want = h + proj(attn.to_out[0], o)
    assert torch.equal(got, want)
