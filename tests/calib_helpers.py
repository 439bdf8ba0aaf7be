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
