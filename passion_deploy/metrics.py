"""Full-reference image quality: PSNR and SSIM on RGB and on the Y channel, as SR papers report.

Y is ITU-R BT.601 luma of studio-swing YCbCr (MATLAB's rgb2ycbcr, what BasicSR and the
OSEDiff / PassionSR evaluations use): Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B
in [0, 1], giving Y in [16, 235] on a 0..255 scale. Y metrics use a 255 peak on that scale.

SSIM is Wang et al. 2004: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
population (not sample) covariances, statistics only where the window fits inside the image
("valid"), averaged over the map and, for RGB, over the channels. That is exactly
skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...), which the tests check against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_WIN = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03
Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """(B x) 3 x H x W RGB in [0, 1] -> (B x) 1 x H x W BT.601 Y on the 0..255 scale (16..235)."""
    r, g, b = img.double().unbind(-3)
    y = 16.0 + Y_WEIGHTS[0] * r + Y_WEIGHTS[1] * g + Y_WEIGHTS[2] * b
    return y.unsqueeze(-3)


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR in dB of two same-shape tensors whose signal range is [0, peak]: 10 log10(peak^2 / MSE)."""
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs same-shape images, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(peak * peak / mse)


def output_psnr(out: torch.Tensor, ref: torch.Tensor, image: bool) -> float:
    """PSNR of a model output against its reference, as --verify and every benchmark score one:
    an image clamped to [0, 1] with peak 1 (what is displayed); any other output (a latent, the
    UNet's eps) with the reference's own range as its peak, as it has no fixed signal range."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if image:
        return psnr(out.clamp(0, 1), ref.clamp(0, 1), peak=1.0)
    return psnr(out, ref, peak=float(ref.max() - ref.min()))


def db_value(v: float) -> float | str:
    """A dB value as records keep it: 2 decimals, "inf" for identical outputs (JSON has no infinity)."""
    return "inf" if math.isinf(v) else round(v, 2)


def _gaussian_window(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM of two (B x) C x H x W images (channels averaged); sides must be >= 11."""
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs same-shape images, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {tuple(a.shape[-2:])}")
    x = a.double().reshape(-1, 1, *a.shape[-2:])
    y = b.double().reshape(-1, 1, *b.shape[-2:])
    w = _gaussian_window()[None, None].to(x.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return smap.mean(dim=(1, 2, 3)).mean().item()  # per channel, then averaged (as skimage)


METRIC_NAMES = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")


def image_metrics(sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0) -> dict[str, float]:
    """PSNR / SSIM on Y (0..255 scale, peak 255) and on RGB ([0, 1], peak 1) of 3 x H x W images,
    after removing `crop_border` pixels on every side (SR papers often crop the scale factor)."""
    if sr.shape != hr.shape:
        raise ValueError(f"metrics need same-size images, got {tuple(sr.shape)} and {tuple(hr.shape)}")
    if crop_border:
        sr = sr[..., crop_border:-crop_border, crop_border:-crop_border]
        hr = hr[..., crop_border:-crop_border, crop_border:-crop_border]
    ys, yh = rgb_to_y(sr), rgb_to_y(hr)
    fits = min(sr.shape[-2:]) >= SSIM_WIN  # SSIM is undefined (NaN) on images smaller than its window
    return {
        "psnr_y": psnr(ys, yh, peak=255.0),
        "ssim_y": ssim(ys, yh, data_range=255.0) if fits else math.nan,
        "psnr_rgb": psnr(sr, hr, peak=1.0),
        "ssim_rgb": ssim(sr, hr, data_range=1.0) if fits else math.nan,
    }
