"""Calibration steps that several test files share (importable: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch

from passion_deploy.quant.wrap import set_observers


def observe_attention(attn, hidden, ctx=None) -> None:
    """One observed forward pass: sets the attention processor's LET statistics and its quantizers' ranges."""
    proc = attn.processor
    proc.let_observer = True
    for q in proc.quantizers():
        q.observer = "ema"
    with torch.no_grad():
        attn(hidden, encoder_hidden_states=ctx)
    proc.let_observer = False
    for q in proc.quantizers():
        q.observer = None


def calibrated_layer(layer, x, let: bool = True, seed: int = 0):
    """Random LET scale/offset, then min/max calibration of every quantizer of `layer` on x."""
    g = torch.Generator().manual_seed(seed)
    if let:
        n = layer.let_scale.numel()
        layer.let_scale.data = torch.exp(torch.randn(n, generator=g) * 0.5)
        layer.let_offset.data = torch.randn(n, generator=g) * 0.5
    set_observers(layer, act="minmax", weight="minmax")
    with torch.no_grad():
        layer(x)
    set_observers(layer, act=None, weight=None)
    return layer


def observed_attention(bits: int, cross: bool, tokens: int, s_alpha: float = 0.5):
    """A small diffusers Attention with a QuantAttnProcessor observed once: (attn, proc, hidden, ctx)."""
    from diffusers.models.attention_processor import Attention

    from passion_deploy.quant.attention import QuantAttnProcessor
    from passion_deploy.quant.quantizer import QuantSpec

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=24 if cross else None, heads=2, dim_head=8)
    proc = QuantAttnProcessor(QuantSpec(bits), head_dim=8, s_alpha=s_alpha)
    attn.set_processor(proc)
    hidden = torch.randn(1, tokens, 16)
    ctx = torch.randn(1, 7, 24) if cross else None
    observe_attention(attn, hidden, ctx)
    return attn, proc, hidden, ctx


@torch.no_grad()
def head_qkv(attn, hidden, ctx):
    """q, k, v after the projections, in the (batch*heads, tokens, head_dim) layout of spec section 4."""
    src = hidden if ctx is None else ctx
    return tuple(attn.head_to_batch_dim(t) for t in (attn.to_q(hidden), attn.to_k(src), attn.to_v(src)))


def attention_probe(bits: int, cross: bool, tokens: int):
    """An observed attention core as the IR and kernel tests judge it: (recipe, q, k, v, the
    fake-quant processor's output on them), q/k/v in the (batch*heads, tokens, head_dim) layout."""
    from passion_deploy.export.ir.recipes import attention_recipe

    attn, proc, hidden, ctx = observed_attention(bits, cross, tokens)
    q, k, v = head_qkv(attn, hidden, ctx)
    with torch.no_grad():
        out = proc.attention(q, k, v, attn.scale)
    return attention_recipe("attn", attn, proc), q, k, v, out
