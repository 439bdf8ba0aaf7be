"""Run super-resolution with a chosen backend: the part passion-sr and the demo share."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .images import pad_to_multiple, upscale_bicubic
from .models.presets import get_preset
from .models.tiling import denoise_tiled

BACKENDS = ("fp32", "fp16", "fakequant")
SCALE = 4


@dataclass
class SRModel:
    pipe: torch.nn.Module
    backend: str
    latent_tile: tuple[int, int]
    description: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.backend == "fp16" else torch.float32


def calibrate_on_photos(pipe, latent_tile: int | None = None, progress: bool = True, exclude: tuple[str, ...] = ()):
    """Statistics-only calibration on the bundled photos at one latent tile (no checkpoint needed)."""
    from .calibrate.data import bundled_photos, photo_batches
    from .calibrate.stats import statistics_pass

    latent_tile = latent_tile or get_preset(pipe.preset).latent_tile
    photos = [p for p in bundled_photos() if p.stem not in exclude] or bundled_photos()
    if not photos:
        raise ValueError("no calibration photos are bundled in this installation; pass --ckpt")
    statistics_pass(pipe, photo_batches(photos, latent_tile * pipe.vae_factor), progress=progress)
    return [p.stem for p in photos]


def load_model(preset: str = "tiny", backend: str = "fp32", weights=None, lora=None, random_weights=None,
               ckpt=None, config: str = "w8a8", progress: bool = True, calib_exclude: tuple[str, ...] = (),
               model_dir=None) -> SRModel:
    from .checkpoint import load_checkpoint
    from .config import resolve_quant_config
    from .models import build_pipeline
    from .quant import quantize_pipeline

    if model_dir is not None:  # an exported artifact (passion-export): its manifest names the runtime
        from .export.runtimes import open_artifact

        rt = open_artifact(model_dir)
        return SRModel(rt, rt.backend, rt.latent_tile, rt.description)

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "fakequant":
        if ckpt is not None:
            pipe = load_checkpoint(ckpt, preset=preset, weights=weights)
            desc = f"fake-quant {pipe.quant_config.name} from {Path(str(pipe.checkpoint_path)).name}"
        else:
            cfg = resolve_quant_config(config)
            pipe = quantize_pipeline(build_pipeline(preset, weights, lora, random_weights), cfg)
            used = calibrate_on_photos(pipe, progress=progress, exclude=calib_exclude)
            desc = f"fake-quant {cfg.name}, statistics-calibrated on bundled photos ({', '.join(used)})"
        return SRModel(pipe, backend, tuple(pipe.latent_tile), desc)
    pipe = build_pipeline(preset, weights, lora, random_weights)
    if backend == "fp16":
        pipe = pipe.half()
    tile = get_preset(preset).latent_tile
    return SRModel(pipe, backend, (tile, tile), f"{backend} ({pipe.weights_source})")


@torch.no_grad()
def super_resolve(model: SRModel, lr: torch.Tensor, overlap: int | None = None) -> torch.Tensor:
    """3 x h x w LR image in [0, 1] -> 3 x 4h x 4w SR image in [0, 1]."""
    pipe = model.pipe
    up = upscale_bicubic(lr, SCALE)[None]
    x, (h, w) = pad_to_multiple(up, pipe.size_multiple)
    x = x.to(model.dtype)
    z = pipe.encode(x)
    z0 = denoise_tiled(pipe, z, model.latent_tile, overlap)
    sr = pipe.decode(z0)
    return sr[0, :, :h, :w].float().clamp(0, 1)
