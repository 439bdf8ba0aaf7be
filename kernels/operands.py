"""The operands a kernel launch takes: containers of tensors and scalars, nothing more.

`ActOperand` holds the scalars of one activation operand encoding, `PackedWeights` one
layer's packed weight bytes and per-column integer vectors, `Epilogue` the float constants
of one GEMM launch. Building them from the deploy IR is the triton target's job
(export/targets/triton/operands.py); the kernels and their references only read them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Triton's tensor-core dot takes int8 x int8, so weights are always encoded as signed operands;
# uint8 activations are moved onto int8 in the kernel's load path (a - 128, zero - 128).
WEIGHT_DTYPE = "s8"
OPERAND_DTYPES = ("u8", "s8")


@dataclass(frozen=True)
class ActOperand:
    """How a float activation becomes an 8-bit operand, and which grid value the operand stands for:

        operand = clamp(R(x / step) + quant_zero, lo, hi)      R = round half away from zero
        j       = (operand - kernel_zero) + residual

    The numbers are the integer algebra's (the triton target copies them in); quant_zero and
    kernel_zero differ, with a nonzero residual, only for a grid no 8-bit zero point reaches."""

    dtype: str  # "u8" or "s8"
    step: float  # a float32 value, held exactly
    quant_zero: int
    lo: int
    hi: int
    kernel_zero: int
    residual: int

    def __post_init__(self):
        if self.dtype not in OPERAND_DTYPES:
            raise ValueError(f"activation operands are one of {OPERAND_DTYPES}, got {self.dtype!r}")


@dataclass
class PackedWeights:
    """All K-groups of one layer. Vectors are (G, N); `data` is (G, N, taps, row_bytes) uint8."""

    data: torch.Tensor
    container_bits: int  # storage width of one code: 8 (a byte) or 6 (4 codes in 3 bytes)
    offset: int  # operand value = container code + offset
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
        return PackedWeights(self.data.to(device), self.container_bits, self.offset, self.channels, self.taps,
                             self.zero.to(device), self.colsum.to(device), self.residual, self.step)


@dataclass
class Epilogue:
    """Float epilogue of one GEMM launch (one activation operand per K-group)."""

    act_zero: torch.Tensor  # int32 (G,) kernel zero point of each group's activation operand
    scale: torch.Tensor  # float32 (G, N): Da * Dw
    res_coef: torch.Tensor | None  # float32 (G, N): B' * Da * Dw, None without weight residuals
    bias: torch.Tensor | None  # float32 (N,)
    # float32 (C * C, N), C = (padding + 1)^2: a padded conv's border map in compact form, one
    # value per (row class, column class) and channel (export/ir/plan.py: border_class,
    # LayerPlan.border_table), the same for every input size; the GEMM picks an output pixel's
    # entry from (oh, ow). A dense (P_out, N) map per input size took ~1.6 GB per 128-channel
    # conv at a 1792 px decoder tile; this is 16 * N floats for a 3x3 conv of padding 1.
    border: torch.Tensor | None

    def to(self, device) -> "Epilogue":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Epilogue(mv(self.act_zero), mv(self.scale), mv(self.res_coef), mv(self.bias), mv(self.border))
