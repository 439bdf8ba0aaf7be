"""Calibrated checkpoints: one safetensors file, no pickle anywhere on the load path.

Tensors: every quantization tensor of the fake-quant model (quantizer boundaries, LET scales
and offsets, attention scales, init flags) under `unet.` / `vae.` prefixes, plus optionally
the FP weights under their usual diffusers names and the cross-attention context
(`pipeline.context`, written for imported models whose context is not the bundled one).
Metadata (JSON strings): format and version, model preset, quantization config (with each
part's LET form), the FP weights' source, tool version; for a model whose architecture is no
preset (preset "custom", e.g. imported from an ldm config), `architecture`: the diffusers
configs of its UNet and VAE.

Loading validates everything before touching a model: format, preset, config, the exact set
of tensor names and every shape. A bad file fails with one sentence that names the problem.
"""
from __future__ import annotations

from .errors import PassionError
import json
from pathlib import Path

import torch

from . import __version__, assets
from .config import ConfigError, QuantConfig
from .io_utils import atomic_path

FORMAT = "passion-deploy/calibrated-checkpoint"
FORMAT_VERSION = 1
COMPONENTS = ("unet", "vae")
BUNDLED = {"tiny-w8a8": "tiny/tiny-w8a8.safetensors", "tiny-w6a6": "tiny/tiny-w6a6.safetensors"}
CUSTOM_PRESET = "custom"  # the preset name of a model built from recorded diffusers configs
CONTEXT_TENSOR = "pipeline.context"


class CheckpointError(PassionError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def quant_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The quantization tensors of a fake-quant component (everything but the FP model's own)."""
    from .quant.attention import QuantAttnProcessor
    from .quant.layers import QuantLayer

    sd = module.state_dict()
    keep = {}
    for path, m in module.named_modules():
        if isinstance(m, (QuantLayer, QuantAttnProcessor)):
            fp_own = {f"{path}.weight", f"{path}.bias"} if isinstance(m, QuantLayer) else set()
            for k in m.state_dict(prefix=f"{path}.").keys():
                if k not in fp_own:
                    keep[k] = sd[k]
    return keep


def checkpoint_tensors(pipe, include_fp_weights: bool = False) -> dict[str, torch.Tensor]:
    tensors = {}
    for comp in COMPONENTS:
        module = getattr(pipe, comp)
        sd = module.state_dict() if include_fp_weights else quant_state_dict(module)
        tensors.update({f"{comp}.{k}": v.detach().contiguous().cpu() for k, v in sd.items()})
    return tensors


def checkpoint_metadata(pipe, include_fp_weights: bool = False, extra: dict | None = None) -> dict[str, str]:
    config: QuantConfig = pipe.quant_config
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "tool_version": __version__,
        "preset": pipe.preset,
        "quant_config": config.to_json(),
        "weights_source": getattr(pipe, "weights_source", "unknown"),
        "includes_fp_weights": json.dumps(include_fp_weights),
        "latent_tile": json.dumps(list(pipe.latent_tile)),
        "extra": json.dumps(extra or {}),
        **({"architecture": json.dumps(pipe.architecture)} if getattr(pipe, "architecture", None) else {}),
    }


def save_checkpoint(pipe, path: str | Path, include_fp_weights: bool = False, extra: dict | None = None,
                    more_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write the calibrated state of a fake-quant pipeline atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    tensors = checkpoint_tensors(pipe, include_fp_weights)
    tensors.update(more_tensors or {})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=checkpoint_metadata(pipe, include_fp_weights, extra))


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A bundled checkpoint name (tiny-w8a8, tiny-w6a6) or a path."""
    key = str(name_or_path)
    if key in BUNDLED:
        p = assets.path(BUNDLED[key])
        if not p.is_file():
            raise CheckpointError(f"{key}: the bundled checkpoint is not in this installation ({p})")
        return p
    return Path(name_or_path)


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container


def _torch_keys(path: Path) -> list[str] | None:
    """Top-level keys of a torch.save file, read without executing code; None if it is none."""
    with open(path, "rb") as f:
        if f.read(4) != ZIP_MAGIC:
            return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (a pickle that needs code, or a damaged file: not ours either way)
        return []
    return [str(k) for k in obj] if isinstance(obj, dict) else []


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except Exception:  # noqa: BLE001  (not safetensors: read_checkpoint says so)
        return []


def foreign_kind(path: Path) -> str | None:
    """What a file given where a calibrated checkpoint belongs is, and which command takes it, when
    it is one of the files a PassionSR / OSEDiff user has (None for anything else)."""
    keys = _torch_keys(path)
    if keys is None:
        keys = _safetensors_keys(path) if path.suffix == ".safetensors" else []
    if any(k.startswith("model.model.") for k in keys):
        return "a PassionSR quantization checkpoint (.pth); turn it into one with passion-import"
    if "state_dict" in keys or any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in keys):
        return ("an SD checkpoint (FP weights); give it as --weights, or to passion-import --sd-ckpt with "
                "PassionSR's quantization files")
    if {"unet_state_dict", "state_dict_unet"} & set(keys):
        return "an OSEDiff LoRA; give it as --lora, or to passion-import --lora"
    return None


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) after checking the file is a readable checkpoint of this format."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes)")
    foreign = foreign_kind(path)
    if foreign:
        raise CheckpointError(f"{path}: {foreign}, not a passion-deploy calibrated checkpoint")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint, truncated or corrupt ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a passion-deploy calibrated checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')} is not supported (this tool reads {FORMAT_VERSION})")
    for key in ("preset", "quant_config", "includes_fp_weights", "latent_tile"):
        if key not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata lacks {key!r}")
    return meta, tensors


def apply_tensors(pipe, tensors: dict[str, torch.Tensor], path, includes_fp: bool = False) -> None:
    """Check names, shapes and dtypes of `tensors` against the fake-quant `pipe`, then load them.

    Attention scales per key token are sized by calibration, so their length is taken from the
    file. Nothing is copied unless everything matches.
    """
    from .quant.wrap import attention_processors

    for comp in COMPONENTS:
        for name, proc in attention_processors(getattr(pipe, comp)):
            t = tensors.get(f"{comp}.{name}.s_vw")
            if t is not None and t.dim() == 1 and t.numel() != proc.s_vw.numel():
                proc.resize_s_vw(t.numel())
    expected = {}
    for comp in COMPONENTS:
        module = getattr(pipe, comp)
        sd = module.state_dict() if includes_fp else quant_state_dict(module)
        expected.update({f"{comp}.{k}": v for k, v in sd.items()})
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} tensor(s) missing for this preset and config, e.g. {missing[0]!r}")
    if extra:
        raise CheckpointError(f"{path}: {len(extra)} unexpected tensor(s) for this preset and config, e.g. {extra[0]!r}")
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(tensors[k].shape)}, expected {tuple(v.shape)}")
        if tensors[k].dtype != v.dtype:
            raise CheckpointError(f"{path}: tensor {k!r} has dtype {tensors[k].dtype}, expected {v.dtype}")
    with torch.no_grad():
        for comp in COMPONENTS:
            prefix = f"{comp}."
            getattr(pipe, comp).load_state_dict(
                {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=includes_fp)


def pipeline_from_architecture(architecture: dict, context: torch.Tensor, seed: int = 0):
    """A float32 OneStepSR (preset "custom") with seeded random weights, from the diffusers configs
    {"unet": ..., "vae": ...} of a model that is no preset (e.g. one imported from an ldm config)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .models import OneStepSR

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**architecture["unet"])
        vae = AutoencoderKL(**architecture["vae"])
    pipe = OneStepSR(unet, vae, context, CUSTOM_PRESET).eval()
    pipe.architecture = architecture
    pipe.weights_source = f"random:{seed}"
    for prm in pipe.parameters():
        prm.requires_grad_(False)
    return pipe


def _build_custom(path: Path, meta: dict, context: torch.Tensor | None, includes_fp: bool, weights, lora=None):
    """The pipeline of a checkpoint whose metadata records its architecture."""
    from .models import WeightsError, loading

    if context is None:
        raise CheckpointError(f"{path}: a {CUSTOM_PRESET!r} checkpoint must hold its context tensor {CONTEXT_TENSOR!r}")
    try:
        pipe = pipeline_from_architecture(json.loads(meta["architecture"]), context)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad architecture in metadata ({e.__class__.__name__}: {e})") from None
    if not includes_fp:
        if weights is None:
            raise CheckpointError(f"{path}: holds no FP weights; give the SD checkpoint it was made from (--weights)")
        try:
            pipe.weights_source = loading.load_weights(pipe.unet, pipe.vae, weights, preset=CUSTOM_PRESET)
            if lora is not None:
                loading.merge_osediff_lora(pipe.unet, pipe.vae, lora)
                pipe.weights_source += loading.lora_source(Path(lora))
        except WeightsError as e:
            raise CheckpointError(f"{path}: cannot build its model ({e})") from None
    return pipe


def load_checkpoint(name_or_path: str | Path, preset: str | None = None, weights: str | Path | None = None,
                    lora: str | Path | None = None):
    """Build the fake-quant pipeline a checkpoint describes. Nothing is half-loaded: the model
    is built and every tensor name and shape checked before any value is copied in.

    A checkpoint without FP weights is built on `weights` (+ `lora`); they must be the ones it
    was calibrated on (its recorded weights_source: file names and sha256), else it is refused
    by name. A checkpoint that carries its FP weights refuses both rather than ignore them."""
    from .models import WeightsError, build_pipeline
    from .quant.wrap import quantize_pipeline

    path = resolve_checkpoint(name_or_path)
    meta, tensors = read_checkpoint(path)
    context = tensors.pop(CONTEXT_TENSOR, None)
    if preset is not None and preset != meta["preset"]:
        raise CheckpointError(f"{path}: calibrated for preset {meta['preset']!r}, not {preset!r}")
    try:
        config = QuantConfig.from_dict(json.loads(meta["quant_config"]), f"{path} quant_config")
    except (json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(f"{path}: bad quantization config in metadata ({e})") from None
    includes_fp = json.loads(meta["includes_fp_weights"])
    if includes_fp and (weights is not None or lora is not None):
        raise CheckpointError(f"{path}: carries its own FP weights, so --weights/--lora do not apply; leave them out")
    if "architecture" in meta:
        pipe = _build_custom(path, meta, context, includes_fp, weights, lora)
    else:
        try:
            if includes_fp:
                pipe = build_pipeline(meta["preset"], random_weights=0)
            else:
                pipe = build_pipeline(meta["preset"], weights=weights, lora=lora)
        except (WeightsError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot build its model ({e})") from None
        if context is not None:
            pipe.context = context.float()
    recorded = meta.get("weights_source", "unknown")
    if not includes_fp and recorded != "unknown" and recorded != pipe.weights_source:
        raise CheckpointError(f"{path}: calibrated on FP weights {recorded!r} but the weights given are {pipe.weights_source!r}")
    quantize_pipeline(pipe, config)
    apply_tensors(pipe, tensors, path, includes_fp)
    pipe.latent_tile = tuple(json.loads(meta["latent_tile"]))
    pipe.weights_source = recorded
    pipe.checkpoint_path = path
    return pipe
