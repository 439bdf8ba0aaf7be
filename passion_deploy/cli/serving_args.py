"""The model and SR flags passion-serve and passion-batch share with passion-sr, and the checks
that turn them into a ModelSpec and SRSettings (serving/spec.py) before any server or cluster
starts: a bad flag or model is refused in one sentence, as passion-sr refuses it."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .sr import DEFAULT_MAX_PIXELS, UsageError, _load, check_tiling, parse_vae_tile

if TYPE_CHECKING:
    from ..api import Upscaler
    from ..serving.spec import ModelSpec, SRSettings


def add_model_args(p: argparse.ArgumentParser) -> None:
    from ..api import BACKENDS

    m = p.add_argument_group("model (as passion-sr takes it)")
    m.add_argument("--model", metavar="DIR", help="an artifact directory written by passion-export")
    m.add_argument("--backend", choices=BACKENDS, help="a PyTorch pipeline instead of an artifact, for comparison")
    m.add_argument("--preset", choices=["tiny", "sd21"], help="model preset for --backend (default: the --ckpt's, else tiny)")
    m.add_argument("--ckpt", help="calibrated checkpoint (path or bundled name such as tiny-w8a8) for --backend fakequant")
    m.add_argument("--config", default="w8a8", help="quantization config for --backend fakequant without --ckpt")
    m.add_argument("--weights", help="FP weights for --backend (project .safetensors, diffusers folder, SD checkpoint)")
    m.add_argument("--lora", help="OSEDiff LoRA merged into --weights")
    m.add_argument("--device", default="auto",
                   help="where a --backend pipeline runs: auto (the GPU when there is one), cpu, cuda or cuda:N; an "
                        "artifact runs where its target runs")


def add_sr_args(p: argparse.ArgumentParser) -> None:
    from ..colorfix import COLOR_FIXES, DEFAULT_COLOR_FIX

    t = p.add_argument_group("tiling, colour and the pixel budget (passion-sr's flags and defaults)")
    t.add_argument("--tile-overlap", type=int, metavar="N", help="UNet latent tile overlap (default: half a tile)")
    t.add_argument("--vae-tile", default="auto", metavar="auto|off|N|ENC,DEC", help="VAE tiles in latent pixels (default auto)")
    t.add_argument("--vae-overlap", type=int, metavar="N", help="VAE tile overlap in latent pixels (default: a quarter tile)")
    t.add_argument("--color-fix", default=DEFAULT_COLOR_FIX, choices=COLOR_FIXES, help=f"default {DEFAULT_COLOR_FIX}")
    t.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse LR images over N pixels (default {DEFAULT_MAX_PIXELS}; 0: no limit)")


def model_spec(args) -> "ModelSpec":
    from ..devices import resolve_device
    from ..serving.spec import ModelSpec

    if args.model and args.backend:
        raise UsageError("give --model DIR (an artifact) or --backend, not both")
    if not args.model and not args.backend:
        raise UsageError("give --model DIR (an artifact written by passion-export) or --backend fp32|fp16|fakequant")
    if args.model and not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model}: no such folder")
    resolve_device(args.device)  # refused here in one sentence; kept as given, resolved where the model loads
    return ModelSpec(model_dir=args.model, backend=args.backend or "fp32", preset=args.preset, ckpt=args.ckpt,
                     config=args.config, weights=args.weights, lora=args.lora, device=args.device)


def sr_settings(args) -> "SRSettings":
    from ..serving.spec import SRSettings

    if args.max_pixels < 0:
        raise UsageError(f"--max-pixels {args.max_pixels} must be 0 (no limit) or positive")
    parse_vae_tile(args.vae_tile)  # passion-sr's check and message
    return SRSettings(args.tile_overlap, args.vae_tile, args.vae_overlap, args.color_fix, args.max_pixels)


def load_checked(spec, settings) -> "Upscaler":
    """The model opened through the Python API, as passion-sr opens it, and the tiling checked
    against its tiles (every refusal one sentence). The server's instances and Ray's workers load
    it again for themselves (ModelSpec.load: the same loaders under both)."""
    from .. import api

    def load():
        if spec.model_dir:
            return api.open(spec.model_dir)
        return api.upscaler(spec.backend, spec.preset, spec.ckpt, spec.config, spec.weights, spec.lora,
                            device=spec.device, progress=False)
    model = _load(load)
    check_tiling(model, settings.tiling())
    return model
