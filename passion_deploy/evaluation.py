"""Scoring SR outputs against ground truth: which HR file belongs to an LR input, how an HR
whose sides are not multiples of the scale lines up, and the per-image table (CSV + summary).

The metric math itself lives in metrics.py.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .images import list_images
from .metrics import METRIC_NAMES, image_metrics

_LR_MARK = re.compile(r"[_\-.]?(x4|lrx4|lr4|lr)$", re.IGNORECASE)
_HR_MARK = re.compile(r"[_\-.]?hr$", re.IGNORECASE)


def hr_index(folder: Path) -> dict[str, list[Path]]:
    """HR candidates by stem, and by stem without an HR mark (RealSR's Canon_001_HR -> Canon_001).
    Files marked as LR (0801x4, photo_lr) are never HR candidates under their unmarked name."""
    index: dict[str, list[Path]] = {}
    for f in list_images(folder):
        index.setdefault(f.stem, []).append(f)
        if not _LR_MARK.search(f.stem) and _HR_MARK.search(f.stem):
            index.setdefault(_HR_MARK.sub("", f.stem), []).append(f)
    return index


def find_hr(index: dict[str, list[Path]], lr_file: Path) -> Path | None:
    """The HR image of an LR file: for an LR-marked stem the unmarked name first (DIV2K's 0801x4
    -> 0801, RealSR's Canon_001_LR4 -> Canon_001_HR, photo_lr -> photo or photo_hr), then the same
    stem; never the LR file itself."""
    me = lr_file.resolve()
    unmarked = _LR_MARK.sub("", lr_file.stem)
    for key in (unmarked, lr_file.stem) if unmarked != lr_file.stem else (lr_file.stem,):
        for cand in index.get(key, []):
            if cand.resolve() != me:
                return cand
    return None


@dataclass
class MetricsTable:
    """Rows (image, method, psnr_y, ssim_y, psnr_rgb, ssim_rgb) and the per-method summary."""

    rows: list[tuple] = field(default_factory=list)

    def add(self, image: str, method: str, values: tuple[float, ...]) -> None:
        self.rows.append((image, method, *values))

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "method", *METRIC_NAMES])
        for r in self.rows:
            w.writerow([r[0], r[1], *(f"{v:.4f}" if v != math.inf else "inf" for v in r[2:])])
        return buf.getvalue()

    def summary(self) -> str:
        methods: dict[str, list[tuple]] = {}
        for r in self.rows:
            methods.setdefault(r[1], []).append(r[2:])
        order = {"bicubic": 0, "FP32": 1}  # baselines first, then the models as they were added
        methods = dict(sorted(methods.items(), key=lambda kv: order.get(kv[0], 2)))
        width = max(24, *(len(m) for m in methods))
        lines = [f"  {'method':<{width}} {'images':>6} {'PSNR-Y':>8} {'SSIM-Y':>7} {'PSNR-RGB':>8} {'SSIM-RGB':>8}"]
        for m, vals in methods.items():
            means = [_mean([v[i] for v in vals]) for i in range(4)]
            lines.append(f"  {m:<{width}} {len(vals):>6} {means[0]:>8.2f} {means[1]:>7.4f} {means[2]:>8.2f} {means[3]:>8.4f}")
        return "\n".join(lines)


def _mean(vals: list[float]) -> float:
    finite = [v for v in vals if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def align_hr(hr: torch.Tensor, sr_hw: tuple[int, int], scale: int) -> torch.Tensor | None:
    """HR cropped to the SR size when it is larger by less than `scale` on each side (an HR side
    not divisible by the scale lost its last rows when the LR was made, BasicSR's convention);
    None when the two cannot be the same picture."""
    H, W = sr_hw
    if 0 <= hr.shape[-2] - H < scale and 0 <= hr.shape[-1] - W < scale:
        return hr[..., :H, :W]
    return None


def image_metrics_row(sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0) -> tuple[float, ...]:
    """metrics.image_metrics as a row in METRIC_NAMES order."""
    m = image_metrics(sr, hr, crop_border)
    return tuple(m[k] for k in METRIC_NAMES)
