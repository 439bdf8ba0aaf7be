"""Kernel operands of a quantized layer, taken from the deploy IR (no Triton needed here).

Everything integer comes from `export.int_algebra` (operand encodings, zero points, residuals)
and `export.packing` (the 4-codes-in-3-bytes int6 container); this module only lays those
numbers out the way the kernels read them and multiplies the per-group float scales:

- weights of every K-group as container bytes (N, taps, row_bytes), input channels along the
  last axis (K is ordered (tap, channel) as in an NHWC implicit GEMM), plus per output column
  the int8 operand zero point, the column sum of the operands and the weight residual B';
- the activation operand of each K-group (`ia.ActOperand`, uint8 or int8);
- the float epilogue: scale Da*Dw per column, the residual coefficient B'*Da*Dw, the bias
  (with the constant LET and activation-residual terms of linear layers folded in) and, for
  convs, the spatial map (LET correction + activation residual over the valid taps).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from passion_deploy.export import int_algebra as ia
from passion_deploy.export import packing
from passion_deploy.export.recipes import QLayerRecipe, WeightGroup, let_correction

# Triton's tensor-core dot takes int8 x int8, so weights are always encoded as signed operands;
# uint8 activations are moved onto int8 in the kernel's load path (a - 128, zero - 128).
WEIGHT_DTYPE = "s8"


def weight_offset(grid: ia.Grid) -> int:
    """operand = container code u + offset, u = q - qmin being what `packing.pack` stores."""
    return grid.qmin + ia.code_shift(WEIGHT_DTYPE, grid.bits, grid.qmin)


def taps_last(codes: np.ndarray) -> np.ndarray:
    """(N, Cg, *kernel) or (N, Cg) codes -> (N, taps, Cg): K ordered (tap, channel)."""
    n, cg = codes.shape[:2]
    return np.moveaxis(codes.reshape(n, cg, -1), 1, 2)


@dataclass
class PackedWeights:
    """All K-groups of one layer. Vectors are (G, N); `data` is (G, N, taps, row_bytes) uint8."""

    data: torch.Tensor
    bits: int
    offset: int
    channels: tuple[int, ...]  # Cg per group
    taps: int
    zero: torch.Tensor  # int32 operand zero point zb
    colsum: torch.Tensor  # int32 sum over the group's K of the operand values
    residual: np.ndarray  # int64 B' (jw = (b - zb) + B')
    step: np.ndarray  # float32 Dw

    @property
    def groups(self) -> int:
        return len(self.channels)

    @property
    def out_channels(self) -> int:
        return self.data.shape[1]

    @property
    def has_residual(self) -> bool:
        return bool(np.any(self.residual))

    def to(self, device) -> "PackedWeights":
        return PackedWeights(self.data.to(device), self.bits, self.offset, self.channels, self.taps,
                             self.zero.to(device), self.colsum.to(device), self.residual, self.step)


def pack_weights(groups: list[WeightGroup]) -> PackedWeights:
    """Encode (int_algebra) and pack (packing) the weight codes of a layer's K-groups."""
    grids = [g.grid for g in groups]
    bits, signed = grids[0].bits, grids[0].signed
    if any((gr.bits, gr.signed) != (bits, signed) for gr in grids):
        raise ValueError("K-groups of one layer must share the weight bit width and signedness")
    blobs, zeros, colsums, residuals, steps, channels = [], [], [], [], [], []
    for g in groups:
        codes = taps_last(np.asarray(g.codes).astype(np.int64))  # (N, taps, Cg)
        op = ia.weight_operand(codes, g.grid, WEIGHT_DTYPE)
        n, taps, cg = codes.shape
        # pad each channel row to whole 4-code words so a row starts on a byte boundary; the pad
        # codes (qmin, container 0) are masked off by the kernel's K bound
        cpad = -cg % 4 if packing.container_bits(bits) == 6 else 0
        padded = np.concatenate([codes, np.full((n, taps, cpad), g.grid.qmin, np.int64)], axis=2)
        blob = packing.pack(padded, bits, signed).reshape(n, taps, -1)
        blobs.append(blob)
        zeros.append(op.zero.astype(np.int32))
        colsums.append(op.values.astype(np.int64).reshape(n, -1).sum(1).astype(np.int32))
        residuals.append(op.residual)
        steps.append(op.step)
        channels.append(cg)
    row = max(b.shape[2] for b in blobs)
    data = np.zeros((len(groups), blobs[0].shape[0], blobs[0].shape[1], row), np.uint8)
    for i, b in enumerate(blobs):
        data[i, :, :, : b.shape[2]] = b
    return PackedWeights(torch.from_numpy(data), bits, weight_offset(grids[0]), tuple(channels), blobs[0].shape[1],
                         torch.from_numpy(np.stack(zeros)), torch.from_numpy(np.stack(colsums)),
                         np.stack(residuals), np.stack(steps))


@dataclass
class Epilogue:
    """Float epilogue of one GEMM launch (one activation operand per K-group)."""

    act_zero: torch.Tensor  # int32 (G,) kernel zero point of each group's activation operand
    scale: torch.Tensor  # float32 (G, N): Da * Dw
    res_coef: torch.Tensor | None  # float32 (G, N): B' * Da * Dw, None without weight residuals
    bias: torch.Tensor | None  # float32 (N,)
    map: torch.Tensor | None  # float32 (P_out, N): per output position, conv only

    def to(self, device) -> "Epilogue":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Epilogue(mv(self.act_zero), mv(self.scale), mv(self.res_coef), mv(self.bias), mv(self.map))


def group_scales(w: PackedWeights, acts: list[ia.ActOperand]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Da*Dw and B'*Da*Dw per K-group and column, products taken in float64 then rounded once."""
    da = np.array([float(a.step) for a in acts], np.float64)[:, None]
    scale = da * w.step.astype(np.float64)
    res = (w.residual * scale).astype(np.float32) if w.has_residual else None
    return torch.from_numpy(scale.astype(np.float32)), None if res is None else torch.from_numpy(res)


def linear_epilogue(rec: QLayerRecipe, w: PackedWeights, acts: list[ia.ActOperand]) -> Epilogue:
    """A linear layer's constants all fold into the bias: fake-quant bias + W o (LET) + the
    activation residual A'*Da*sum_k jw*Dw of grids outside the operand type."""
    bias = np.zeros(rec.out_channels) if rec.bias is None else rec.bias.astype(np.float64)
    if rec.let_taps is not None:
        bias = bias + rec.let_taps.astype(np.float64)
    for g, a in zip(rec.weights, acts):
        taps = ia.act_residual_taps(a, g.dequant().double())
        if taps is not None:
            bias = bias + taps.numpy()
    scale, res = group_scales(w, acts)
    return Epilogue(act_zeros(acts), scale, res, torch.from_numpy(bias.astype(np.float32)), None)


def conv_epilogue(rec: QLayerRecipe, w: PackedWeights, acts: list[ia.ActOperand], in_spatial: tuple[int, int]) -> Epilogue:
    """A conv's per-position constants form one map, computed by the IR's own exact border rule
    (a conv of an all-ones image): the LET correction plus each group's activation residual."""
    out_spatial = conv_out_size(in_spatial, rec)
    maps = []
    corr = let_correction(rec, out_spatial, in_spatial)
    if corr is not None:
        maps.append(corr.double())
    for g, a in zip(rec.weights, acts):
        taps = ia.act_residual_taps(a, g.dequant().double())
        if taps is not None:
            maps.append(ia.ones_conv_map(taps, in_spatial, rec.stride, rec.padding, rec.dilation))
    m = None
    if maps:
        m = sum(maps).reshape(rec.out_channels, -1).t().contiguous().float()  # (P_out, N): NHWC order
    scale, res = group_scales(w, acts)
    bias = None if rec.bias is None else torch.from_numpy(rec.bias.astype(np.float32))
    return Epilogue(act_zeros(acts), scale, res, bias, m)


def act_zeros(acts: list[ia.ActOperand]) -> torch.Tensor:
    return torch.tensor([a.kernel_zero for a in acts], dtype=torch.int32)


def conv_out_size(in_spatial: tuple[int, int], rec: QLayerRecipe) -> tuple[int, int]:
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(in_spatial, rec.kernel, rec.stride, rec.padding, rec.dilation))
