"""Build a OneStepSR pipeline from a preset name and a weight source."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import assets
from .loading import WeightsError
from .pipeline import OneStepSR
from .presets import get_preset


def load_context(path: str | Path | None = None) -> torch.Tensor:
    """The fixed cross-attention context: the real SD2.1 empty-prompt embedding by default."""
    path = Path(path) if path else assets.path("sd21_empty_context.safetensors")
    if not path.is_file():
        raise WeightsError(f"{path}: no such context embedding file")
    try:
        if path.suffix == ".safetensors":
            ctx = load_file(str(path)).get("context")
        else:  # PassionSR ships empty_context_embedding.pt: a pickled tensor, read without code execution
            ctx = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise several types for bad files
        raise WeightsError(f"{path}: not a readable context file ({e.__class__.__name__})") from None
    if not isinstance(ctx, torch.Tensor):
        raise WeightsError(f"{path}: holds no context tensor (expected 'context', 77 x dim)")
    ctx = ctx.float()
    if ctx.dim() == 2:
        ctx = ctx[None]
    return ctx


def build_pipeline(
    preset: str = "tiny",
    weights: str | Path | None = None,
    lora: str | Path | None = None,
    random_weights: int | None = None,
    context: str | Path | None = None,
) -> OneStepSR:
    """A one-step SR pipeline in float32, eval mode.

    weights: the project's own safetensors (keys `unet.*` / `vae.*`), a local diffusers folder
    (with unet/ and vae/) or a single-file SD checkpoint (.ckpt/.safetensors).
    With no weights, `tiny` loads its bundled trained weights when they exist; otherwise the
    networks get seeded random weights (`random_weights`, default seed 0 for tiny).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    p = get_preset(preset)
    seed = 0 if random_weights is None else int(random_weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**p.unet_config())
        vae = AutoencoderKL(**p.vae_config())
    source = f"random:{seed}"
    if weights is None and random_weights is None:
        if preset == "tiny" and assets.exists(TINY_WEIGHTS):
            weights = assets.path(TINY_WEIGHTS)
        elif preset != "tiny":
            raise WeightsError(f"preset {preset!r} needs --weights PATH (or --random-weights SEED for benchmarking)")
    if weights is not None:
        if is_project_weights(weights):
            source = load_project_weights(unet, vae, weights)
        else:
            from . import loading  # diffusers folders and single-file SD checkpoints

            source = loading.load_weights(unet, vae, weights, preset=preset)
    if lora is not None:
        from . import loading

        loading.merge_osediff_lora(unet, vae, lora)
        source += loading.lora_source(Path(lora))
    pipe = OneStepSR(unet, vae, load_context(context), preset).eval()
    pipe.weights_source = source
    for prm in pipe.parameters():
        prm.requires_grad_(False)
    return pipe


TINY_WEIGHTS = "tiny/tiny_fp32.safetensors"


def is_project_weights(path: str | Path) -> bool:
    """The project's own weight file: one safetensors with `unet.*` and `vae.*` tensors."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    except Exception:
        return False
    return any(k.startswith("unet.") for k in keys) and any(k.startswith("vae.") for k in keys)


def save_project_weights(unet, vae, path: str | Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    from ..io_utils import atomic_path

    tensors = {f"unet.{k}": v.contiguous() for k, v in unet.state_dict().items()}
    tensors.update({f"vae.{k}": v.contiguous() for k, v in vae.state_dict().items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_project_weights(unet, vae, path: str | Path) -> str:
    """Load `unet.*` / `vae.*` tensors; every expected tensor must be present with its shape."""
    from ..io_utils import sha256_file

    path = Path(path)
    tensors = load_file(str(path))
    for prefix, module in (("unet.", unet), ("vae.", vae)):
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = module.state_dict()
        missing = sorted(set(expected) - set(sd))
        extra = sorted(set(sd) - set(expected))
        if missing or extra:
            what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
            raise WeightsError(f"{path}: does not match this preset's {prefix[:-1]} ({what})")
        for k, v in sd.items():
            if v.shape != expected[k].shape:
                raise WeightsError(f"{path}: {prefix}{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
        module.load_state_dict({k: v.float() for k, v in sd.items()})
    return f"file:{path.name}:sha256:{sha256_file(path)[:16]}"
