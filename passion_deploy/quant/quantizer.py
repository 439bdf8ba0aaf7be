"""The Learnable Boundary Quantizer (LBQ), spec section 2. This module owns the quantizer math.

Only the boundaries `x_min`, `x_max` are stored (as in PassionSR); step size and zero point
are derived from them on every call:

    symmetric         D = max(|x_max|, |x_min|) / 2^(b-1)   zp = 0
                      q = clamp(R(x/D), -2^(b-1), 2^(b-1)-1)            x^ = q * D
    asym unsigned     D = (x_max - x_min) / (2^b - 1)       zp = R(x_min / D)
                      q = clamp(R(x/D) - zp, 0, 2^b - 1)               x^ = (q + zp) * D
    asym signed       as unsigned, zp = R((x_max + x_min) / (2D)), q in [-2^(b-1), 2^(b-1)-1]

R rounds half away from zero; in training its gradient is the identity (straight-through),
also through the zero point, so the boundaries learn through D and zp.

Precision of D and zp: the project derives them in the activation's dtype. PassionSR creates its
per-tensor bounds as float64, so its D and zp of a per-tensor quantizer are float64, rounded to
float32 only when they meet the tensor (spec passionsr-checkpoints 5.2); a quantizer with
`per_tensor_float64` set (models imported from PassionSR) does the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Degenerate ranges (x_min == x_max, e.g. an all-zero tensor) would give D = 0; any positive
# floor keeps the function defined and maps the whole tensor onto one grid point.
MIN_STEP = 1e-8
EMA_KEEP = 0.95  # x_min <- 0.95 * x_min + 0.05 * batch_min during the statistics pass


def round_half_away(v: torch.Tensor) -> torch.Tensor:
    return torch.sign(v) * torch.floor(torch.abs(v) + 0.5)


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """Round half away from zero with an identity gradient."""
    if not v.requires_grad:  # inference: no gradient to route around the rounding
        return round_half_away(v)
    return v + (round_half_away(v) - v).detach()


@dataclass(frozen=True)
class QuantSpec:
    """Bit width and grid kind of one quantizer."""

    bits: int
    sym: bool = False
    sign: bool = False

    def __post_init__(self):
        if not 2 <= int(self.bits) <= 8:
            raise ValueError(f"bit width must be in 2..8, got {self.bits}")

    @property
    def signed(self) -> bool:
        return self.sym or self.sign

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1


def step_and_zero_point(x_min: torch.Tensor, x_max: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, zp) from the boundaries; zp is integer-valued (straight-through rounded)."""
    if spec.sym:
        d = torch.maximum(x_max.abs(), x_min.abs()) / 2 ** (spec.bits - 1)
        d = d.clamp_min(MIN_STEP)
        return d, torch.zeros_like(d)
    d = ((x_max - x_min) / (2**spec.bits - 1)).clamp_min(MIN_STEP)
    if spec.sign:
        zp = round_ste((x_max + x_min) / (2 * d))
    else:
        zp = round_ste(x_min / d)
    return d, zp


def quantize_codes(x: torch.Tensor, d: torch.Tensor, zp: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer-valued codes q (float dtype) with x^ = (q + zp) * D."""
    return torch.clamp(round_ste(x / d) - zp, spec.qmin, spec.qmax)


def fake_quantize(x: torch.Tensor, x_min: torch.Tensor, x_max: torch.Tensor, spec: QuantSpec,
                  step_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x^ = (q + zp) * D. step_dtype: derive D and zp from the bounds in that dtype, then round
    them to x's dtype (PassionSR's float64 per-tensor bounds); default: in the bounds' dtype."""
    if step_dtype is not None:
        d, zp = step_and_zero_point(x_min.to(step_dtype), x_max.to(step_dtype), spec)
        d, zp = d.to(x.dtype), zp.to(x.dtype)
    else:
        d, zp = step_and_zero_point(x_min, x_max, spec)
    return (quantize_codes(x, d, zp, spec) + zp) * d


class LBQuantizer(nn.Module):
    """Fake-quantizer with learnable boundaries, per tensor or per channel along dim 0.

    State: `enabled` (False passes x through), `observer` (None, "minmax": set the boundaries
    from this call's min/max, "ema": first call sets them, later calls move them by EMA).
    """

    def __init__(self, spec: QuantSpec, channels: int | None = None):
        super().__init__()
        self.spec = spec
        self.channels = channels
        shape = (channels,) if channels else ()
        self.x_min = nn.Parameter(torch.zeros(shape))
        self.x_max = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.enabled = True
        self.observer: str | None = None
        # PassionSR's per-tensor bounds are float64: set for imported models (see the module doc)
        self.per_tensor_float64 = False

    def extra_repr(self) -> str:
        s = self.spec
        kind = "sym" if s.sym else ("asym-signed" if s.sign else "asym-unsigned")
        gran = f"per-channel({self.channels})" if self.channels else "per-tensor"
        return f"{s.bits}-bit {kind} {gran}"

    def _bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.channels:
            return self.x_min, self.x_max
        shape = (-1,) + (1,) * (x.dim() - 1)
        return self.x_min.view(shape), self.x_max.view(shape)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        x = x.detach().float()
        if self.channels:
            flat = x.reshape(x.shape[0], -1)
            lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        else:
            lo, hi = x.min(), x.max()
        if self.observer == "ema" and bool(self.initialized):
            lo = EMA_KEEP * self.x_min + (1 - EMA_KEEP) * lo
            hi = EMA_KEEP * self.x_max + (1 - EMA_KEEP) * hi
        self.x_min.copy_(lo)
        self.x_max.copy_(hi)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.observer is not None:
            self.observe(x)
        elif not bool(self.initialized):
            raise RuntimeError("quantizer used before calibration: run a statistics pass or load a calibrated checkpoint")
        lo, hi = self._bounds(x)
        if self._step_dtype() is not None:
            return fake_quantize(x, lo, hi, self.spec, step_dtype=torch.float64)
        return fake_quantize(x, lo.to(x.dtype), hi.to(x.dtype), self.spec)

    def _step_dtype(self) -> torch.dtype | None:
        return torch.float64 if self.per_tensor_float64 and not self.channels else None

    def step_and_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, zp) as float32 tensors shaped like the boundaries, derived as forward derives them (for exporters)."""
        with torch.no_grad():
            if self._step_dtype() is not None:
                d, zp = step_and_zero_point(self.x_min.to(torch.float64), self.x_max.to(torch.float64), self.spec)
                return d.to(self.x_min.dtype), zp.to(self.x_min.dtype)
            return step_and_zero_point(self.x_min, self.x_max, self.spec)
