"""A quantized conv/linear layer run by the kernels: fused activation quantization, then the
integer (implicit) GEMM with its epilogue. Built once from the layer's deploy-IR recipe.

This is the unit the `triton` export target wraps; here it is what the tests hold against
the fake-quant layer (QuantConv / QuantLinear) and the IR's own integer reference.
"""
from __future__ import annotations

import torch

from passion_deploy.export import int_algebra as ia
from passion_deploy.export.recipes import QLayerRecipe
from passion_deploy.quant.layers import split_point

from .act_quant import act_quant
from .gemm import qgemm
from .operands import conv_epilogue, conv_out_size, linear_epilogue, pack_weights


def _halves(n: int) -> list[tuple[int, int]]:
    """Token halves of a split 3-D linear input, cut where the fake-quant layer cuts them."""
    return [(0, split_point(n)), (split_point(n), n)]


class KernelLayer:
    def __init__(self, rec: QLayerRecipe, act_dtype: str = "u8", block: tuple[int, int, int] = (64, 64, 32),
                 act_block: tuple[int, int] = (32, 32)):
        if rec.acts is None:
            raise ValueError(f"{rec.name}: weight-only layers have no integer path")
        if rec.kind == "conv":
            if len(rec.kernel) != 2 or len(set(rec.stride)) != 1 or len(set(rec.padding)) != 1 or set(rec.dilation) != {1}:
                raise ValueError(f"{rec.name}: the conv kernel takes 2-D square stride/padding without dilation")
        self.rec = rec
        self.weights = pack_weights(rec.weights)
        self.acts = [ia.act_operand(g, act_dtype) for g in rec.acts]
        self.block, self.act_block = block, act_block
        self.device = torch.device("cpu")
        self._pre = {} if rec.let_scale is None else dict(
            pre="let", scale=torch.from_numpy(rec.let_scale), offset=torch.from_numpy(rec.let_input_offset))
        # epilogues are built on first use and kept on the layer's device: a call copies nothing
        # to the device and recomputes nothing on the host (CUDA-graph capture needs both)
        self._conv_epilogues = {}  # in_spatial -> Epilogue (the border map depends on the input size)
        self._linear_epilogues = {}  # (number of row blocks, block) -> Epilogue

    def to(self, device) -> "KernelLayer":
        """Move the weights, the LET vectors and the epilogues built so far to `device`, once."""
        self.device = torch.device(device)
        self.weights = self.weights.to(self.device)
        self._pre = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in self._pre.items()}
        for cache in (self._conv_epilogues, self._linear_epilogues):
            for key, ep in cache.items():
                cache[key] = ep.to(self.device)
        return self

    def _quantize(self, x3: torch.Tensor, ops: list[ia.ActOperand]) -> torch.Tensor:
        c_split = self.rec.weights[0].k1 if len(ops) == 2 else None
        return act_quant(x3, ops, c_split, block=self.act_block, **self._pre)

    def __call__(self, x: torch.Tensor, out_dtype: torch.dtype = torch.float32, store_int: bool = False):
        return self.conv(x, out_dtype, store_int) if self.rec.kind == "conv" else self.linear(x, out_dtype, store_int)

    def conv(self, x: torch.Tensor, out_dtype=torch.float32, store_int=False):
        """x (B, C, H, W) -> y (B, N, Ho, Wo), contiguous NCHW (written so by the kernel, as the
        float ops around the layer read it)."""
        rec = self.rec
        bsz, c, h, w = x.shape
        spatial = (h, w)
        if spatial not in self._conv_epilogues:
            self._conv_epilogues[spatial] = conv_epilogue(rec, self.weights, self.acts, spatial).to(self.device)
        ep = self._conv_epilogues[spatial]
        codes = self._quantize(x.reshape(bsz, c, h * w).transpose(1, 2), self.acts)  # NCHW read, NHWC codes
        ops = self.acts if len(self.acts) == self.weights.groups else self.acts * self.weights.groups
        ho, wo = conv_out_size(spatial, rec)
        y = torch.empty((bsz, rec.out_channels, ho, wo), dtype=out_dtype, device=x.device)
        res = qgemm(codes, ops, self.weights, ep, spatial, rec.kernel, rec.stride[0], rec.padding[0], out_dtype,
                    store_int, self.block, out=y.view(bsz, rec.out_channels, ho * wo).transpose(1, 2))
        return (y, codes) + tuple(res[1:]) if store_int else y

    def linear(self, x: torch.Tensor, out_dtype=torch.float32, store_int=False):
        """x (..., C) -> y (..., N); token halves of a split 3-D input use their own grids."""
        rec = self.rec
        lead = x.shape[:-1]
        x3 = x.reshape(1, -1, x.shape[-1]) if x.dim() != 3 else x
        g = self.weights.groups
        if rec.act_split_on_tokens(x.dim()):
            rows = [(r0, r1, [op]) for (r0, r1), op in zip(_halves(x.shape[1]), self.acts)]
        else:
            rows = [(0, x3.shape[1], self.acts)]
        outs, ints = [], []
        for half, (r0, r1, ops) in enumerate(rows):
            codes = self._quantize(x3[:, r0:r1], ops)
            gemm_ops = ops if len(ops) == g else ops * g
            key = (len(rows), half)  # token halves use one grid each, otherwise all grids at once
            if key not in self._linear_epilogues:
                self._linear_epilogues[key] = linear_epilogue(rec, self.weights, gemm_ops).to(self.device)
            res = qgemm(codes, gemm_ops, self.weights, self._linear_epilogues[key], None, (1, 1), 1, 0,
                        out_dtype, store_int, self.block)
            outs.append(res[0] if store_int else res)
            ints.append((codes,) + tuple(res[1:]) if store_int else None)
        y = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        y = y.reshape(*lead, -1)
        return (y, ints) if store_int else y
