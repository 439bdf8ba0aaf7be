"""Run super-resolution with a chosen backend: the part passion-sr and the demo share."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .colorfix import apply_color_fix
from .images import pad_to_multiple, upscale_bicubic
from .models.presets import get_preset
from .models.tiling import decode_tiled, denoise_tiled, encode_tiled

BACKENDS = ("fp32", "fp16", "fakequant")
DEFAULT_PRESET = "tiny"  # the bundled model, when neither --preset nor a checkpoint names one
SCALE = 4
# PassionSR's tile_config for SD (latent tile 64): VAE encoder tiles of 1024 px = 128 latent px,
# decoder tiles of 224 latent px; other models scale them with their UNet tile.
VAE_ENCODER_TILES_PER_UNET_TILE = 2.0
VAE_DECODER_TILES_PER_UNET_TILE = 3.5


@dataclass(frozen=True)
class Tiling:
    """How super_resolve splits an image (latent pixels throughout).

    overlap: UNet tile overlap (None: half the UNet tile, spec section 1).
    vae_tile: "auto" (PassionSR's defaults scaled to the model), "off" (whole image, one call),
      an int (encoder and decoder tile side) or a pair (encoder, decoder). An image that fits in
      one tile runs untiled; give a smaller tile to force tiling.
    vae_overlap: VAE tile overlap (None: a quarter of the VAE tile).
    batch: tiles stacked into one call of a component.
    A pipe with `fixed_vae_latent_tile` = (h, w) (an engine built for one shape) always gets
    VAE tiles of exactly that size, smaller images padded up, whatever vae_tile says.
    """

    overlap: int | None = None
    vae_tile: str | int | tuple[int, int] = "auto"
    vae_overlap: int | None = None
    batch: int = 1


def vae_tiles(pipe, latent_tile: tuple[int, int], setting) -> tuple[tuple[int, int] | None, tuple[int, int] | None, bool]:
    """(encoder tile, decoder tile, exact) in latent pixels for a pipe and a Tiling.vae_tile."""
    fixed = getattr(pipe, "fixed_vae_latent_tile", None)
    if fixed is not None:
        fixed = (int(fixed[0]), int(fixed[1]))
        return fixed, fixed, True
    if setting == "off" or setting is None:
        return None, None, False
    if setting == "auto":
        th, tw = latent_tile
        enc = (int(th * VAE_ENCODER_TILES_PER_UNET_TILE), int(tw * VAE_ENCODER_TILES_PER_UNET_TILE))
        dec = (int(th * VAE_DECODER_TILES_PER_UNET_TILE), int(tw * VAE_DECODER_TILES_PER_UNET_TILE))
        return enc, dec, False
    if isinstance(setting, int):
        setting = (setting, setting)
    enc, dec = (int(setting[0]),) * 2, (int(setting[1]),) * 2
    if min(enc + dec) < 1:
        raise ValueError(f"VAE tiles must be at least 1 latent pixel, got {setting}")
    return enc, dec, False


@dataclass
class SRModel:
    """A model for super_resolve: `pipe` is an SR runtime (export/runtime.py's contract: FP32,
    FP16 and fake-quant PyTorch pipelines and every artifact alike)."""

    pipe: object
    backend: str
    latent_tile: tuple[int, int]
    description: str
    label: str = ""  # short name for a table column or a picture caption

    def __post_init__(self):
        self.label = self.label or self.backend.upper()

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.pipe, "dtype", torch.float32)


def pipeline_model(pipe, backend: str, latent_tile, description: str, label: str = "") -> SRModel:
    """An SRModel running a PyTorch OneStepSR through the runtime contract."""
    from .export.runtime import PipelineSR

    latent_tile = tuple(latent_tile)
    return SRModel(PipelineSR(pipe, backend, latent_tile, description), backend, latent_tile, description, label)


def place(model: SRModel, device) -> SRModel:
    """A PyTorch pipeline's model moved to `device` (passion-sr --device); an artifact's runtime
    keeps the device its target runs on (ONNX Runtime's CPU, TensorRT's GPU, the kernels' GPU)."""
    from .export.runtime import PipelineSR

    if device is not None and isinstance(model.pipe, PipelineSR):
        model.pipe.to(device)
    return model


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


def load_model(preset: str | None = None, backend: str = "fp32", weights=None, lora=None, random_weights=None,
               ckpt=None, config: str = "w8a8", progress: bool = True, calib_exclude: tuple[str, ...] = (),
               model_dir=None) -> SRModel:
    from .checkpoint import load_checkpoint
    from .config import resolve_quant_config
    from .models import build_pipeline
    from .quant import quantize_pipeline

    if model_dir is not None:  # an exported artifact (passion-export): its manifest names the runtime
        from .export.targets import open_artifact

        rt = open_artifact(model_dir)
        return SRModel(rt, rt.backend, rt.latent_tile, rt.description, artifact_label(rt))

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "fakequant" and ckpt is not None:  # the checkpoint names its preset; a --preset given must agree
        pipe = load_checkpoint(ckpt, preset=preset, weights=weights, lora=lora)
        desc = f"fake-quant {pipe.quant_config.name} from {Path(str(pipe.checkpoint_path)).name}"
        return pipeline_model(pipe, backend, pipe.latent_tile, desc, f"fake-quant {short_quant_name(pipe.quant_config.name)}")
    preset = preset or DEFAULT_PRESET
    if backend == "fakequant":
        cfg = resolve_quant_config(config)
        pipe = quantize_pipeline(build_pipeline(preset, weights, lora, random_weights), cfg)
        used = calibrate_on_photos(pipe, progress=progress, exclude=calib_exclude)
        desc = f"fake-quant {cfg.name}, statistics-calibrated on bundled photos ({', '.join(used)})"
        return pipeline_model(pipe, backend, pipe.latent_tile, desc, f"fake-quant {short_quant_name(pipe.quant_config.name)}")
    pipe = build_pipeline(preset, weights, lora, random_weights)
    if backend == "fp16":
        pipe = pipe.half()
    tile = get_preset(preset).latent_tile
    return pipeline_model(pipe, backend, (tile, tile), f"{backend} ({pipe.weights_source})", backend.upper())


def artifact_label(rt) -> str:
    """An artifact runtime's column name: its target and quantization ('ONNX W8A8')."""
    qname = getattr(rt, "manifest", {}).get("quant_config_name", "")
    return f"{rt.backend.upper()} {short_quant_name(qname)}".strip()


def short_quant_name(name: str) -> str:
    """'U-W8A8_V-W8A8' -> 'W8A8'; other config names are kept ('U-W6A6' -> 'W6A6 UNet only')."""
    parts = name.split("_")
    bits = {p.split("-", 1)[1] for p in parts if "-" in p}
    if len(bits) == 1 and len(parts) == 2:
        return bits.pop()
    if len(parts) == 1 and name.startswith("U-"):
        return f"{name[2:]} UNet only"
    return name


@torch.no_grad()
def super_resolve(model: SRModel, lr: torch.Tensor, overlap: int | None = None, tiling: Tiling | None = None,
                  color_fix: str = "none") -> torch.Tensor:
    """3 x h x w LR image in [0, 1] -> 3 x 4h x 4w SR image in [0, 1].

    The LR is bicubic-upscaled x4 and padded (reflection) to the model's size multiple; the VAE
    encoder, the UNet and the VAE decoder each run on tiles (see Tiling); the output is cropped
    back and optionally colour-fixed against the upscaled LR (passion-sr's default is adain;
    this function's is the model's own output)."""
    tiling = tiling or Tiling()
    overlap = tiling.overlap if overlap is None else overlap
    pipe = model.pipe
    up = upscale_bicubic(lr, SCALE)[None]
    x, (h, w) = pad_to_multiple(up, pipe.size_multiple)
    x = x.to(model.dtype)
    enc_tile, dec_tile, exact = vae_tiles(pipe, model.latent_tile, tiling.vae_tile)
    z = encode_tiled(pipe, x, enc_tile, tiling.vae_overlap, tiling.batch, exact)
    z0 = denoise_tiled(pipe, z, model.latent_tile, overlap, tiling.batch)
    sr = decode_tiled(pipe, z0, dec_tile, tiling.vae_overlap, tiling.batch, exact)
    sr = sr[0, :, :h, :w].float().clamp(0, 1)
    return apply_color_fix(color_fix, sr, up[0].float()) if color_fix != "none" else sr
