"""Load Stable Diffusion weights into preset-built diffusers models, and merge OSEDiff LoRAs.

Weight sources: a local diffusers folder (unet/ and vae/) or a single-file original-SD (ldm)
checkpoint. Everything is read offline, and pickled files only with `weights_only=True`, so a
checkpoint cannot run code. Every problem raises WeightsError with one sentence naming the file,
and nothing is written into a model until every tensor for both networks has been checked:
a failed load leaves the models exactly as they were.
"""
from __future__ import annotations

from ..errors import PassionError
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Checkpoints pickled by torch (loaded with weights_only=True); everything else must be safetensors.
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")

# Weight files of one diffusers component, in order of preference: full precision first, a
# sharded model through its index, then the fp16 variant the SD2.1 repos also ship.
DIFFUSERS_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)

# OSEDiff builds its LoraConfig without lora_alpha, so peft's default applies.
PEFT_DEFAULT_LORA_ALPHA = 8.0

# peft LoRA tensor names: <module path>.lora_A|lora_B[.<adapter name>].weight
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


class WeightsError(PassionError):
    """Weights that cannot be used; the message names the file and the problem."""


def _error(path: Path, problem: str) -> Exception:
    return WeightsError(f"{path}: {problem}")


def _reason(e: Exception) -> str:
    """The first sentence of a reader's exception, to quote inside our one-sentence message."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:  # torch's weights_only refusal is pages long; the part after this says why
        text = text[text.index(marker) + len(marker):]
    first = text.strip().splitlines()[0].split(". ")[0][:160] if text.strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


# ----------------------------------------------------------------------------- reading files


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises EOFError, UnpicklingError, RuntimeError, KeyError...
        raise _error(path, f"is not a PyTorch checkpoint readable with weights_only=True ({_reason(e)})") from None


def read_torch_file(path: str | Path) -> object:
    """A pickled torch file from another project, read without executing code: refused by name
    if it needs more than tensors and plain containers."""
    path = Path(path)
    _require_file(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for bad files
        raise _error(path, f"is not a readable safetensors file ({_reason(e)})") from None


def _read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """A flat dict of tensors from a safetensors or torch file; a torch file may wrap it in `state_dict`."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path)[0]
    if path.suffix not in TORCH_SUFFIXES:
        raise _error(path, f"has an unsupported suffix (expected .safetensors or one of {', '.join(TORCH_SUFFIXES)})")
    data = _read_torch(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # Lightning checkpoints, as original SD ships them
    if not isinstance(data, dict):
        raise _error(path, f"holds a {type(data).__name__}, not a dict of tensors")
    return data


def _require_file(path: Path) -> None:
    if not path.exists():
        raise _error(path, "does not exist")
    if not path.is_file():
        raise _error(path, "is not a file")


# ----------------------------------------------------------------------------- checking and loading


def _check_state_dict(path: Path, sd: dict, module: nn.Module, what: str, preset: str) -> None:
    """Every tensor the module expects, with its shape, and nothing else."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        raise _error(path, f"is missing {len(missing)} {what} tensor(s) of preset {preset!r} (e.g. {missing[:3]})")
    if unexpected:
        raise _error(path, f"has {len(unexpected)} {what} tensor(s) that preset {preset!r} does not have (e.g. {unexpected[:3]})")
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise _error(path, f"{what} entry {k} is a {type(v).__name__}, not a tensor")
        if v.shape != expected[k].shape:
            raise _error(path, f"{what} tensor {k} has shape {tuple(v.shape)}, preset {preset!r} needs {tuple(expected[k].shape)}")


# ----------------------------------------------------------------------------- diffusers folders


def _weight_file(component_dir: Path) -> Path:
    for name in DIFFUSERS_WEIGHT_NAMES:
        if (component_dir / name).is_file():
            return component_dir / name
    raise _error(component_dir, f"has no diffusers weight file ({DIFFUSERS_WEIGHT_NAMES[0]} or .bin)")


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except Exception as e:
        raise _error(index, f"is not a readable shard index ({_reason(e)})") from None
    sd = {}
    for shard in shards:
        shard_path = index.parent / shard
        _require_file(shard_path)
        sd.update(_read_tensor_file(shard_path))
    return sd


def _read_component(component_dir: Path, module: nn.Module) -> tuple[Path, dict]:
    """The state dict of unet/ or vae/, with pre-0.14 attention names renamed as diffusers does.

    Older hub uploads (SD2.1-base's VAE among them) still call the VAE attention weights
    query/key/value/proj_attn; diffusers renames them on load, so do the same.
    """
    path = _weight_file(component_dir)
    sd = _read_sharded(path) if path.name.endswith(".index.json") else _read_tensor_file(path)
    return path, module._fix_state_dict_keys_on_load(dict(sd))


def _read_diffusers_folder(folder: Path, unet: nn.Module, vae: nn.Module, preset: str) -> tuple[dict, dict]:
    """Read and check both components; the caller loads only after both passed."""
    if not ((folder / "unet").is_dir() and (folder / "vae").is_dir()):
        raise _error(folder, "is not a diffusers folder (it needs unet/ and vae/ subfolders)")
    unet_path, unet_sd = _read_component(folder / "unet", unet)
    vae_path, vae_sd = _read_component(folder / "vae", vae)
    _check_state_dict(unet_path, unet_sd, unet, "unet", preset)
    _check_state_dict(vae_path, vae_sd, vae, "vae", preset)
    return unet_sd, vae_sd


# ----------------------------------------------------------------------------- single-file ldm checkpoints


def ldm_to_diffusers(checkpoint: dict, unet_config: dict, vae_config: dict, path: Path) -> tuple[dict, dict]:
    """Rename an original-SD checkpoint's UNet and VAE tensors with diffusers' own converters.

    The converters take the architecture from the config we pass (the preset's), never from the
    hub. They silently skip what they do not recognise, so the caller checks the result.
    """
    from diffusers.loaders.single_file_utils import (
        LDM_UNET_KEY,
        LDM_VAE_KEYS,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    if not any(k.startswith(LDM_UNET_KEY) for k in checkpoint):
        raise _error(path, f"has no original-SD UNet tensors (names starting with {LDM_UNET_KEY!r})")
    if not any(k.startswith(p) for k in checkpoint for p in LDM_VAE_KEYS):
        raise _error(path, f"has no original-SD VAE tensors (names starting with {' or '.join(map(repr, LDM_VAE_KEYS))})")
    try:
        unet_sd = convert_ldm_unet_checkpoint(checkpoint, dict(unet_config))
        vae_sd = convert_ldm_vae_checkpoint(checkpoint, dict(vae_config))
    except Exception as e:  # the converters index blindly into the checkpoint
        raise _error(path, f"could not be converted from the original-SD layout ({_reason(e)})") from None
    return unet_sd, vae_sd


def read_single_file(path: str | Path) -> dict:
    """The flat tensor dict of a single-file original-SD checkpoint (read without running code)."""
    path = Path(path)
    _require_file(path)
    return _read_tensor_file(path)


def convert_single_file(checkpoint: dict, unet: nn.Module, vae: nn.Module, path: Path, preset: str) -> tuple[dict, dict]:
    """An original-SD checkpoint's UNet and VAE state dicts for these models, checked tensor by tensor."""
    unet_sd, vae_sd = ldm_to_diffusers(checkpoint, unet.config, vae.config, path)
    _check_state_dict(path, unet_sd, unet, "unet", preset)
    _check_state_dict(path, vae_sd, vae, "vae", preset)
    return unet_sd, vae_sd


def lora_source(path: Path) -> str:
    """How a pipeline records a merged LoRA (appended to its weights source; checkpoints compare it)."""
    from ..io_utils import sha256_file

    return f"+lora:{path.name}:sha256:{sha256_file(path)[:16]}"


def single_file_source(path: Path) -> str:
    """How a pipeline records single-file weights (checkpoints compare it on load)."""
    from ..io_utils import sha256_file

    return f"single-file:{path.name}:sha256:{sha256_file(path)[:16]}"


def _read_single_file(path: Path, unet: nn.Module, vae: nn.Module, preset: str) -> tuple[dict, dict]:
    return convert_single_file(_read_tensor_file(path), unet, vae, path, preset)


def load_weights(unet: nn.Module, vae: nn.Module, path: str | Path, preset: str) -> str:
    """Load SD weights from a diffusers folder or a single-file ldm checkpoint; returns a source id."""
    path = Path(path)
    if not path.exists():
        raise _error(path, "does not exist")
    if path.is_dir():
        unet_sd, vae_sd = _read_diffusers_folder(path, unet, vae, preset)
        source = f"diffusers:{path.resolve().name}"
    else:
        unet_sd, vae_sd = _read_single_file(path, unet, vae, preset)
        source = single_file_source(path)
    # load_state_dict copies into the existing float32 tensors, casting fp16 files on the way
    unet.load_state_dict(unet_sd)
    vae.load_state_dict(vae_sd)
    return source


# ----------------------------------------------------------------------------- OSEDiff LoRA


# The VAE adapter OSEDiff (and PassionSR after it) runs: its VAE also carries a decoder adapter
# that inference never activates, so those tensors are dropped rather than merged.
VAE_INACTIVE_ADAPTER = "default_decoder"


@dataclass
class LoraPart:
    """The LoRA (and replaced base) tensors for one network, with the rank the file declares."""

    tensors: dict
    rank: int | None


@dataclass
class LoraMerge:
    """What merge_osediff_lora did, for summaries."""

    file_format: str  # "osediff.pkl", "osediff.ckpt" (PassionSR's) or "safetensors"
    pairs: dict  # part -> LoRA pairs merged
    ranks: dict  # part -> rank (None: no LoRA for the part)
    replaced: dict  # part -> base tensors replaced outright (OSEDiff's conv_in)
    dropped: int  # VAE decoder-adapter tensors left out
    scale: dict  # part -> alpha / rank


# The two pickled layouts: OSEDiff's osediff.pkl and PassionSR's osediff.ckpt name the dicts differently.
OSEDIFF_DICT_KEYS = {"osediff.pkl": "state_dict_{}", "osediff.ckpt": "{}_state_dict"}


def _read_osediff_pkl(path: Path) -> tuple[dict[str, LoraPart], float | None, str]:
    data = _read_torch(path)
    layout = next((fmt for fmt, key in OSEDIFF_DICT_KEYS.items()
                   if isinstance(data, dict) and (key.format("unet") in data or key.format("vae") in data)), None)
    if layout is None:
        raise _error(path, "is not an OSEDiff LoRA file (no state_dict_unet/state_dict_vae as OSEDiff writes, "
                           "nor unet_state_dict/vae_state_dict as PassionSR writes)")
    parts = {}
    for name in ("unet", "vae"):
        key = OSEDIFF_DICT_KEYS[layout].format(name)
        tensors, rank = data.get(key, {}), data.get(f"rank_{name}")
        if not isinstance(tensors, dict):
            raise _error(path, f"{key} is a {type(tensors).__name__}, not a dict of tensors")
        if not (rank is None or isinstance(rank, int)):
            raise _error(path, f"rank_{name} is a {type(rank).__name__}, not an int")
        parts[name] = LoraPart(tensors, rank)
    return parts, None, layout


def _read_lora_safetensors(path: Path) -> tuple[dict[str, LoraPart], float | None, str]:
    """Keys `unet.<peft key>` / `vae.<peft key>`; optional metadata `rank` and `lora_alpha`."""
    tensors, meta = _read_safetensors(path)
    try:
        rank = int(meta["rank"]) if "rank" in meta else None
        alpha = float(meta["lora_alpha"]) if "lora_alpha" in meta else None
    except ValueError:
        raise _error(path, f"has non-numeric rank/lora_alpha metadata ({meta.get('rank')!r}, {meta.get('lora_alpha')!r})") from None
    parts = {name: LoraPart({}, rank) for name in ("unet", "vae")}
    for key, t in tensors.items():
        name, _, rest = key.partition(".")
        if name not in parts:
            raise _error(path, f"has tensor {key!r} that starts with neither 'unet.' nor 'vae.'")
        parts[name].tensors[rest] = t
    return parts, alpha, "safetensors"


def _lora_delta(path: Path, name: str, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B @ A shaped like the weight: linear (out x in) or conv (A: r x in x kh x kw, B: out x r x 1 x 1)."""
    rank = a.shape[0]
    fits = (
        a.dim() == b.dim() == weight.dim()
        and b.shape[0] == weight.shape[0]
        and b.shape[1] == rank
        and a.shape[1:] == weight.shape[1:]
        and all(s == 1 for s in b.shape[2:])
    )
    if not fits:
        raise _error(path, f"LoRA for {name} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, which do not fit its weight {tuple(weight.shape)}")
    return (b.float().flatten(1) @ a.float().flatten(1)).view(weight.shape)


def _merged_weights(path: Path, what: str, module: nn.Module, part: LoraPart, alpha: float) -> tuple[dict, int, int]:
    """New values for every parameter the file touches, how many LoRA pairs it merged and how
    many base tensors it replaced.

    Non-LoRA tensors replace base weights first (OSEDiff trains and saves conv_in outright, as
    `conv_in.base_layer.*` under peft), then each pair adds (alpha / rank) * B @ A, exactly what
    peft's merge_and_unload computes.
    """
    params = dict(module.named_parameters())
    new, pairs = {}, {}
    for key, t in part.tensors.items():
        if not isinstance(t, torch.Tensor):
            raise _error(path, f"{what} entry {key} is a {type(t).__name__}, not a tensor")
        m = LORA_KEY.match(key)
        if m:
            pairs.setdefault((m["module"].replace(".base_layer", ""), m["adapter"]), {})[m["ab"]] = t
            continue
        name = key.replace(".base_layer.", ".")
        if name not in params:
            raise _error(path, f"has {what} tensor {key} for a parameter this {what} does not have")
        if t.shape != params[name].shape:
            raise _error(path, f"{what} tensor {key} has shape {tuple(t.shape)}, the {what} needs {tuple(params[name].shape)}")
        new[name] = t.to(params[name].dtype)
    for (mod, _adapter), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise _error(path, f"{what} LoRA for {mod} has lora_{''.join(ab)} without its partner")
        name = f"{mod}.weight"
        if name not in params:
            raise _error(path, f"has a {what} LoRA for {mod}, a module this {what} does not have")
        rank = ab["A"].shape[0]
        if part.rank is not None and part.rank != rank:
            raise _error(path, f"declares {what} rank {part.rank} but the LoRA for {mod} has rank {rank}")
        weight = new.get(name, params[name].detach())
        delta = _lora_delta(path, mod, weight, ab["A"], ab["B"])
        new[name] = (weight.float() + (alpha / rank) * delta).to(weight.dtype)
    ranks = {ab["A"].shape[0] for ab in pairs.values()}
    return new, len(pairs), len(part.tensors) - 2 * len(pairs), (ranks.pop() if len(ranks) == 1 else part.rank)


def merge_osediff_lora(unet: nn.Module, vae: nn.Module, path: str | Path, lora_alpha: float | None = None) -> LoraMerge:
    """Merge an OSEDiff LoRA in place: OSEDiff's osediff.pkl, PassionSR's osediff.ckpt, or a
    safetensors with `unet.`/`vae.` peft keys. Returns what was merged.

    lora_alpha: the peft alpha the LoRA was trained with; default the file's metadata, else
    peft's default 8 that OSEDiff relies on. The merge scale is lora_alpha / rank. The VAE's
    decoder adapter is dropped (VAE_INACTIVE_ADAPTER).
    """
    path = Path(path)
    _require_file(path)
    parts, file_alpha, layout = _read_lora_safetensors(path) if path.suffix == ".safetensors" else _read_osediff_pkl(path)
    alpha = float(lora_alpha if lora_alpha is not None else file_alpha if file_alpha is not None else PEFT_DEFAULT_LORA_ALPHA)
    vae_tensors = parts["vae"].tensors
    dropped = [k for k in vae_tensors if VAE_INACTIVE_ADAPTER in k]
    parts["vae"] = LoraPart({k: v for k, v in vae_tensors.items() if k not in dropped}, parts["vae"].rank)
    updates = []
    summary = LoraMerge(layout, {}, {}, {}, len(dropped), {})
    for what, module in (("unet", unet), ("vae", vae)):
        new, n, replaced, rank = _merged_weights(path, what, module, parts[what], alpha)
        params = dict(module.named_parameters())
        updates += [(params[name], value) for name, value in new.items()]
        summary.pairs[what], summary.replaced[what] = n, replaced
        summary.ranks[what] = rank if n else None
        summary.scale[what] = alpha / rank if n and rank else None
    if sum(summary.pairs.values()) == 0:
        raise _error(path, "holds no LoRA weights (no lora_A/lora_B tensors)")
    with torch.no_grad():
        for param, value in updates:
            param.copy_(value)
    return summary
