"""Kernel operands of a quantized layer, taken from its layer plan (no Triton needed here).

This is the adapter between the IR and the kernels, which take tensors and scalars only.
The plan (ir/plan.py) decides the K-groups, the token halves, which activation operand each
GEMM reads, the folded bias and the border map; `ir.int_algebra` every operand encoding, zero
point and residual; `ir.packing` the 4-codes-in-3-bytes int6 container. This module only
lays those numbers out the way the kernels read them (kernels/operands.py) and multiplies
the per-group float scales:

- `encoding`: the plan's operand types on the kernels: uint8 or int8 activations, weights
  always int8 (WEIGHT_DTYPE). A weight residual B' is not the plan's all-ones column here:
  the kernel already sums each row's operands, so its epilogue adds B'*Da*Dw times that sum;
- `pack_weights`: the K-groups' codes as container bytes (N, taps, row_bytes), input channels
  along the last axis (K is ordered (tap, channel) as in an NHWC implicit GEMM), plus per
  output column the int8 operand zero point, the column sum of the operands and B';
- `row_launch`: one row block of the plan as one GEMM launch: the activation operands
  `act_quant` writes and the GEMM reads (kernels' `ActOperand` copies, `kernel_act`), and the
  float epilogue Da*Dw, B'*Da*Dw and the plan's bias; `with_border_table` adds a padded conv's
  border map in the plan's compact form (one (row class, column class) table for every input
  size: LayerPlan.border_table), laid out as the GEMM's epilogue indexes it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from passion_deploy.kernels.operands import WEIGHT_DTYPE, ActOperand, Epilogue, PackedWeights

from ...ir import int_algebra as ia
from ...ir import packing
from ...ir.plan import Encoding, LayerPlan, RowPlan
from ...ir.recipes import QLayerRecipe, WeightGroup


def encoding(act_dtype: str = "u8") -> Encoding:
    """Activations as `act_dtype` operands, int8 weights: Triton's dot is int8 x int8 after the
    load path's shift, so every pairing is exact (no x86 saturation rule to dodge)."""
    return Encoding(lambda grid: ia.act_operand(grid, act_dtype),
                    lambda wg, act: ia.weight_operand(wg.codes, wg.grid, WEIGHT_DTYPE), ia.act_residual_taps)


def kernel_act(op: ia.ActOperand) -> ActOperand:
    """The kernels' copy of an activation operand encoding (the numbers stay int_algebra's)."""
    return ActOperand(op.dtype, float(op.step), int(op.ql_zero), int(op.lo), int(op.hi), int(op.kernel_zero),
                      int(op.residual))


def weight_offset(grid: ia.Grid) -> int:
    """operand = container code u + offset, u = q - qmin being what `packing.pack` stores."""
    return grid.qmin + ia.code_shift(WEIGHT_DTYPE, grid.bits, grid.qmin)


def taps_last(codes: np.ndarray) -> np.ndarray:
    """(N, Cg, *kernel) or (N, Cg) codes -> (N, taps, Cg): K ordered (tap, channel)."""
    n, cg = codes.shape[:2]
    return np.moveaxis(codes.reshape(n, cg, -1), 1, 2)


def pack_codes(wg: WeightGroup) -> np.ndarray:
    """One K-group's codes as container bytes (N, taps, row_bytes)."""
    codes = taps_last(np.asarray(wg.codes).astype(np.int64))
    n, taps, cg = codes.shape
    # pad each channel row to whole 4-code words so a row starts on a byte boundary; the pad
    # codes (qmin, container 0) are masked off by the kernel's K bound
    cpad = -cg % 4 if packing.container_bits(wg.grid.bits) == 6 else 0
    padded = np.concatenate([codes, np.full((n, taps, cpad), wg.grid.qmin, np.int64)], axis=2)
    return packing.pack(padded, wg.grid.bits, wg.grid.signed).reshape(n, taps, -1)


def pack_weights(plan: LayerPlan) -> PackedWeights:
    """The packed codes of the plan's K-groups beside their operands' per-column numbers (the
    row blocks share one weight operand per K-group, so the first row's are all of them)."""
    groups = plan.rows[0].groups
    grids = [plan.rec.weights[g.index].grid for g in groups]
    if any((gr.bits, gr.signed) != (grids[0].bits, grids[0].signed) for gr in grids):
        raise ValueError("K-groups of one layer must share the weight bit width and signedness")
    blobs = [pack_codes(plan.rec.weights[g.index]) for g in groups]
    data = np.zeros((len(blobs),) + blobs[0].shape[:2] + (max(b.shape[2] for b in blobs),), np.uint8)
    for i, b in enumerate(blobs):
        data[i, :, :, : b.shape[2]] = b
    ops = [g.weight for g in groups]
    colsums = [op.values.astype(np.int64).reshape(len(op.zero), -1).sum(1).astype(np.int32) for op in ops]
    return PackedWeights(torch.from_numpy(data), packing.container_bits(grids[0].bits), weight_offset(grids[0]),
                         tuple(g.k1 - g.k0 for g in groups), blobs[0].shape[1],
                         torch.from_numpy(np.stack([op.zero.astype(np.int32) for op in ops])),
                         torch.from_numpy(np.stack(colsums)), np.stack([op.residual for op in ops]),
                         np.stack([op.step for op in ops]))


@dataclass
class RowLaunch:
    """One row block of the plan as the kernels take it."""

    quant: list[ActOperand]  # what act_quant writes: the row's one operand, or one per channel half
    c_split: int | None  # the channel where the second of two channel halves starts
    gemm: list[ActOperand]  # the operand each K-group's GEMM reads
    epilogue: Epilogue  # without a border map (KernelLayer adds a padded conv's table)

    def to(self, device) -> "RowLaunch":
        return replace(self, epilogue=self.epilogue.to(device))


def row_launch(row: RowPlan) -> RowLaunch:
    gemm = [kernel_act(g.act) for g in row.groups]
    # channel halves with their own grids are quantized in one pass, split where the first ends
    quant, c_split = (gemm, row.groups[0].k1) if row.act is None else ([kernel_act(row.act)], None)
    return RowLaunch(quant, c_split, gemm, epilogue(row))


def epilogue(row: RowPlan) -> Epilogue:
    """Per K-group the activation zero point, Da*Dw and B'*Da*Dw (products in float64, rounded
    once), and the plan's folded bias."""
    da = np.array([float(g.act.step) for g in row.groups], np.float64)[:, None]
    scale = da * np.stack([g.weight.step for g in row.groups]).astype(np.float64)
    residual = np.stack([g.weight.residual for g in row.groups])
    res = torch.from_numpy((residual * scale).astype(np.float32)) if np.any(residual) else None
    bias = None if row.bias is None else torch.from_numpy(row.bias.astype(np.float32))
    act_zero = torch.tensor([g.act.kernel_zero for g in row.groups], dtype=torch.int32)
    return Epilogue(act_zero, torch.from_numpy(scale.astype(np.float32)), res, bias, None)


def with_border_table(ep: Epilogue, table: torch.Tensor | None) -> Epilogue:
    """`ep` plus a conv's (N, row classes, column classes) border table (LayerPlan.border_table)
    as the kernel reads it: (row classes * column classes, N) float32, channels contiguous so a
    tile of output channels loads one class's values together."""
    if table is None:
        return ep
    if table.dim() != 3 or table.shape[1] != table.shape[2]:
        raise ValueError(f"the GEMM takes a 2-D conv's square border table, got {tuple(table.shape)}")
    return replace(ep, border=table.reshape(table.shape[0], -1).t().contiguous().float())


def conv_out_size(in_spatial: tuple[int, int], rec: QLayerRecipe) -> tuple[int, int]:
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(in_spatial, rec.kernel, rec.stride, rec.padding, rec.dilation))
