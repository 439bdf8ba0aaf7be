"""Image files in and out, and the resampling the one-step SR pipeline expects.

Resampling uses PIL's bicubic filter (what OSEDiff and PassionSR use to make and upscale LR
images), applied per channel in float mode so no 8-bit rounding sneaks in.
"""
from __future__ import annotations

from .errors import PassionError
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .io_utils import atomic_path, not_a_file
from .metrics import psnr  # noqa: F401  (its home is metrics.py; kept importable from here)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class ImageError(PassionError):
    """An image file that cannot be used; the message names the file and the problem."""


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> torch.Tensor:
    """Any RGB/RGBA/grayscale/palette/16-bit image -> float32 tensor 3 x H x W in [0, 1].

    `max_pixels` refuses larger images from the file header, before any pixel is decoded (a
    huge file would otherwise fill memory while loading). PIL's own decompression-bomb guard
    (about 179 MP) still refuses anything larger, also by name. EXIF orientation is applied,
    so outputs are upright the way viewers show the input.
    """
    path = Path(path)
    why = not_a_file(path)  # broken links, loops, folders and devices named as such (a FIFO would block)
    if why:
        raise ImageError(f"{path}: {'no such file' if why == 'does not exist' else why}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the budget below decides
            with Image.open(path) as im:
                w, h = im.size
                if max_pixels and w * h > max_pixels:
                    raise ImageError(f"{path}: refused, {w}x{h} = {w * h:,} pixels is over the pixel budget of "
                                     f"{max_pixels:,} (raise --max-pixels to process it in tiles)")
                im.load()
                arr = _to_rgb_array(ImageOps.exif_transpose(im) or im)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused as a decompression bomb by PIL ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{path}: the image has no pixels")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if a.max() > 255 or im.mode.startswith("I;16") else 255.0
        a = np.clip(a / top, 0.0, 1.0).astype(np.float32)
        return np.repeat(a[:, :, None], 3, axis=2)
    if im.mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.repeat(a[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # transparent pixels go on white, as an image viewer shows them
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return a


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """3 x H x W tensor in [0, 1] -> H x W x 3 uint8, rounded to nearest (what write_png stores)."""
    return (img.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)


def quantize_8bit(img: torch.Tensor) -> torch.Tensor:
    """The float image write_png would store: each value rounded to the nearest 1/255."""
    return torch.from_numpy(np.ascontiguousarray(to_uint8(img).transpose(2, 0, 1))).float() / 255.0


def write_png(path: str | os.PathLike, img: torch.Tensor) -> None:
    """3 x H x W tensor in [0, 1] -> 8-bit PNG, written to a temp file then renamed."""
    arr = to_uint8(img)
    with atomic_path(path) as tmp:
        Image.fromarray(arr, "RGB").save(tmp, format="PNG")


def resize_bicubic(img: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """PIL bicubic resize of a (B x) 3 x H x W float tensor to size_hw, per channel in float mode.

    PIL antialiases when downscaling (like MATLAB's imresize), which is how LR images of SR
    datasets are made; upscaling is plain bicubic.
    """
    squeeze = img.dim() == 3
    x = img[None] if squeeze else img
    h, w = size_hw
    out = torch.empty(x.shape[0], x.shape[1], h, w, dtype=torch.float32)
    xs = x.detach().float().cpu().numpy()
    for b in range(xs.shape[0]):
        for c in range(xs.shape[1]):
            ch = Image.fromarray(xs[b, c], mode="F").resize((w, h), Image.BICUBIC)
            out[b, c] = torch.from_numpy(np.array(ch, dtype=np.float32))
    out = out.to(img.device)
    return out[0] if squeeze else out


def upscale_bicubic(lr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    h, w = lr.shape[-2:]
    return resize_bicubic(lr, (h * scale, w * scale)).clamp(0, 1)


def downscale_bicubic(hr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of {scale}")
    return resize_bicubic(hr, (h // scale, w // scale)).clamp(0, 1)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the bottom/right of B x C x H x W so H and W are multiples; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def list_images(path: str | os.PathLike) -> list[Path]:
    """A single file, or a folder's entries with an image suffix sorted by name. Every such entry is
    listed, not only readable files: a broken symbolic link, a link loop or a folder named x.png
    is then refused by name when it is read (read_image), like any bad file, not dropped."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]
