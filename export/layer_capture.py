"""Outputs of named quantized layers and attention cores of a PyTorch pipeline during one run.

Names are the deploy IR's (module paths inside the UNet or the VAE). A conv/linear layer is
captured by a forward hook; an attention core, which is a processor method rather than a
module, by wrapping the processor's `attention(q, k, v, scale)` for the run. The fake-quant
processors and the kernel ones of the triton runtime share that method, so --verify reads the
reference and the artifact the same way.
"""
from __future__ import annotations

import torch

from passion_deploy.models.components import component as component_of


@torch.no_grad()
def capture_layer_io(pipe, component: str, names: list[str], run) -> dict[str, tuple[list[torch.Tensor], torch.Tensor]]:
    """{name: (inputs, output)} of the named fake-quant layers / attention cores of `component`
    during `run()`, in the deploy IR's layouts: a conv's NCHW input, a linear's tokens (a VAE
    attention projection running as a 1x1 conv is given as its tokens too), an attention core's
    q, k, v and output as (B, N, C). The first call of each is kept (each runs once per pass)."""
    from passion_deploy.quant.layers import QuantLinear

    root = getattr(pipe, component_of(component).root)
    got, hooks, patched = {}, [], []
    for name in names:
        mod = root.get_submodule(name)
        proc = getattr(mod, "processor", None)
        if callable(getattr(proc, "attention", None)):
            orig = proc.attention

            def wrapped(q, k, v, scale, _orig=orig, _name=name, _attn=mod):
                out = _orig(q, k, v, scale)
                if _name not in got:
                    got[_name] = ([_attn.batch_to_head_dim(t).detach().clone() for t in (q, k, v)],
                                  _attn.batch_to_head_dim(out).detach().clone())
                return out
            proc.attention = wrapped
            patched.append(proc)
        else:
            tokens = isinstance(mod, QuantLinear)

            def hook(m, args, out, _n=name, _tokens=tokens):
                x = args[0]
                if _tokens and x.dim() == 4:  # NCHW into a 1x1-conv-form linear: the IR's tokens
                    x, out = x.flatten(2).transpose(1, 2), out.flatten(2).transpose(1, 2)
                if _n not in got:
                    got[_n] = ([x.detach().clone()], out.detach().clone())
            hooks.append(mod.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
        for proc in patched:
            del proc.attention
    return got
