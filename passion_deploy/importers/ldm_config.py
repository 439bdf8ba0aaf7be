"""An ldm model YAML (the schema of SD2's `v2-inference.yaml`) -> diffusers configs.

PassionSR builds its networks from this file: `model.params.unet_config.params` are ldm
`UNetModel` kwargs, `model.params.first_stage_config.params` an `AutoencoderKL`'s `embed_dim`
and `ddconfig`, `model.params.scale_factor` the latent scale. Any architecture written in that
schema maps to diffusers' UNet2DConditionModel / AutoencoderKL as long as diffusers has the
same blocks; what it cannot express is refused by key, never approximated. ldm normalises with
GroupNorm(32) everywhere, so every channel count must be a multiple of 32.

The YAML is read with plain YAML (no OmegaConf interpolation: ldm configs do not use it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, load_yaml
from .errors import ImportRefused

LDM_NORM_GROUPS = 32

# ldm UNetModel kwargs: the ones that shape the network, the ones with no effect on an fp32
# forward (precision, checkpointing, dropout, ignored sizes), and the ones diffusers' blocks
# cannot express unless they keep their ldm default (the value given here).
UNET_SHAPE_KEYS = {"in_channels", "out_channels", "model_channels", "attention_resolutions", "num_res_blocks",
                   "channel_mult", "num_heads", "num_head_channels", "use_spatial_transformer",
                   "use_linear_in_transformer", "transformer_depth", "context_dim", "use_scale_shift_norm",
                   "transformer_depth_middle"}
UNET_NO_EFFECT_KEYS = {"use_fp16", "use_bf16", "use_checkpoint", "image_size", "dropout", "legacy",
                       "num_heads_upsample", "use_new_attention_order", "spatial_transformer_attn_type"}
UNET_FIXED = {"dims": 2, "num_classes": None, "conv_resample": True, "resblock_updown": False,
              "disable_self_attentions": None, "num_attention_blocks": None, "disable_middle_self_attn": False,
              "n_embed": None, "adm_in_channels": None}
VAE_SHAPE_KEYS = {"double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
                  "num_res_blocks", "attn_resolutions"}
VAE_NO_EFFECT_KEYS = {"dropout", "attn_type"}
VAE_FIXED = {"give_pre_end": False, "tanh_out": False, "resamp_with_conv": True, "use_linear_attn": False}
VAE_ATTN_TYPES = {"vanilla", "vanilla-xformers"}  # the same function; "linear"/"none" are other networks


@dataclass(frozen=True)
class LdmArchitecture:
    """The diffusers configs equivalent to one ldm model config."""

    unet: dict  # UNet2DConditionModel kwargs
    vae: dict  # AutoencoderKL kwargs
    scale_factor: float
    context_dim: int


def _get(d: dict, key: str, where: str, path: Path):
    if not isinstance(d, dict) or key not in d:
        raise ImportRefused(f"{path}: missing key {where + key!r} (an ldm model config, as SD2's v2-inference.yaml)")
    return d[key]


def _int_list(v, key: str, path: Path) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return [v]
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return list(v)
    raise ImportRefused(f"{path}: key {key!r} must be an integer or a list of integers, got {v!r}")


def _check_keys(params: dict, known: set[str], fixed: dict, where: str, path: Path) -> None:
    for key in params:
        if key not in known and key not in fixed:
            raise ImportRefused(f"{path}: unknown key {where + key!r} for an ldm model config")
    for key, value in fixed.items():
        if params.get(key, value) != value:
            raise ImportRefused(f"{path}: key {where + key!r} is {params[key]!r}; only {value!r} maps to diffusers' blocks")


def _groups_ok(channels: list[int], key: str, path: Path) -> None:
    bad = [c for c in channels if c % LDM_NORM_GROUPS]
    if bad:
        raise ImportRefused(f"{path}: key {key!r} gives {bad[0]} channels, which ldm's GroupNorm({LDM_NORM_GROUPS}) cannot split")


def unet_config_from_ldm(p: dict, path: Path) -> dict:
    """ldm UNetModel kwargs -> UNet2DConditionModel kwargs (what diffusers' converters expect)."""
    where = "model.params.unet_config.params."
    _check_keys(p, UNET_SHAPE_KEYS | UNET_NO_EFFECT_KEYS, UNET_FIXED, where, path)
    if not p.get("use_spatial_transformer", False):
        raise ImportRefused(f"{path}: key {where + 'use_spatial_transformer'!r} must be True (SD's cross-attention UNet)")
    model_channels = _int_list(_get(p, "model_channels", where, path), where + "model_channels", path)[0]
    mult = _int_list(_get(p, "channel_mult", where, path), where + "channel_mult", path)
    channels = [model_channels * m for m in mult]
    _groups_ok(channels, where + "channel_mult", path)
    res_blocks = _int_list(_get(p, "num_res_blocks", where, path), where + "num_res_blocks", path)
    if len(set(res_blocks)) != 1:
        raise ImportRefused(f"{path}: key {where + 'num_res_blocks'!r} differs between levels ({res_blocks}); diffusers' converter needs one value")
    attn_res = set(_int_list(_get(p, "attention_resolutions", where, path), where + "attention_resolutions", path))
    with_attn = [2**level in attn_res for level in range(len(channels))]  # ldm: ds = 1, 2, 4, ... per level
    heads = []
    nhc, nh = p.get("num_head_channels", -1), p.get("num_heads", -1)
    for c in channels:
        if nhc not in (None, -1):
            if c % nhc:
                raise ImportRefused(f"{path}: key {where + 'num_head_channels'!r} ({nhc}) does not divide {c} channels")
            heads.append(c // nhc)
        elif nh not in (None, -1):
            if c % nh:
                raise ImportRefused(f"{path}: key {where + 'num_heads'!r} ({nh}) does not divide {c} channels")
            heads.append(nh)
        else:
            raise ImportRefused(f"{path}: give {where + 'num_head_channels'!r} or {where + 'num_heads'!r}")
    context_dim = _int_list(_get(p, "context_dim", where, path), where + "context_dim", path)
    if len(set(context_dim)) != 1:
        raise ImportRefused(f"{path}: key {where + 'context_dim'!r} differs between levels; diffusers needs one value")
    depth = _int_list(p.get("transformer_depth", 1), where + "transformer_depth", path)
    if len(depth) not in (1, len(channels)):
        raise ImportRefused(f"{path}: key {where + 'transformer_depth'!r} needs one value or one per level ({len(channels)})")
    if p.get("transformer_depth_middle") not in (None, depth[-1]):
        raise ImportRefused(f"{path}: key {where + 'transformer_depth_middle'!r} must equal the last level's depth in diffusers")
    cfg = dict(
        sample_size=p["image_size"] if isinstance(p.get("image_size"), int) else 64,
        in_channels=_get(p, "in_channels", where, path),
        out_channels=_get(p, "out_channels", where, path),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in with_attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(with_attn)),
        block_out_channels=tuple(channels),
        layers_per_block=res_blocks[0],
        attention_head_dim=tuple(heads),  # diffusers' historical name: head counts per level, as SD2's config
        cross_attention_dim=context_dim[0],
        use_linear_projection=bool(p.get("use_linear_in_transformer", False)),
        norm_num_groups=LDM_NORM_GROUPS,
        flip_sin_to_cos=True,  # ldm's timestep embedding is [cos, sin] with no frequency shift
        freq_shift=0,
    )
    if depth != [1]:
        cfg["transformer_layers_per_block"] = depth[0] if len(depth) == 1 else tuple(depth)
    if p.get("use_scale_shift_norm", False):
        cfg["resnet_time_scale_shift"] = "scale_shift"
    return cfg


def vae_config_from_ldm(params: dict, scale_factor: float, path: Path) -> dict:
    """ldm AutoencoderKL params (embed_dim, ddconfig) -> AutoencoderKL kwargs."""
    where = "model.params.first_stage_config.params."
    dd = _get(params, "ddconfig", where, path)
    where_dd = where + "ddconfig."
    _check_keys(dd, VAE_SHAPE_KEYS | VAE_NO_EFFECT_KEYS, VAE_FIXED, where_dd, path)
    if not dd.get("double_z", True):
        raise ImportRefused(f"{path}: key {where_dd + 'double_z'!r} must be True (a KL autoencoder has mean and variance)")
    if dd.get("attn_type", "vanilla") not in VAE_ATTN_TYPES:
        raise ImportRefused(f"{path}: key {where_dd + 'attn_type'!r} is {dd['attn_type']!r}; diffusers' AutoencoderKL has vanilla attention")
    if dd.get("attn_resolutions"):
        raise ImportRefused(f"{path}: key {where_dd + 'attn_resolutions'!r} must be empty (diffusers' AutoencoderKL has attention only in its mid-block)")
    z = _get(dd, "z_channels", where_dd, path)
    if _get(params, "embed_dim", where, path) != z:
        raise ImportRefused(f"{path}: key {where + 'embed_dim'!r} ({params['embed_dim']}) must equal ddconfig.z_channels ({z}) for diffusers' AutoencoderKL")
    ch = _get(dd, "ch", where_dd, path)
    mult = _int_list(_get(dd, "ch_mult", where_dd, path), where_dd + "ch_mult", path)
    channels = [ch * m for m in mult]
    _groups_ok(channels, where_dd + "ch_mult", path)
    n = len(channels)
    return dict(
        in_channels=_get(dd, "in_channels", where_dd, path),
        out_channels=_get(dd, "out_ch", where_dd, path),
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(channels),
        layers_per_block=_get(dd, "num_res_blocks", where_dd, path),
        latent_channels=z,
        norm_num_groups=LDM_NORM_GROUPS,
        sample_size=dd.get("resolution", 256),
        scaling_factor=float(scale_factor),
    )


def read_ldm_config(path: str | Path) -> LdmArchitecture:
    """The architecture an ldm model YAML describes; one-sentence refusals naming the key."""
    path = Path(path)
    try:
        data = load_yaml(path)
    except ConfigError as e:
        raise ImportRefused(str(e)) from None
    params = _get(_get(data, "model", "", path), "params", "model.", path)
    unet_cfg = _get(params, "unet_config", "model.params.", path)
    vae_cfg = _get(params, "first_stage_config", "model.params.", path)
    for key, block, cls in (("unet_config", unet_cfg, "UNetModel"), ("first_stage_config", vae_cfg, "AutoencoderKL")):
        target = str(block.get("target", "")) if isinstance(block, dict) else ""
        if not target.endswith(cls):
            raise ImportRefused(f"{path}: key 'model.params.{key}.target' is {target!r}, not ldm's {cls}")
    scale = _get(params, "scale_factor", "model.params.", path)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0:
        raise ImportRefused(f"{path}: key 'model.params.scale_factor' must be a positive number, got {scale!r}")
    unet = unet_config_from_ldm(_get(unet_cfg, "params", "model.params.unet_config.", path), path)
    vae = vae_config_from_ldm(_get(vae_cfg, "params", "model.params.first_stage_config.", path), scale, path)
    return LdmArchitecture(unet=unet, vae=vae, scale_factor=float(scale), context_dim=unet["cross_attention_dim"])


def _normalised(cfg: dict) -> dict:
    """Comparable form: tuples as lists, and sample_size dropped (metadata only, no effect on the network)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k != "sample_size"}


def matching_preset(arch: LdmArchitecture) -> str | None:
    """The name of the preset with exactly this architecture (SD2.1-base -> "sd21"), if any."""
    from ..models.presets import PRESETS

    for name, preset in PRESETS.items():
        if _normalised(preset.unet) == _normalised(arch.unet) and _normalised(preset.vae) == _normalised(arch.vae):
            return name
    return None
