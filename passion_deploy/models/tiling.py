"""Latent tiling of the UNet step with overlap and Gaussian blending (spec section 1).

A quantized UNet is tied to the latent tile it was calibrated at: the per-key-token attention
scale s_vw has one entry per latent pixel of that tile. Running every UNet call on exactly
that tile size makes any image size work: larger latents are covered by overlapping tiles
blended with Gaussian weights, smaller ones are edge-padded up to one tile and cropped back.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GAUSS_VAR = 0.01  # variance of the blending window on a [0, 1] tile coordinate, as in OSEDiff


def gaussian_weights(h: int, w: int) -> torch.Tensor:
    def axis(n):
        x = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / n
        return torch.exp(-(x**2) / (2 * GAUSS_VAR)) / math.sqrt(2 * math.pi * GAUSS_VAR)

    return (axis(h)[:, None] * axis(w)[None, :]).float()


def tile_starts(size: int, tile: int, overlap: int | None = None) -> list[int]:
    """Start offsets covering [0, size) with tiles of `tile` and at least `overlap` shared pixels.

    The default overlap is half a tile: the spec's 32 for SD's 64-pixel latent tile. A fixed 32
    would make tiny's 32-pixel tile advance by one pixel per UNet call (1089 calls for a 256 px
    image instead of 9)."""
    overlap = tile // 2 if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap {overlap} must be at least 0 and below the tile size {tile}")
    if size <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((size - tile) / stride) + 1
    starts = [min(i * stride, size - tile) for i in range(n)]
    return sorted(set(starts))


def denoise_tiled(pipe, z: torch.Tensor, tile: tuple[int, int], overlap: int | None = None) -> torch.Tensor:
    """z0 for a latent of any size, calling the UNet only on `tile`-sized latents."""
    th, tw = tile
    h, w = z.shape[-2:]
    ph, pw = max(th - h, 0), max(tw - w, 0)
    if ph or pw:
        z = F.pad(z, (0, pw, 0, ph), mode="replicate")
    H, W = z.shape[-2:]
    if (H, W) == (th, tw):
        return pipe.denoise(z)[..., :h, :w]
    weight = gaussian_weights(th, tw).to(z.device, z.dtype)
    out = torch.zeros_like(z)
    norm = torch.zeros((1, 1, H, W), device=z.device, dtype=z.dtype)
    for y in tile_starts(H, th, overlap):
        for x in tile_starts(W, tw, overlap):
            z0 = pipe.denoise(z[..., y:y + th, x:x + tw])
            out[..., y:y + th, x:x + tw] += z0 * weight
            norm[..., y:y + th, x:x + tw] += weight
    return (out / norm)[..., :h, :w]
