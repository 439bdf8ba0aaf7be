"""The float model behind a fake-quant pipeline: the FP32 baseline of benchmarks and of
verification's "vs FP" numbers, without needing the original weight files."""
from __future__ import annotations

import copy

import torch
from torch import nn

from passion_deploy.quant.attention import QuantAttnProcessor
from passion_deploy.quant.layers import QuantConv, QuantLayer, QuantLinear


def _plain(layer: QuantLayer) -> nn.Module:
    """The plain conv/linear of a quantized layer, on the layer's own FP weight and bias tensors
    (shared, not copied: new Parameter objects over the same storage, so moving one model to
    another device leaves the other where it is)."""
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else None
    if isinstance(layer, QuantLinear):
        m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    elif isinstance(layer, QuantConv):
        cls = nn.Conv2d if layer.dims == 2 else nn.Conv1d
        m = cls(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=layer.stride, padding=layer.padding,
                dilation=layer.dilation, bias=b is not None, device="meta")
    else:
        raise TypeError(type(layer).__name__)
    m.weight = nn.Parameter(w, requires_grad=False)
    if b is not None:
        m.bias = nn.Parameter(b, requires_grad=False)
    return m


def _shared_tensors(pipe) -> dict:
    """A deepcopy memo that makes a copy of `pipe` share every tensor its modules hold (parameters,
    buffers and plain tensor attributes such as cached fake-quant weights) instead of copying it:
    each maps to a new tensor object over the same storage."""
    memo = {}
    for m in pipe.modules():
        for name, t in list(m._parameters.items()) + list(m._buffers.items()) + list(vars(m).items()):
            if isinstance(t, nn.Parameter):
                memo[id(t)] = nn.Parameter(t.detach(), requires_grad=t.requires_grad)
            elif isinstance(t, torch.Tensor):
                memo[id(t)] = t.detach()
    return memo


def fp_copy(pipe, inplace: bool = False):
    """A copy of a fake-quant OneStepSR with every quantized layer replaced by the plain
    conv/linear holding its original FP weights, and default attention processors. The copy
    shares the pipeline's tensors (inference reads them, nothing writes them): a deep copy of the
    sd21 pipeline added 4.9 GB to --verify's RSS, which peaked at 24.4 GB on a 24 GiB machine.
    `inplace=True` converts `pipe` itself."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    fp = pipe if inplace else copy.deepcopy(pipe, _shared_tensors(pipe))
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
