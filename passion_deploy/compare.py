"""Side-by-side comparison pictures: the same crop of LR | FP32 | each backend | HR, labelled.

People judge a quantized SR model by looking, and differences hide in texture, so the crop
defaults to the most textured window of the LR image (largest mean gradient magnitude of its
luma), the same window for every column. The LR column is nearest-neighbour upscaled so its
pixels line up with the 4x outputs and show what the model was given.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .images import to_uint8
from .io_utils import atomic_path

DEFAULT_CROP = 48  # LR pixels: 192 px columns at 4x, six columns stay under ~1200 px wide
GAP = 4  # pixels between columns
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
FONT_SIZE = 13


def parse_crop(text: str) -> tuple[int, int, int, int] | None:
    """'auto' -> None; 'X,Y,W,H' (LR pixels) -> the tuple. Raises ValueError with the reason."""
    if text.strip().lower() == "auto":
        return None
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or vals[0] < 0 or vals[1] < 0 or vals[2] < 1 or vals[3] < 1:
        raise ValueError(f"crop {text!r} must be 'auto' or X,Y,W,H in LR pixels (X, Y >= 0; W, H >= 1)")
    return vals  # type: ignore[return-value]


def clip_crop(crop: tuple[int, int, int, int], h: int, w: int) -> tuple[int, int, int, int]:
    """The crop moved/shrunk to lie inside an h x w image."""
    x, y, cw, ch = crop
    cw, ch = min(cw, w), min(ch, h)
    return min(x, w - cw), min(y, h - ch), cw, ch


def auto_crop(lr: torch.Tensor, size: int = DEFAULT_CROP) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the size x size LR window with the largest mean gradient magnitude."""
    h, w = lr.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    luma = (0.299 * lr[0] + 0.587 * lr[1] + 0.114 * lr[2]).double().numpy()
    grad = np.zeros_like(luma)
    grad[:, :-1] += np.abs(np.diff(luma, axis=1))
    grad[:-1, :] += np.abs(np.diff(luma, axis=0))
    integral = np.pad(grad.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = max(1, min(ch, cw) // 4)
    ys = sorted(set(list(range(0, h - ch + 1, step)) + [h - ch]))
    xs = sorted(set(list(range(0, w - cw + 1, step)) + [w - cw]))
    best, best_score = (0, 0), -1.0
    for y in ys:
        for x in xs:
            s = integral[y + ch, x + cw] - integral[y, x + cw] - integral[y + ch, x] + integral[y, x]
            if s > best_score + 1e-12:  # ties keep the first (top-left) window: deterministic
                best, best_score = (y, x), s
    return best[1], best[0], cw, ch


def nearest_upscale(img: torch.Tensor, scale: int) -> torch.Tensor:
    return img.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)  # FreeType build of PIL >= 10.1
    except (TypeError, OSError):
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """text, shortened with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def compose(columns: list[tuple[str, str, torch.Tensor]], crop_lr: tuple[int, int, int, int], scale: int = 4) -> Image.Image:
    """One picture: per column (title, subtitle, 3 x sH x sW image at output scale), the output
    region of the LR crop (x, y, w, h), columns side by side under their two label lines."""
    x, y, w, h = crop_lr
    X, Y, W, H = x * scale, y * scale, w * scale, h * scale
    font = _font()
    line = FONT_SIZE + 4
    header = 2 * line + 6
    canvas = Image.new("RGB", (len(columns) * W + (len(columns) - 1) * GAP, header + H), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, (title, subtitle, img) in enumerate(columns):
        left = i * (W + GAP)
        tile = img[:, Y:Y + H, X:X + W]
        if tile.shape[-2:] != (H, W):
            raise ValueError(f"column {title!r} is {tuple(img.shape[-2:])}, too small for the crop {crop_lr} at x{scale}")
        canvas.paste(Image.fromarray(to_uint8(tile), "RGB"), (left, header))
        draw.text((left + 2, 3), _fit(draw, title, font, W - 4), fill=TEXT, font=font)
        if subtitle:
            draw.text((left + 2, 3 + line), _fit(draw, subtitle, font, W - 4), fill=TEXT, font=font)
    return canvas


def save_picture(path: str | os.PathLike, picture: Image.Image) -> None:
    """PNG written to a temp file then renamed (a reader never sees half a picture)."""
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG", optimize=True)
