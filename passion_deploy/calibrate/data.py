"""Calibration inputs: LR/HR pairs made the way the SR pipeline sees them (spec section 5)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .. import assets
from ..errors import PassionError
from ..images import downscale_bicubic, list_images, read_image, resize_bicubic, upscale_bicubic

SCALE = 4
# the bundled photos no checkpoint here is calibrated on: cli/sd21_cpu.py calibrates the sd21
# benchmark checkpoint on the rest, the tiny checkpoints are calibrated on training crops
# (calibrate/bundled.py); passion-bench scores fidelity on them
HELD_OUT = ("chelsea", "coffee")


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


class CalibrationDataError(PassionError):
    """Calibration images that cannot be used; the message names the folder or file."""


def load_calibration_pairs(folder: str | Path, size_px: int) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """(lr_up, hr, name) per image of a calibration folder, both 1 x 3 x size x size.

    The folder holds `lr/` and `hr/` with matching file names (LR then bicubic-upscaled x4), or
    only HR images (directly or in `hr/`), whose LR is made by bicubic x4 downscaling. HR is
    centre-cropped to a square and resized to `size_px` (the calibrated tile size).
    """
    from ..images import ImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationDataError(f"{folder}: calibration image folder does not exist")
    hr_dir = folder / "hr" if (folder / "hr").is_dir() else folder
    lr_dir = folder / "lr" if (folder / "lr").is_dir() else None
    hr_files = list_images(hr_dir)
    if not hr_files:
        raise CalibrationDataError(f"{hr_dir}: no calibration images found")
    if size_px % (4 * SCALE):
        raise CalibrationDataError(f"{folder}: process size {size_px} must be a multiple of {4 * SCALE}")
    pairs = []
    for f in hr_files:
        try:
            hr = center_square(read_image(f), size_px)
            if lr_dir is not None:
                match = [p for p in list_images(lr_dir) if p.stem == f.stem]
                if not match:
                    raise CalibrationDataError(f"{lr_dir}: no LR image matches {f.name}")
                lr = center_square(read_image(match[0]), size_px // SCALE)
                lr_up = upscale_bicubic(lr, SCALE)
            else:
                lr_up = pair_from_hr(hr)[0]
        except ImageError as e:
            raise CalibrationDataError(str(e)) from None
        pairs.append((lr_up[None], hr[None], f.stem))
    return pairs


def calibration_images(preset: str | None, px: int, calib_dir=None) -> tuple[list[torch.Tensor], str]:
    """The images the project's own calibration of a checkpoint of `preset` uses, at its calibrated
    tile (px square), for a baseline calibrated alike (passion-bench's NNCF INT8):
    `calib_dir` when given (passion-bench --calib-images, passion-calibrate's cali_img_path layout),
    else for the tiny preset the bundled checkpoints' calibration set (calibrate/bundled.py: HR
    crops of the tiny model's training photos; needs scikit-image) and for other presets the
    bundled photos that are not held out (as cli/sd21_cpu.py calibrates)."""
    if calib_dir is not None:
        pairs = load_calibration_pairs(calib_dir, px)
        return [p[0] for p in pairs], f"{len(pairs)} from {calib_dir}"
    if preset == "tiny":
        try:
            from .bundled import write_calibration_set

            with tempfile.TemporaryDirectory(prefix="passion-cali-") as tmp:
                write_calibration_set(Path(tmp))
                pairs = load_calibration_pairs(tmp, px)
        except ImportError:
            raise ValueError("the tiny checkpoints' calibration set is made from scikit-image's photos, which is not "
                             "installed here: pip install scikit-image, or give --calib-images DIR") from None
        return [p[0] for p in pairs], f"the tiny checkpoints' calibration set ({len(pairs)} crops of training photos)"
    photos = [p for p in bundled_photos() if p.stem not in HELD_OUT]
    return photo_batches(photos, px), ", ".join(p.stem for p in photos)
