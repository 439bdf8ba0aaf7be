"""The integer algebra of the deploy IR: the one place that turns quantizer grids into kernel
operands, zero points and compensation terms. Every backend takes its integers from here.

Notation (spec sections 2 and 6). A quantizer has step D, integer zero point zp and codes
q in [qmin, qmax]; its grid values are j = q + zp and x^ = j * D. A quantized matmul or conv
sums products of grid values:  y = Da * Dw_o * sum_k ja_k * jw_ok  (+ bias, + LET terms).

Integer kernels (ONNX Runtime's MatMulInteger family, Triton's int8 dot, TensorRT) take 8-bit
operands `a` (uint8) and `b` (uint8 or int8) with a scalar zero point for `a` and one per
output column for `b`, and compute  sum_k (a_k - za)(b_k - zb).  This module picks, for each
grid, an operand encoding with  j = (operand - zero) + residual:

- the residual is 0 whenever the grid fits the operand type (always, for ranges that contain
  0: PassionSR's unsigned asymmetric grids have zp in [-(2^b-1), 0]);
- a weight residual B' (an output channel whose weights all have one sign) adds
  B' * sum_k (a_k - za), a per-position sum of the input codes, obtained exactly from an extra
  all-ones output column of the integer GEMM;
- an activation residual A' adds A' * sum over the *valid* (non-padded) taps of jw, a static
  map, computed like the LET correction as a conv of an all-ones image (exact at borders).

Padding: the fake-quant conv pads the quantized input with zeros, i.e. with grid value 0.
Padding with the operand's zero point gives (a - za) = 0 at padded taps, which is exact when
A' = 0 and is corrected by the A' map otherwise.

Saturation: x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply uint8 x int8 with
`vpmaddubsw`, which saturates the sum of two adjacent products at 16 bits. uint8 x int8 is
therefore exact on every x86 CPU only when 2 * max|a| * max|b| <= 32767 (e.g. 6-bit weights,
or 6-bit activations); W8A8 layers use uint8 x uint8 (exact everywhere, slower) unless the
artifact targets VNNI CPUs. `choose_weight_dtype` owns that decision.

The symmetric shift (spec section 2): TensorRT takes only int8 with zero point 0. A grid
j = q + zp maps exactly onto it as m = j - c for any integer c with [jmin - c, jmax - c] inside
[-128, 127]; `signed_shift` picks the c closest to 0 (0 for 6-bit grids that contain 0, so
W6A6 needs no compensation at all; zp + 2^(b-1) for a full 8-bit grid). `sym_act` and
`sym_weight` give the int8 operands; `act_shift_taps` gives the per-tap constant c*D*sum(w^)
that a shifted activation leaves, and the layer plan (ir/plan.py) folds it like a residual.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from passion_deploy.quant.quantizer import LBQuantizer, QuantSpec, quantize_codes

ISAS = ("portable", "vnni")
I16_MAX = 32767
DTYPE_RANGE = {"u8": (0, 255), "s8": (-128, 127)}


@dataclass(frozen=True)
class Grid:
    """One quantizer's integer grid: x^ = (q + zp) * step with q in [qmin, qmax].

    `step` is float32 and `zp` integer, both scalars (per tensor) or vectors (per channel)."""

    step: np.ndarray
    zp: np.ndarray
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def spec(self) -> QuantSpec:
        # sym vs asym only changes how D and zp are derived, which is done by now
        return QuantSpec(self.bits, sym=False, sign=self.signed)

    def jmin(self) -> np.ndarray:
        return self.zp + self.qmin

    def jmax(self) -> np.ndarray:
        return self.zp + self.qmax

    def to_dict(self) -> dict:
        return {"step": np.asarray(self.step, np.float32), "zp": np.asarray(self.zp, np.int64), "bits": self.bits,
                "signed": self.signed}


def grid_of(quantizer: LBQuantizer) -> Grid:
    """The grid a calibrated quantizer uses, with D and zp computed by the quantizer's own math."""
    if not bool(quantizer.initialized):
        raise ValueError("quantizer is not calibrated")
    d, zp = quantizer.step_and_zero_point()  # the quantizer's own derivation (float64 for PassionSR's per-tensor bounds)
    d, zp = d.float(), zp.float()
    return Grid(d.numpy().astype(np.float32), zp.numpy().astype(np.int64), quantizer.spec.bits, quantizer.spec.signed)


def quant_codes(x: torch.Tensor, grid: Grid, channel_axis: int | None = None) -> torch.Tensor:
    """LBQ codes q of x on `grid` (float tensor of integers), bit-identical to the fake-quant:
    the same torch expression `clamp(R(x / D) - zp, qmin, qmax)`."""
    d = torch.as_tensor(grid.step, dtype=x.dtype)
    zp = torch.as_tensor(grid.zp, dtype=x.dtype)
    if d.dim() and channel_axis is not None:
        shape = [1] * x.dim()
        shape[channel_axis] = -1
        d, zp = d.view(shape), zp.view(shape)
    return quantize_codes(x, d, zp, grid.spec)


def signed_shift(jmin, jmax) -> np.ndarray:
    """The integer c closest to 0 with jmin - c >= -128 and jmax - c <= 127 (elementwise)."""
    lo = np.asarray(jmax, np.int64) - 127
    hi = np.asarray(jmin, np.int64) + 128
    if np.any(lo > hi):
        raise ValueError("a grid spanning more than 256 integers has no int8 form")
    return np.clip(np.zeros_like(lo), lo, hi)


@dataclass(frozen=True)
class SymAct:
    """A per-tensor activation grid as TensorRT's int8 (zero point 0): j = m + shift, where
    m = clip(round(x / step - shift), lo, hi); lo/hi narrower than int8 for < 8-bit grids."""

    step: np.float32
    shift: int
    lo: int
    hi: int

    @property
    def needs_clip(self) -> bool:
        return (self.lo, self.hi) != DTYPE_RANGE["s8"]


def sym_act(grid: Grid) -> SymAct:
    if np.ndim(grid.step):
        raise ValueError("activation grids are per tensor")
    c = int(signed_shift(grid.jmin(), grid.jmax()))
    return SymAct(np.float32(grid.step), c, int(grid.jmin()) - c, int(grid.jmax()) - c)


@dataclass
class SymWeight:
    """Per-output-channel weights as int8 with zero point 0: jw = values + shift[o]."""

    values: np.ndarray  # int8, the codes' shape (Cout, ...)
    shift: np.ndarray  # (Cout,) int64
    step: np.ndarray  # (Cout,) float32

    @property
    def has_shift(self) -> bool:
        return bool(np.any(self.shift))


def sym_weight(codes: np.ndarray, grid: Grid) -> SymWeight:
    """The shift is chosen from the codes a channel actually uses (a narrower range than its
    grid lets more channels keep shift 0)."""
    q = np.asarray(codes).astype(np.int64)
    j = q + np.asarray(grid.zp, np.int64).reshape((-1,) + (1,) * (q.ndim - 1))
    flat = j.reshape(j.shape[0], -1)
    c = signed_shift(flat.min(1), flat.max(1))
    m = j - c.reshape((-1,) + (1,) * (q.ndim - 1))
    return SymWeight(m.astype(np.int8), c, np.asarray(grid.step, np.float32).reshape(-1))


# -- activation operands -------------------------------------------------------------------

@dataclass(frozen=True)
class ActOperand:
    """How a float activation becomes a kernel operand.

    quantize:  operand = clip(round(x / step) + ql_zero, lo, hi)  (QuantizeLinear to `dtype`,
               then a clip when the grid is narrower than 8 bits); `wide` means ql_zero does
               not fit `dtype` and the rounding must go through int16 first.
    kernel:    (operand - kernel_zero) + residual == j; padded taps hold kernel_zero."""

    dtype: str
    step: np.float32
    ql_zero: int
    lo: int
    hi: int
    kernel_zero: int
    residual: int
    wide: bool

    @property
    def needs_clip(self) -> bool:
        return (self.lo, self.hi) != DTYPE_RANGE[self.dtype] or self.wide

    @property
    def max_abs(self) -> int:
        return max(abs(self.lo), abs(self.hi))


def code_shift(dtype: str, bits: int, qmin: int) -> int:
    """operand = q + shift: unsigned codes as they are for uint8, centred on 0 for int8 (so a
    6-bit grid spans [-32, 31] and stays clear of int16 saturation)."""
    return -qmin if dtype == "u8" else -qmin - (1 << (bits - 1))


def act_operand(grid: Grid, dtype: str = "u8") -> ActOperand:
    """Operand encoding of a per-tensor activation grid (see module docstring)."""
    if np.ndim(grid.step):
        raise ValueError("activation grids are per tensor")
    tmin, tmax = DTYPE_RANGE[dtype]
    zp = int(grid.zp)
    shift = code_shift(dtype, grid.bits, grid.qmin)
    # operand = j + z must stay in [tmin, tmax] for every grid value j in [zp+qmin, zp+qmax],
    # and z itself must be a zero point of the operand type
    z_lo = max(tmin - (zp + grid.qmin), tmin)
    z_hi = min(tmax - (zp + grid.qmax), tmax)
    if z_lo <= z_hi:
        z = min(max(shift - zp, z_lo), z_hi)  # preferred: operand = q + shift
        return ActOperand(dtype, np.float32(grid.step), z, zp + grid.qmin + z, zp + grid.qmax + z, z, 0, False)
    # the grid lies where no 8-bit zero point reaches: round through int16 to operand = q + shift
    # (a backend clips, then casts), and carry the difference to j as a residual
    z = shift - zp
    kz = min(max(z, tmin), tmax)
    return ActOperand(dtype, np.float32(grid.step), z, grid.qmin + shift, grid.qmax + shift, kz, kz - z, True)


def act_operand_values(x: torch.Tensor, op: ActOperand) -> torch.Tensor:
    """Reference of the operand a backend computes from x (round half away, as the fake-quant)."""
    v = x / torch.tensor(op.step, dtype=x.dtype)
    r = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return torch.clamp(r + op.ql_zero, op.lo, op.hi)


# -- weight operands -----------------------------------------------------------------------

@dataclass
class WeightOperand:
    """Kernel form of one K-group of weights: column o holds b[:, o] with zero point zero[o];
    (b - zero) + residual == jw. Shapes: values (Cout, ...) in the layer's own layout."""

    dtype: str
    values: np.ndarray  # uint8 or int8, same shape as the codes
    zero: np.ndarray  # (Cout,) of the same dtype
    residual: np.ndarray  # (Cout,) int64, nonzero only for one-signed channels
    step: np.ndarray  # (Cout,) float32

    @property
    def has_residual(self) -> bool:
        return bool(np.any(self.residual))

    @property
    def max_abs(self) -> int:
        v = self.values.astype(np.int64)
        return int(np.abs(v).max()) if v.size else 0


def weight_operand(codes: np.ndarray, grid: Grid, dtype: str) -> WeightOperand:
    """Encode per-output-channel weight codes (dim 0 = output channel) as `dtype` operands."""
    tmin, tmax = DTYPE_RANGE[dtype]
    q = np.asarray(codes).astype(np.int64)
    shift = code_shift(dtype, grid.bits, grid.qmin)
    values = q + shift
    # jw = q + zp = values - shift + zp  => zero = shift - zp, clamped into the type
    want = shift - np.asarray(grid.zp, np.int64).reshape(-1)
    zero = np.clip(want, tmin, tmax)
    residual = zero - want  # jw = (values - zero) + residual
    npdt = np.uint8 if dtype == "u8" else np.int8
    return WeightOperand(dtype, values.astype(npdt), zero.astype(npdt), residual.astype(np.int64),
                         np.asarray(grid.step, np.float32).reshape(-1))


def u8s8_exact(a_max_abs: int, b_max_abs: int) -> bool:
    """uint8 x int8 is exact without VNNI iff no pair of products can saturate int16."""
    return 2 * a_max_abs * b_max_abs <= I16_MAX


def choose_weight_dtype(a: ActOperand, w_bits: int, isa: str, ones_column: bool = False) -> str:
    """int8 weights when exact on the target ISA (fast kernel), else uint8 (exact everywhere)."""
    if isa not in ISAS:
        raise ValueError(f"unknown ISA {isa!r}; choose one of {', '.join(ISAS)}")
    if isa == "vnni":
        return "s8"
    b_max = max(1 << (w_bits - 1), 1 if ones_column else 0)  # s8 operand of a w_bits grid spans +-2^(b-1)
    return "s8" if u8s8_exact(a.max_abs, b_max) else "u8"


def choose_act_b_dtype(a: ActOperand, b_grid: Grid, isa: str) -> str:
    """Operand type of an activation used as the B side (attention K and V)."""
    if isa == "vnni":
        return "s8"
    return "s8" if u8s8_exact(a.max_abs, 1 << (b_grid.bits - 1)) else "u8"


# -- static maps ------------------------------------------------------------------------------

def ones_conv_map(tap_kernel: torch.Tensor, spatial: tuple[int, ...], stride, padding, dilation) -> torch.Tensor:
    """conv(ones image of `spatial` size, tap_kernel (Cout x k...)) with the layer's geometry:
    the exact value of any per-tap constant summed over the valid taps of each output."""
    dims = tap_kernel.dim() - 1
    fn = F.conv2d if dims == 2 else F.conv1d
    ones = tap_kernel.new_ones((1, 1) + tuple(spatial))
    return fn(ones, tap_kernel.unsqueeze(1), None, stride, padding, dilation)[0]


def act_residual_taps(a: ActOperand, wq: torch.Tensor) -> torch.Tensor | None:
    """Per-tap kernel of the activation residual: A' * Da * sum_c w^[o, c, tap] (None if A' = 0).
    `wq` is the dequantized weight of the K-group (Cout x Cin_g x k...)."""
    if a.residual == 0:
        return None
    return float(a.residual) * float(a.step) * wq.sum(dim=1)


def act_shift_taps(op: SymAct, wq: torch.Tensor) -> torch.Tensor | None:
    """Per-tap kernel of the symmetric shift: c * Da * sum_c w^[o, c, tap] (None if c = 0), the
    SymAct counterpart of `act_residual_taps` (j = m + c: the c part the int8 operand drops)."""
    if op.shift == 0:
        return None
    return float(op.shift) * float(op.step) * wq.sum(dim=1)
