"""The modules a triton artifact puts into the diffusers pipeline, built from the deploy IR.

- each quantized conv/linear becomes a `KernelModule` (layers.py: activation quantization +
  integer implicit GEMM with the fused epilogue, from the layer's recipe),
- each quantized attention processor a `KernelAttnProcessor` (layers.kernel_attention: the
  kernels of kernels/attention.py with the recipe's operands),
- each layer the IR folded (t = 999 and the fixed context: time projections, cross-attention
  K/V) its constant; the time embedding MLP that fed only those returns zeros.

`install_kernels` does the replacement for one component and checks that nothing quantized
is left. Also here: Triton's interpreter settings (block caps, overflow checks) for CPUs.
"""
from __future__ import annotations

import dataclasses
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from passion_deploy.devices import cuda_available
from passion_deploy.models.components import component as component_of
from passion_deploy.quant.attention import QuantAttnProcessor
from passion_deploy.quant.layers import QuantLayer

from ... import artifact
from ...ir.irfile import load_ir
from ...ir.recipes import QAttentionRecipe, QLayerRecipe

INTERPRETER_NOTE = ("passion-deploy: no CUDA GPU here, so the Triton kernels run in Triton's CPU interpreter: "
                    "the same integer arithmetic, but far slower than any other backend (use it to verify, not to time)")
_noted = False


def kernels_device() -> torch.device:
    """cuda when there is a GPU; otherwise switch Triton to its interpreter (once) and say so, once."""
    global _noted
    from passion_deploy.kernels import use_interpreter_without_gpu

    interpreting = use_interpreter_without_gpu()
    if cuda_available() and not interpreting:
        return torch.device("cuda")
    if not _noted:
        print(INTERPRETER_NOTE, file=sys.stderr)
        _noted = True
    return torch.device("cpu")


def _fit(n: int, cap: int) -> int:
    """Smallest power of two >= n (at least 16, tl.dot's minimum shape), at most cap. For the CPU
    interpreter only, which takes K = 16; compiled int8 dots need K >= 32 (kernels/configs.py)."""
    return max(16, min(cap, 1 << max(n - 1, 0).bit_length()))


# Triton's interpreter pays per program and per loop step, not per element (a 32-channel 3x3
# conv on 32x32 took 6.5 s with the GPU tiles, 0.5 s as one tile), so there every launch
# covers its whole problem with as few tiles as these caps allow.
INTERPRETER_CAP_M, INTERPRETER_CAP_NK = 4096, 128


def interpreter_blocks(m: int, n: int, k: int) -> tuple[int, int, int]:
    return _fit(m, INTERPRETER_CAP_M), _fit(n, INTERPRETER_CAP_NK), _fit(k, INTERPRETER_CAP_NK)


@contextmanager
def interpreter_overflow_checks(on: bool):
    """Triton's interpreter checks every int32 add/sub/mul for overflow; compiled GPU code does
    not (outside debug mode). The checks took ~40% of the interpreter's time on the tiny UNet,
    so the runtime runs without them, like the GPU, unless asked; the kernel tests keep them.
    (A Triton without this interpreter setting simply keeps its default.)"""
    try:
        from triton.runtime import interpreter
        builder = interpreter.interpreter_builder
        before = builder.options
        builder.options = dataclasses.replace(before, sanitize_overflow=on)
    except (ImportError, AttributeError, TypeError):
        yield
        return
    try:
        yield
    finally:
        builder.options = before


class KernelModule(nn.Module):
    """A quantized conv/linear run by the integer kernels; output in the input's float dtype."""

    def __init__(self, rec: QLayerRecipe, device: torch.device):
        super().__init__()
        from passion_deploy.kernels._triton import interpreting
        from .layers import KernelLayer

        self.name = rec.name
        self.kernel = KernelLayer(rec).to(device)  # plain attribute: nn.Module.to() must not touch its int8 data
        self.interpreting = interpreting()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.interpreting:
            rec = self.kernel.rec
            rows = x.shape[2] * x.shape[3] if rec.kind == "conv" else x.numel() // x.shape[-1]
            cg = max(w.k1 - w.k0 for w in rec.weights)
            self.kernel.block = interpreter_blocks(rows, rec.out_channels, cg)
            self.kernel.act_block = (_fit(rows, INTERPRETER_CAP_M), _fit(rec.in_channels, INTERPRETER_CAP_NK))
        return self.kernel(x, out_dtype=x.dtype)

    def extra_repr(self) -> str:
        r = self.kernel.rec
        return f"{r.name}: {r.kind} W{r.w_bits}A{r.a_bits}{' split' if r.split else ''}"


class DequantModule(nn.Module):
    """A weight-only quantized layer (no activation grid, so no integer GEMM): the float op on the
    recipe's dequantized weights, with the LET transform and correction of the fake-quant layer
    (recipes.transform_input / let_correction, with the vectors kept on the device)."""

    def __init__(self, rec: QLayerRecipe, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.rec = rec
        vec = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float32)).to(device, dtype)  # noqa: E731
        self.register_buffer("weight", rec.dequant_weight().to(device, dtype))
        self.register_buffer("bias", vec(rec.bias))
        self.register_buffer("let_scale", vec(rec.let_scale))
        self.register_buffer("let_offset", vec(rec.let_input_offset))
        self._corrections = {}  # input spatial size -> LET correction on the device (built once per size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        from ...ir.recipes import let_correction

        rec = self.rec
        conv = rec.kind == "conv"
        shape = (1, -1, 1, 1) if conv else (-1,)
        xs = x if self.let_scale is None else (x - self.let_offset.view(shape)) / self.let_scale.view(shape)
        if conv:
            y = F.conv2d(xs, self.weight, self.bias, rec.stride, rec.padding, rec.dilation)
        else:
            y = F.linear(xs, self.weight, self.bias)
        key = tuple(x.shape[2:]) if conv else ()
        if key not in self._corrections:
            corr = let_correction(rec, tuple(y.shape[2:]), key) if conv else let_correction(rec, None, None)
            self._corrections[key] = None if corr is None else corr.to(y.device, y.dtype)
        corr = self._corrections[key]
        return y if corr is None else y + corr

class FoldedConstant(nn.Module):
    """A linear layer whose output the IR folded (its input is fixed: t = 999 or the context)."""

    def __init__(self, value: np.ndarray, out_features: int):
        super().__init__()
        self.register_buffer("value", torch.from_numpy(np.asarray(value, np.float32)).reshape(1, -1, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]  # the output of the layer it replaces: x's leading shape, out_features
        return self.value.reshape(1, *lead[1:], -1).expand(*lead, -1)


class FoldedAway(nn.Module):
    """A layer whose output fed only folded layers: the diffusers forward still calls it."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


class KernelAttnProcessor(nn.Module):
    """diffusers attention with the quantized core (spec section 4) on the attention kernels.

    The forward is the fake-quant processor's own (it differs from diffusers' only in calling
    `self.attention`), so projections, reshapes and residuals are the same code in both."""

    forward = QuantAttnProcessor.forward

    def __init__(self, rec: QAttentionRecipe, device: torch.device):
        super().__init__()
        from passion_deploy.kernels._triton import interpreting
        from .layers import kernel_attention

        self.name = rec.name
        self.core = kernel_attention(rec).to(device)
        self.interpreting = interpreting()

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if self.interpreting:
            nq, nk, d = q.shape[1], k.shape[1], q.shape[2]
            self.core.block = interpreter_blocks(nq, nk, d)[:2]  # streaming: (query rows, keys) per step
            self.core.act_block = (_fit(max(nq, nk), INTERPRETER_CAP_M), _fit(d, INTERPRETER_CAP_NK))
        return self.core(q, k, v).to(q.dtype)  # the recipe carries the scale d^-0.5


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def install_kernels(pipe, component: str, ir_path: Path, device: torch.device, dtype: torch.dtype) -> dict:
    """Replace the component's quantized layers by kernel modules from the IR; returns counts."""
    g = load_ir(ir_path)
    comp = component_of(component)
    attr, inside = comp.root, comp.owns
    root = getattr(pipe, attr)
    counts = {"kernel_layers": 0, "dequant_layers": 0, "kernel_attention": 0, "folded_layers": 0}
    for name, rec in g.recipes.items():
        try:
            mod = root.get_submodule(name)
        except AttributeError:
            raise artifact.ArtifactError(f"{ir_path}: names layer {name!r}, which the checkpoint's {attr} does not have") from None
        if isinstance(rec, QAttentionRecipe):
            if not isinstance(getattr(mod, "processor", None), QuantAttnProcessor):
                raise artifact.ArtifactError(f"{ir_path}: {name} is not a quantized attention in the checkpoint")
            mod.set_processor(KernelAttnProcessor(rec, device))
            counts["kernel_attention"] += 1
        elif rec.acts is None:
            _replace(root, name, DequantModule(rec, device, dtype))
            counts["dequant_layers"] += 1
        else:
            _replace(root, name, KernelModule(rec, device))
            counts["kernel_layers"] += 1
    for name, const in g.meta.get("folded_layers", {}).items():
        mod = root.get_submodule(name)
        if not isinstance(mod, QuantLayer):
            continue  # a float layer computes its constant exactly as the IR did
        out = mod.weight.shape[0]
        _replace(root, name, (FoldedAway(out) if const is None else FoldedConstant(g.consts[const], out)).to(device, dtype))
        counts["folded_layers"] += 1
    left = [n for n, m in root.named_modules() if n and inside(n)
            and (isinstance(m, QuantLayer) or isinstance(getattr(m, "processor", None), QuantAttnProcessor))]
    if left:
        raise artifact.ArtifactError(f"{ir_path}: has no recipe for {len(left)} quantized layer(s) of the checkpoint "
                                     f"(first: {left[0]}); the IR and the checkpoint do not belong together, re-export")
    return counts
