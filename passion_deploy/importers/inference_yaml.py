"""PassionSR's inference YAML (or the same pieces as command-line flags) -> an ImportJob.

Schema (spec passionsr-checkpoints section 6, seed README):

    basic_config: {config: <ldm model YAML>, ckpt: <SD single file>, lora_weights_path, merge_lora,
                   context_embedding_path, pretrained_model_name_or_path, upscale, process_size, ...}
    tile_config: {latent_tiled_size, ...}
    quantize_config: {quantize, only_Unet, Unet: {quant_ckpt, weight_quant_bits, ...}, Vae: {...}}

Relative paths resolve against the directory PassionSR runs in (its repository root): the
working directory unless `root` says otherwise. Every key is known; a missing file or a value
that cannot be imported stops with one sentence naming the key and the file.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import PASSION_BLOCKS, QUANT_CKPT, ComponentConfig, ConfigError, QuantConfig, from_passion_block, load_yaml
from ..io_utils import not_a_file
from .errors import ImportRefused

TOP_KEYS = {"device", "out_dir", "dataset", "seed", "precision", "scale", "cali_img_path", "basic_config",
            "tile_config", "quantize_config"}
BASIC_KEYS = {"seed", "precision", "upscale", "process_size", "scale", "lora_weights_path",
              "pretrained_model_name_or_path", "config", "ckpt", "context_embedding_path", "align_method", "merge_lora"}
TILE_KEYS = {"vae_encoder_tiled_size", "vae_decoder_tiled_size", "latent_tiled_size", "latent_tiled_overlap"}
QUANT_LAYER_TYPE = "2Dquant"  # "normal_quant" stores step sizes instead of boundaries: another file layout
QUANT_METHODS = {"saw", "saw_sep"}  # the same method at inference (spec 5.1)
PATH_KEYS = {  # job field -> (YAML key, flag)
    "ldm_config": ("basic_config.config", "--ldm-config"),
    "sd_ckpt": ("basic_config.ckpt", "--sd-ckpt"),
    "lora": ("basic_config.lora_weights_path", "--lora"),
    "context": ("basic_config.context_embedding_path", "--context"),
    "unet_quant": ("quantize_config.Unet.quant_ckpt", "--unet-quant"),
    "vae_quant": ("quantize_config.Vae.quant_ckpt", "--vae-quant"),
}


@dataclass
class ImportJob:
    """Everything an import reads, with paths resolved and checked to exist."""

    source: str  # the YAML file, or "command line"
    ldm_config: Path
    sd_ckpt: Path
    lora: Path | None
    context: Path | None
    quant: QuantConfig  # PassionSR's settings in the forms this project runs them (imported_forms)
    quant_ckpt: dict[str, Path]  # "unet" / "vae" -> PassionSR's .pth
    tile_hint: int | None = None  # tile_config.latent_tiled_size
    notes: list[str] = field(default_factory=list)


def imported_forms(quant: QuantConfig, source: str) -> QuantConfig:
    """PassionSR's parameters run in PassionSR's own layer functions.

    UNet: linear layers in its LET form x' = (x + o)/s plus W o ("reference"; the calibrated o
    were learned under it). VAE: PassionSR's VAE has no linear layers (its mid-attention q/k/v/
    proj_out are 1x1 convs, run in its conv form x' = (x - o)/s), and diffusers holds those four
    as Linear, so the form that computes PassionSR's function there is "consistent". Per-tensor
    step sizes in float64 as PassionSR's float64 bounds give them. `only_weight` has no effect on
    PassionSR's inference (spec 5.1), so activation quantizers always run.
    """
    unet = vae = None
    if quant.unet is not None:
        unet = dataclasses.replace(quant.unet, let=True, let_form="reference", per_tensor_float64=True,
                                   only_weight=False, quant_attention=True)
    if quant.vae is not None:
        if quant.vae.split:
            raise ImportRefused(f"{source}: key 'quantize_config.Vae.split' is True; PassionSR splits its VAE attention "
                                "convs by channel where diffusers' linear layers would split by token, so only split: False imports")
        vae = dataclasses.replace(quant.vae, let=True, let_form="consistent", per_tensor_float64=True,
                                  only_weight=False, quant_attention=False)
    return QuantConfig(unet=unet, vae=vae)


def _check_keys(d, allowed: set[str], where: str, source: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ImportRefused(f"{source}: {where or 'the top level'} must be a mapping")
    for key in d:
        if key not in allowed:
            raise ImportRefused(f"{source}: unknown key {(where + '.' if where else '') + str(key)!r}")
    return d


def _resolve(value, key: str, source: str, root: Path, required: bool = True) -> Path | None:
    if value is None or value == "":
        if required:
            raise ImportRefused(f"{source}: missing {key!r} (an import needs it)")
        return None
    p = Path(str(value)).expanduser()
    full = p if p.is_absolute() else root / p
    why = not_a_file(full)  # a folder or a device is said as such, not as missing
    if why:
        where = ("" if p.is_absolute() or why != "does not exist" else
                 f" (relative paths resolve against {root}, as PassionSR's do; see --root)")
        raise ImportRefused(f"{source}: {key!r} names {value}, which {why}{where}")
    return full


def _checked_blocks(qc: dict, source: str) -> None:
    """What PassionSR's inference reads besides the bit settings: only 2Dquant layers, its method."""
    for comp, block in PASSION_BLOCKS.items():
        b = qc.get(block)
        if not isinstance(b, dict):
            continue
        if b.get("layer_type", QUANT_LAYER_TYPE) != QUANT_LAYER_TYPE:
            raise ImportRefused(f"{source}: key 'quantize_config.{block}.layer_type' is {b['layer_type']!r}; "
                                f"only {QUANT_LAYER_TYPE} checkpoints (x_min/x_max boundaries) import")
    method = (qc.get("Unet") or {}).get("method") if isinstance(qc.get("Unet"), dict) else None
    if method is not None and method not in QUANT_METHODS:
        raise ImportRefused(f"{source}: key 'quantize_config.Unet.method' is {method!r}; PassionSR's inference "
                            f"knows {' and '.join(sorted(QUANT_METHODS))}")


def _quant_config(qc: dict, source: str) -> QuantConfig:
    try:
        quant = from_passion_block(qc, source, allow_quant_ckpt=True)
    except ConfigError as e:
        raise ImportRefused(str(e)) from None
    if quant.unet is None:
        raise ImportRefused(f"{source}: key 'quantize_config.quantize' is False, so there is nothing to import")
    return imported_forms(quant, source)


def job_from_yaml(path: str | Path, root: str | Path | None = None, overrides: dict | None = None) -> ImportJob:
    """An ImportJob from PassionSR's inference YAML; `overrides` (job field -> path, from flags) replace its paths."""
    path = Path(path)
    root = Path(root) if root is not None else Path.cwd()
    source = str(path)
    try:
        data = load_yaml(path)
    except ConfigError as e:
        raise ImportRefused(str(e)) from None
    if "model" in data and "quantize_config" not in data:
        raise ImportRefused(f"{source}: is an ldm model config, not PassionSR's inference YAML; give it as --ldm-config")
    _check_keys(data, TOP_KEYS, "", source)
    basic = _check_keys(data.get("basic_config"), BASIC_KEYS, "basic_config", source)
    tile = _check_keys(data.get("tile_config"), TILE_KEYS, "tile_config", source)
    qc = data.get("quantize_config")
    if qc is None:
        raise ImportRefused(f"{source}: missing key 'quantize_config'")
    _checked_blocks(qc if isinstance(qc, dict) else {}, source)
    quant = _quant_config(qc, source)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = {
        "ldm_config": basic.get("config"),
        "sd_ckpt": basic.get("ckpt"),
        "lora": basic.get("lora_weights_path"),
        "context": basic.get("context_embedding_path"),
        "unet_quant": qc["Unet"].get(QUANT_CKPT),
        "vae_quant": qc["Vae"].get(QUANT_CKPT) if quant.vae is not None else None,
    }
    notes = []
    if values["lora"] and basic.get("merge_lora", True) is False and "lora" not in overrides:
        raise ImportRefused(f"{source}: key 'basic_config.merge_lora' is False; PassionSR's quantized layers wrap the "
                            "merged weights, so set it True (or drop lora_weights_path)")
    if quant.vae is None and isinstance(qc.get("Vae"), dict) and qc["Vae"].get(QUANT_CKPT):
        notes.append("quantize_config.Vae is not used (only_Unet: True), as in PassionSR")

    def resolved(name: str, required: bool) -> Path | None:
        yaml_key, flag = PATH_KEYS[name]
        if name in overrides:
            return _resolve(overrides[name], flag, "command line", Path.cwd(), required)
        return _resolve(values[name], yaml_key, source, root, required)

    tile_hint = tile.get("latent_tiled_size")
    return ImportJob(
        source=source,
        ldm_config=resolved("ldm_config", True),
        sd_ckpt=resolved("sd_ckpt", True),
        lora=resolved("lora", False),
        context=resolved("context", False),
        quant=quant,
        quant_ckpt={comp: resolved(f"{comp}_quant", True) for comp in ("unet", "vae") if getattr(quant, comp) is not None},
        tile_hint=tile_hint if isinstance(tile_hint, int) else None,
        notes=notes,
    )


BITS = re.compile(r"^W(\d)A(\d)$", re.IGNORECASE)


def parse_bits(text: str, flag: str) -> tuple[int, int]:
    m = BITS.match(text.strip())
    if not m:
        raise ImportRefused(f"{flag} {text!r} must look like W8A8 or W6A6")
    return int(m[1]), int(m[2])


def job_from_flags(ldm_config, sd_ckpt, unet_quant, bits: str, vae_quant=None, vae_bits: str | None = None,
                   lora=None, context=None, weight_sym=False, weight_sign=False, act_sym=False,
                   act_sign=False, unet_split: bool = True) -> ImportJob:
    """An ImportJob from the pieces given one by one (PassionSR's defaults: UNet split, VAE not)."""
    source = "command line"
    if bits is None:
        raise ImportRefused("--bits is needed without --config (PassionSR's files do not record bit widths)")

    def block(b: str, flag: str, split: bool, ckpt) -> dict:
        w, a = parse_bits(b, flag)
        return {"weight_quant_bits": w, "act_quant_bits": a, "weight_sym": weight_sym, "weight_sign": weight_sign,
                "act_sym": act_sym, "act_sign": act_sign, "split": split, QUANT_CKPT: ckpt}

    qc = {"quantize": True, "only_Unet": vae_quant is None, "Unet": block(bits, "--bits", unet_split, unet_quant)}
    if vae_quant is not None:
        qc["Vae"] = block(vae_bits or bits, "--vae-bits" if vae_bits else "--bits", False, vae_quant)
    quant = _quant_config(qc, source)
    cwd = Path.cwd()
    return ImportJob(
        source=source,
        ldm_config=_resolve(ldm_config, "--ldm-config", source, cwd),
        sd_ckpt=_resolve(sd_ckpt, "--sd-ckpt", source, cwd),
        lora=_resolve(lora, "--lora", source, cwd, required=False),
        context=_resolve(context, "--context", source, cwd, required=False),
        quant=quant,
        quant_ckpt={"unet": _resolve(unet_quant, "--unet-quant", source, cwd),
                    **({"vae": _resolve(vae_quant, "--vae-quant", source, cwd)} if vae_quant is not None else {})},
    )


def names_quant_ckpt(path: str | Path) -> str | None:
    """The first `quantize_config.<block>.quant_ckpt` key a YAML file sets (blocks PassionSR uses),
    or None: such a file is imported, not calibrated or statistics-calibrated."""
    from ..config import quant_ckpt_paths

    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml") or not p.is_file():
        return None
    try:
        data = load_yaml(p)
    except ConfigError:
        return None  # the command that reads it reports the problem
    found = quant_ckpt_paths(data.get("quantize_config") or {})
    return next((f"quantize_config.{PASSION_BLOCKS[c]}.{QUANT_CKPT}" for c in found), None)
