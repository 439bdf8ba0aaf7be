"""Calibration inputs: LR/HR pairs made the way the SR pipeline sees them (spec section 5)."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import assets
from ..images import downscale_bicubic, list_images, read_image, resize_bicubic, upscale_bicubic

SCALE = 4


def bundled_photos() -> list[Path]:
    """The real photos shipped in the package (held out from the tiny model's training)."""
    folder = assets.path("photos")
    return list_images(folder) if folder.is_dir() else []


def center_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Largest centred square of a 3 x H x W image, resized (PIL bicubic) to size x size."""
    h, w = img.shape[-2:]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = img[..., y:y + s, x:x + s]
    return crop if s == size else resize_bicubic(crop, (size, size)).clamp(0, 1)


def pair_from_hr(hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lr_up, hr): LR by PIL bicubic x4 downscaling, then bicubic-upscaled back to HR size."""
    return upscale_bicubic(downscale_bicubic(hr, SCALE), SCALE), hr


def photo_batches(paths: list[Path], size_px: int) -> list[torch.Tensor]:
    """One 1 x 3 x size x size pipeline input per photo (centre square, LR made from it)."""
    return [pair_from_hr(center_square(read_image(p), size_px))[0][None] for p in paths]
