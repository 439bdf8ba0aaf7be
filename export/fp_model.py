"""The float model behind a fake-quant pipeline: the FP32 baseline of benchmarks and of
verification's "vs FP" numbers, without needing the original weight files."""
from __future__ import annotations

import copy

import torch
from torch import nn

from passion_deploy.quant.attention import QuantAttnProcessor
from passion_deploy.quant.layers import QuantConv, QuantLayer, QuantLinear


def _plain(layer: QuantLayer) -> nn.Module:
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else None
    if isinstance(layer, QuantLinear):
        m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    elif isinstance(layer, QuantConv):
        cls = nn.Conv2d if layer.dims == 2 else nn.Conv1d
        m = cls(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=layer.stride, padding=layer.padding,
                dilation=layer.dilation, bias=b is not None)
    else:
        raise TypeError(type(layer).__name__)
    with torch.no_grad():
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)
    return m.requires_grad_(False)


def fp_copy(pipe, inplace: bool = False):
    """A (deep) copy of a fake-quant OneStepSR with every quantized layer replaced by the plain
    conv/linear holding its original FP weights, and default attention processors.
    `inplace=True` converts `pipe` itself (no second copy of large weights)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    fp = pipe if inplace else copy.deepcopy(pipe)
    for comp in (fp.unet, fp.vae):
        targets = [(n, m) for n, m in comp.named_modules() if isinstance(m, QuantLayer)]
        for name, layer in targets:
            parent, _, child = name.rpartition(".")
            setattr(comp.get_submodule(parent) if parent else comp, child, _plain(layer))
        for m in comp.modules():
            if isinstance(getattr(m, "processor", None), QuantAttnProcessor):
                m.set_processor(AttnProcessor2_0())
    fp.quant_config = None
    return fp.eval()
