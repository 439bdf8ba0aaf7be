"""Outputs of named quantized layers and attention cores of a PyTorch pipeline during one run.

Names are the deploy IR's (module paths inside the UNet or the VAE). A conv/linear layer is
captured by a forward hook; an attention core, which is a processor method rather than a
module, by wrapping the processor's `attention(q, k, v, scale)` for the run. The fake-quant
processors and the kernel ones of the triton runtime share that method, so --verify reads the
reference and the artifact the same way.
"""
from __future__ import annotations

import numpy as np
import torch

from passion_deploy.models.components import component as component_of


@torch.no_grad()
def capture_layers(pipe, component: str, names: list[str], run) -> dict[str, np.ndarray]:
    """Outputs of the named layers / attention cores of `component` during `run()`, float32 numpy."""
    root = getattr(pipe, component_of(component).root)
    got, hooks, patched = {}, [], []
    for name in names:
        mod = root.get_submodule(name)
        proc = getattr(mod, "processor", None)
        if callable(getattr(proc, "attention", None)):
            orig = proc.attention

            def wrapped(q, k, v, scale, _orig=orig, _name=name, _attn=mod):
                out = _orig(q, k, v, scale)
                got[_name] = _attn.batch_to_head_dim(out).float().cpu().numpy().copy()
                return out
            proc.attention = wrapped
            patched.append(proc)
        else:
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, _n=name: got.__setitem__(_n, o.detach().float().cpu().numpy().copy())))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
        for proc in patched:
            del proc.attention  # back to the class method
    return got
