"""Tiled execution of the three pipeline stages, so any image size runs in bounded memory.

UNet (spec section 1): a quantized UNet is tied to the latent tile it was calibrated at (the
per-key-token attention scale s_vw has one entry per latent pixel of that tile), so every
UNet call gets exactly that tile: larger latents are covered by overlapping tiles blended
with Gaussian weights (OSEDiff's window), smaller ones are edge-padded up and cropped back.

VAE encoder / decoder: their activations are the memory peak on large images (SD's decoder
runs 512 channels at full image resolution), so they too run on overlapping tiles when the
image is larger than a tile (PassionSR's defaults: encoder tile 1024 px, decoder tile 224
latent px). A VAE tile sees zero padding at its border where the whole image would have had
content, so its border pixels are its least accurate ones: the VAE blends with a feathered
window (linear ramps across the overlap) that gives tile borders almost no weight and fades
between neighbours over the whole overlap, instead of the Gaussian's narrow cross-over.

Every tile position is computed on the latent grid; a stage maps `in_scale` input pixels and
`out_scale` output pixels to one latent pixel (encoder 8 -> 1, decoder 1 -> 8, UNet 1 -> 1
for SD), so the encoder's latent tiles and the decoder's image tiles line up exactly.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

GAUSS_VAR = 0.01  # variance of the blending window on a [0, 1] tile coordinate, as in OSEDiff


def gaussian_weights(h: int, w: int) -> torch.Tensor:
    def axis(n):
        x = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / n
        return torch.exp(-(x**2) / (2 * GAUSS_VAR)) / math.sqrt(2 * math.pi * GAUSS_VAR)

    return (axis(h)[:, None] * axis(w)[None, :]).float()


def feather_weights(h: int, w: int, ramp_h: int, ramp_w: int) -> torch.Tensor:
    """A tile window rising linearly over `ramp` pixels from each edge to 1 (never exactly 0).

    Two neighbours overlapping by exactly `ramp` pixels cross-fade linearly (their weights sum
    to one everywhere); a wider overlap (the last tile of a row is shifted back to fit) only
    lengthens the plateau where both count fully."""

    def axis(n, ramp):
        i = torch.arange(n, dtype=torch.float64) + 0.5
        if ramp <= 0:
            return torch.ones(n, dtype=torch.float64)
        return torch.minimum(torch.clamp(i / ramp, max=1.0), torch.clamp((n - i) / ramp, max=1.0))

    return (axis(h, ramp_h)[:, None] * axis(w, ramp_w)[None, :]).float()


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


def _pad(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    if not (ph or pw):
        return x
    if mode == "reflect" and not (ph < x.shape[-2] and pw < x.shape[-1]):
        mode = "replicate"  # reflection needs the pad to be shorter than the side it mirrors
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: tuple[int, int],
              overlap: int | None = None, *, in_scale: int = 1, out_scale: int = 1, window: str = "gaussian",
              exact: bool = False, batch: int = 1, pad_mode: str = "replicate") -> torch.Tensor:
    """fn applied to 1 x C x H x W `x` tile by tile, tiles blended into one output.

    `tile` and `overlap` are in latent pixels; x has `in_scale` pixels per latent pixel (its
    sides must be multiples of it) and fn's output `out_scale`. exact=True: fn only accepts
    exactly `tile` (a calibrated UNet, a fixed-shape engine), so smaller inputs are padded up
    with `pad_mode` and the output cropped back; otherwise a side that fits in one tile is
    processed whole, and an input that fits entirely is a single plain call. Up to `batch`
    tiles are stacked into one call. Blending accumulates in float32; the result has fn's dtype.
    """
    if x.shape[0] != 1:
        raise ValueError(f"run_tiled takes one image (batch 1), got a batch of {x.shape[0]}")
    if batch < 1:
        raise ValueError(f"tile batch must be at least 1, got {batch}")
    H, W = x.shape[-2:]
    if H % in_scale or W % in_scale:
        raise ValueError(f"input size {H}x{W} is not a multiple of {in_scale}")
    gh, gw = H // in_scale, W // in_scale
    th, tw = tile
    # per axis; the default is half a tile, as for the UNet (see tile_starts)
    ov_h, ov_w = (th // 2, tw // 2) if overlap is None else (overlap, overlap)
    if not (0 <= ov_h < th and 0 <= ov_w < tw):
        raise ValueError(f"tile overlap {overlap} must be at least 0 and below the tile size {th}x{tw}")
    if exact:
        x = _pad(x, max(th - gh, 0) * in_scale, max(tw - gw, 0) * in_scale, pad_mode)
    else:
        if gh <= th and gw <= tw:
            return fn(x)
        th, tw = min(th, gh), min(tw, gw)  # a side that fits in one tile is processed whole
    PH, PW = x.shape[-2] // in_scale, x.shape[-1] // in_scale
    if (PH, PW) == (th, tw):
        return fn(x)[..., :gh * out_scale, :gw * out_scale]

    ys = tile_starts(PH, th, ov_h) if PH > th else [0]
    xs = tile_starts(PW, tw, ov_w) if PW > tw else [0]
    if window == "gaussian":
        win = gaussian_weights(th * out_scale, tw * out_scale)
    elif window == "feather":
        win = feather_weights(th * out_scale, tw * out_scale, ov_h * out_scale, ov_w * out_scale)
    else:
        raise ValueError(f"unknown blending window {window!r}")
    out = norm = None
    out_dtype = None
    positions = [(y, xx) for y in ys for xx in xs]
    for i in range(0, len(positions), batch):
        chunk = positions[i:i + batch]
        stack = torch.cat([x[..., y * in_scale:(y + th) * in_scale, xx * in_scale:(xx + tw) * in_scale]
                           for y, xx in chunk], dim=0)
        res = fn(stack)
        if out is None:
            out_dtype = res.dtype
            out = torch.zeros((1, res.shape[1], PH * out_scale, PW * out_scale), dtype=torch.float32, device=res.device)
            norm = torch.zeros((1, 1, PH * out_scale, PW * out_scale), dtype=torch.float32, device=res.device)
            win = win.to(res.device)
        for (y, xx), r in zip(chunk, res):
            oy, ox = y * out_scale, xx * out_scale
            out[0, :, oy:oy + th * out_scale, ox:ox + tw * out_scale] += r.float() * win
            norm[0, :, oy:oy + th * out_scale, ox:ox + tw * out_scale] += win
    return (out / norm)[..., :gh * out_scale, :gw * out_scale].to(out_dtype)


def vae_overlap(tile: tuple[int, int], overlap: int | None) -> int:
    """The VAE tiles' overlap: the given one, else a quarter tile (PassionSR's tiled VAE pads its
    tiles by 32 of 1024 encoder px and 11 of 224 decoder latent px; a quarter tile gives the
    feathered cross-fade room to hide the tiles' GroupNorm and border differences)."""
    return min(tile) // 4 if overlap is None else overlap


def denoise_tiled(pipe, z: torch.Tensor, tile: tuple[int, int], overlap: int | None = None,
                  batch: int = 1) -> torch.Tensor:
    """z0 for a latent of any size, calling the UNet only on `tile`-sized latents."""
    return run_tiled(pipe.denoise, z, tile, overlap, window="gaussian", exact=True, batch=batch)


def encode_tiled(pipe, x: torch.Tensor, tile: tuple[int, int] | None, overlap: int | None = None,
                 batch: int = 1, exact: bool = False) -> torch.Tensor:
    """VAE latent of an image (sides multiples of pipe.vae_factor) from image tiles of `tile`
    latent pixels (None: one call on the whole image). Overlap defaults to a quarter tile."""
    if tile is None:
        return pipe.encode(x)
    ov = vae_overlap(tile, overlap)
    return run_tiled(pipe.encode, x, tile, ov, in_scale=pipe.vae_factor, window="feather", exact=exact,
                     batch=batch, pad_mode="reflect")


def decode_tiled(pipe, z0: torch.Tensor, tile: tuple[int, int] | None, overlap: int | None = None,
                 batch: int = 1, exact: bool = False) -> torch.Tensor:
    """Decoded image of a latent from latent tiles of `tile` (None: one call on the whole latent)."""
    if tile is None:
        return pipe.decode(z0)
    ov = vae_overlap(tile, overlap)
    return run_tiled(pipe.decode, z0, tile, ov, out_scale=pipe.vae_factor, window="feather", exact=exact,
                     batch=batch, pad_mode="replicate")
