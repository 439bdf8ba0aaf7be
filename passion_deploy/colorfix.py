"""Colour correction of an SR output against its bicubic-upscaled LR, as OSEDiff and PassionSR
offer (`align_method`: wavelet, adain, nofix; OSEDiff's inference default is adain).

A one-step diffusion SR model can drift in colour (a tint, a shifted mean); its LR input
carries the true colours. Both fixes keep the model's detail and take colour from the LR:

- adain: per channel, move the SR image's mean and standard deviation to the LR's
  (adaptive instance normalisation over the whole image).
- wavelet: replace the SR image's low-frequency part by the LR's; low frequencies come from
  an iterated dilated 3x3 blur (a trous wavelet, 5 levels, dilation 1..16).

Both follow OSEDiff's wavelet_color_fix.py, including its unbiased variance with eps 1e-5
and replicate padding. They run on the whole image, after tiles are blended, so the global
statistics are those of the image, not of one tile.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("adain", "wavelet", "none")
DEFAULT_COLOR_FIX = "adain"  # OSEDiff's inference default (and PassionSR's inference config)
WAVELET_LEVELS = 5
ADAIN_EPS = 1e-5


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(-2)
    return flat.mean(-1)[..., None, None], (flat.var(-1) + ADAIN_EPS).sqrt()[..., None, None]


def adain_color_fix(sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B x) 3 x H x W: sr's per-channel mean and std replaced by ref's."""
    sr64, ref64 = sr.double(), ref.double()
    m_s, s_s = _mean_std(sr64)
    m_r, s_r = _mean_std(ref64)
    return ((sr64 - m_s) / s_s * s_r + m_r).to(sr.dtype)


def wavelet_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """One a trous level: the 3x3 binomial kernel [1 2 1]^T [1 2 1] / 16, dilated."""
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype, device=x.device) / 16
    c = x.shape[-3]
    k = k.expand(c, 1, 3, 3)
    y = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(y, k, groups=c, dilation=dilation)


def wavelet_split(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with high + low == x: low is `levels` iterated blurs, high what they removed."""
    low = x
    for i in range(levels):
        low = wavelet_blur(low, 2**i)
    return x - low, low


def wavelet_color_fix(sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B x) 3 x H x W: sr's high frequencies on ref's low frequencies."""
    squeeze = sr.dim() == 3
    s, r = (sr[None], ref[None]) if squeeze else (sr, ref)
    high, _ = wavelet_split(s.float())
    _, low = wavelet_split(r.float())
    out = (high + low).to(sr.dtype)
    return out[0] if squeeze else out


def apply_color_fix(method: str, sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """sr colour-corrected towards ref (same shape) by `method`, clamped to [0, 1]."""
    if method not in COLOR_FIXES:
        raise ValueError(f"unknown colour fix {method!r}; choose one of {', '.join(COLOR_FIXES)}")
    if sr.shape != ref.shape:
        raise ValueError(f"colour fix needs same-size images, got {tuple(sr.shape)} and {tuple(ref.shape)}")
    if method == "adain":
        sr = adain_color_fix(sr, ref)
    elif method == "wavelet":
        sr = wavelet_color_fix(sr, ref)
    return sr.clamp(0, 1)
