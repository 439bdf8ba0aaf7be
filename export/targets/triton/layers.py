"""The quantized layers and attention cores of the deploy IR run by the kernels, each built
once from its recipe (the kernels themselves take only tensors and scalars):

- `KernelLayer`: a conv/linear layer, fused activation quantization, then the integer
  (implicit) GEMM with its epilogue;
- `kernel_attention`: an attention core (kernels/attention.py's `KernelAttention`).

These are the units the `triton` export target wraps (modules.py); here they are what the
tests hold against the fake-quant modules and the IR's own integer reference.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from passion_deploy.kernels.act_quant import act_quant
from passion_deploy.kernels.attention import KernelAttention
from passion_deploy.kernels.gemm import qgemm

from ...ir import int_algebra as ia
from ...ir.plan import LayerPlan, layer_plan
from ...ir.recipes import QAttentionRecipe, QLayerRecipe
from .operands import RowLaunch, conv_out_size, encoding, kernel_act, pack_weights, row_launch, with_border_table


def kernel_attention(rec: QAttentionRecipe, a_dtype: str = "u8", b_dtype: str = "s8", **blocks) -> KernelAttention:
    """The attention core of one recipe on the kernels; `blocks`: KernelAttention's tile sizes."""
    # Triton's dot is int8 x int8 after the load path's shift, so any encoding is exact here
    # (the x86 saturation rule of int_algebra.choose_act_b_dtype does not apply)
    a_op = lambda g: kernel_act(ia.act_operand(g, a_dtype))  # noqa: E731
    b_op = lambda g: kernel_act(ia.act_operand(g, b_dtype))  # noqa: E731
    return KernelAttention(a_op(rec.q), b_op(rec.k), b_op(rec.v), a_op(rec.p), torch.from_numpy(rec.s_qk),
                           torch.from_numpy(rec.s_vw), float(rec.scale), rec.name, **blocks)


class KernelLayer:
    """One quantized conv/linear on the kernels, run as its layer plan (ir/plan.py) says: per row
    block one fused activation quantization and one GEMM launch over all K-groups."""

    def __init__(self, rec: QLayerRecipe, act_dtype: str = "u8", block: tuple[int, int, int] | None = None,
                 act_block: tuple[int, int] | None = None):
        enc = encoding(act_dtype)
        # the row blocks depend on the input's rank only where a split linear layer cuts a 3-D
        # input into token halves; every other input has the plan of rank 4 (conv) or 2
        self.plans = {False: layer_plan(rec, 4 if rec.kind == "conv" else 2, enc)}
        if rec.act_split_on_tokens(3):
            self.plans[True] = layer_plan(rec, 3, enc)
        if rec.kind == "conv":
            if len(rec.kernel) != 2 or len(set(rec.stride)) != 1 or len(set(rec.padding)) != 1 or set(rec.dilation) != {1}:
                raise ValueError(f"{rec.name}: the conv kernel takes 2-D square stride/padding without dilation")
        self.rec = rec
        self.weights = pack_weights(self.plans[False])
        # keyed like self.plans, by whether the row blocks are token halves
        self.launches = {k: [row_launch(row) for row in plan.rows] for k, plan in self.plans.items()}
        self.block, self.act_block = block, act_block  # None: the launches listed in kernels/configs.py
        self.device = torch.device("cpu")
        self._pre = {} if rec.let_scale is None else dict(
            pre="let", scale=torch.from_numpy(rec.let_scale), offset=torch.from_numpy(rec.let_input_offset))
        # everything a call reads is built once and kept on the layer's device: a call copies
        # nothing to the device and recomputes nothing on the host (CUDA-graph capture needs both).
        # A padded conv's border map is the plan's compact table, the same for every input size,
        # so one epilogue serves every size (a dense map per size grew without bound with the
        # VAE's tiles: ~1.6 GB per 128-channel conv at a 1792 px decoder tile)
        self.conv_epilogue = None
        if rec.kind == "conv":
            (row,) = self.launches[False]
            self.conv_epilogue = with_border_table(row.epilogue, self.plans[False].border_table())

    def plan(self, x_ndim: int) -> LayerPlan:
        """The layer plan for an input of rank `x_ndim`."""
        return self.plans[self.rec.act_split_on_tokens(x_ndim)]

    def to(self, device) -> "KernelLayer":
        """Move the weights, the LET vectors and the epilogues to `device`, once."""
        self.device = torch.device(device)
        self.weights = self.weights.to(self.device)
        self._pre = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in self._pre.items()}
        self.launches = {k: [r.to(self.device) for r in rows] for k, rows in self.launches.items()}
        if self.conv_epilogue is not None:
            (row,) = self.launches[False]  # the moved vectors, shared with the row's epilogue
            border = self.conv_epilogue.border
            self.conv_epilogue = replace(row.epilogue, border=None if border is None else border.to(self.device))
        return self

    def _quantize(self, x3: torch.Tensor, row: RowLaunch) -> torch.Tensor:
        return act_quant(x3, row.quant, row.c_split, block=self.act_block, **self._pre)

    def __call__(self, x: torch.Tensor, out_dtype: torch.dtype = torch.float32, store_int: bool = False):
        return self.conv(x, out_dtype, store_int) if self.rec.kind == "conv" else self.linear(x, out_dtype, store_int)

    def conv(self, x: torch.Tensor, out_dtype=torch.float32, store_int=False):
        """x (B, C, H, W) -> y (B, N, Ho, Wo), contiguous NCHW (written so by the kernel, as the
        float ops around the layer read it)."""
        rec = self.rec
        bsz, c, h, w = x.shape
        spatial = (h, w)
        (row,) = self.launches[False]
        ep = self.conv_epilogue
        codes = self._quantize(x.reshape(bsz, c, h * w).transpose(1, 2), row)  # NCHW read, NHWC codes
        ho, wo = conv_out_size(spatial, rec)
        y = torch.empty((bsz, rec.out_channels, ho, wo), dtype=out_dtype, device=x.device)
        res = qgemm(codes, row.gemm, self.weights, ep, spatial, rec.kernel, rec.stride[0], rec.padding[0], out_dtype,
                    store_int, self.block, out=y.view(bsz, rec.out_channels, ho * wo).transpose(1, 2))
        return (y, codes) + tuple(res[1:]) if store_int else y

    def linear(self, x: torch.Tensor, out_dtype=torch.float32, store_int=False):
        """x (..., C) -> y (..., N); the plan's row blocks are the token halves of a split 3-D input."""
        lead = x.shape[:-1]
        x3 = x.reshape(1, -1, x.shape[-1]) if x.dim() != 3 else x
        plan = self.plan(x.dim())
        outs, ints = [], []
        for (r0, r1), row in zip(plan.row_spans(x3.shape[1]), self.launches[plan.token_halves]):
            codes = self._quantize(x3[:, r0:r1], row)
            res = qgemm(codes, row.gemm, self.weights, row.epilogue, None, (1, 1), 1, 0, out_dtype, store_int,
                        self.block)
            outs.append(res[0] if store_int else res)
            ints.append((codes,) + tuple(res[1:]) if store_int else None)
        y = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        y = y.reshape(*lead, -1)
        return (y, ints) if store_int else y
