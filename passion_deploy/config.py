"""Quantization configs: the project's own form and PassionSR's YAML `quantize_config` block.

PassionSR configs look like (seed README):

    quantize_config:
      quantize: True
      only_Unet: True          # or False: quantize UNet and VAE
      Unet: {weight_quant_bits: 8, weight_sym: False, ..., split: True, s_alpha: 0.3}
      Vae:  {...}

The project's own form is the same information with plain names (`QuantConfig.to_dict`),
stored inside every calibrated checkpoint.
"""
from __future__ import annotations

from .errors import PassionError
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .quant.quantizer import QuantSpec

LET_FORMS = ("consistent", "reference")


class ConfigError(PassionError):
    """A config that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ComponentConfig:
    """How one component (UNet or VAE) is quantized."""

    weight_bits: int = 8
    weight_sym: bool = False
    weight_sign: bool = False
    act_bits: int = 8
    act_sym: bool = False
    act_sign: bool = False
    split: bool = True
    s_alpha: float = 0.5
    only_weight: bool = False
    let: bool = True  # False: plain MinMax/LBQ layers without the equivalent transformation
    let_form: str = "consistent"  # "reference": PassionSR's public code, x' = (x + o)/s for linear
    quant_attention: bool = True  # quantize the attention matmuls (spec section 4)
    # per-tensor quantizers derive step and zero point in float64, as PassionSR's float64 bounds
    # do; set for parameters imported from PassionSR (passion_deploy.importers), whose model it reproduces
    per_tensor_float64: bool = False

    def __post_init__(self):
        QuantSpec(self.weight_bits)
        QuantSpec(self.act_bits)
        if self.let_form not in LET_FORMS:
            raise ValueError(f"let_form must be one of {LET_FORMS}, got {self.let_form!r}")

    def weight_spec(self, bits: int | None = None) -> QuantSpec:
        return QuantSpec(bits or self.weight_bits, self.weight_sym, self.weight_sign)

    def act_spec(self, bits: int | None = None) -> QuantSpec:
        return QuantSpec(bits or self.act_bits, self.act_sym, self.act_sign)

    @property
    def tag(self) -> str:
        return f"W{self.weight_bits}A{self.act_bits}" if not self.only_weight else f"W{self.weight_bits}"


@dataclass(frozen=True)
class QuantConfig:
    """Which components are quantized and how. `vae=None` is PassionSR's `only_Unet: True`."""

    unet: ComponentConfig | None = field(default_factory=ComponentConfig)
    vae: ComponentConfig | None = None

    @property
    def name(self) -> str:
        parts = []
        if self.unet:
            parts.append(f"U-{self.unet.tag}")
        if self.vae:
            parts.append(f"V-{self.vae.tag}")
        return "_".join(parts) or "fp"

    def to_dict(self) -> dict:
        return {
            "unet": dataclasses.asdict(self.unet) if self.unet else None,
            "vae": dataclasses.asdict(self.vae) if self.vae else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "QuantConfig":
        unknown = set(d) - {"unet", "vae"}
        if unknown:
            raise ConfigError(f"{source}: unknown key {sorted(unknown)[0]!r} (expected 'unet' and 'vae')")
        comps = {}
        for key in ("unet", "vae"):
            block = d.get(key)
            comps[key] = None if block is None else _component_from_dict(block, f"{source}: {key}")
        return cls(**comps)


def _component_from_dict(block: dict, where: str) -> ComponentConfig:
    names = {f.name for f in dataclasses.fields(ComponentConfig)}
    unknown = set(block) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    try:
        return ComponentConfig(**block)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


# PassionSR's per-component keys -> ours. Keys that select its code paths (quantype, method,
# layer_type) are accepted and checked, not mapped. `quant_ckpt` points at PassionSR's calibrated
# parameters: only the importer (passion_deploy.importers) reads it, and every other reader
# refuses a block that has one rather than run a model calibrated from scratch in its place.
_PASSION_KEYS = {
    "weight_quant_bits": "weight_bits",
    "weight_sym": "weight_sym",
    "weight_sign": "weight_sign",
    "act_quant_bits": "act_bits",
    "act_sym": "act_sym",
    "act_sign": "act_sign",
    "split": "split",
    "s_alpha": "s_alpha",
    "only_weight": "only_weight",
}
_PASSION_IGNORED = {"quantype", "method", "layer_type"}
QUANT_CKPT = "quant_ckpt"
PASSION_BLOCKS = {"unet": "Unet", "vae": "Vae"}
_PASSION_TOP = {"quantize", "only_Unet", "Unet", "Vae", "output_modelpath", "cali_batch_size",
                "cali_learning_rate", "cali_epochs", "loss_function", "scheduler", "save_interval",
                "encoder_train", "Unet_train", "decoder_train"}


def quant_ckpt_paths(qc: dict) -> dict[str, str]:
    """{"unet"/"vae": path} of the blocks PassionSR uses that name a `quant_ckpt` (the Vae block
    only counts with only_Unet False, as in PassionSR); empty when quantization is off."""
    if not isinstance(qc, dict) or qc.get("quantize", True) is False:
        return {}
    used = ["unet"] if qc.get("only_Unet", True) else ["unet", "vae"]
    return {comp: str(qc[PASSION_BLOCKS[comp]][QUANT_CKPT]) for comp in used
            if isinstance(qc.get(PASSION_BLOCKS[comp]), dict) and qc[PASSION_BLOCKS[comp]].get(QUANT_CKPT) is not None}


def from_passion_block(qc: dict, source: str = "config", allow_quant_ckpt: bool = False) -> QuantConfig:
    """PassionSR's `quantize_config` block -> QuantConfig (calibration keys are left to the caller).

    A block naming a `quant_ckpt` is refused unless the caller is the importer (allow_quant_ckpt),
    which loads that file itself.
    """
    if not isinstance(qc, dict):
        raise ConfigError(f"{source}: quantize_config must be a mapping")
    unknown = set(qc) - _PASSION_TOP
    if unknown:
        raise ConfigError(f"{source}: unknown key {'quantize_config.' + sorted(unknown)[0]!r}")
    if not allow_quant_ckpt:
        for comp, ckpt in quant_ckpt_paths(qc).items():
            raise ConfigError(
                f"{source}: key 'quantize_config.{PASSION_BLOCKS[comp]}.{QUANT_CKPT}' names PassionSR's calibrated "
                f"parameters ({ckpt}), which this command cannot load; import them with passion-import --config {source}")
    if qc.get("quantize", True) is False:
        return QuantConfig(unet=None, vae=None)
    if "Unet" not in qc:
        raise ConfigError(f"{source}: missing key 'quantize_config.Unet'")
    only_unet = qc.get("only_Unet", True)
    unet = _passion_component(qc["Unet"], f"{source}: quantize_config.Unet", quant_attention=True)
    vae = None
    if not only_unet:
        if "Vae" not in qc:
            raise ConfigError(f"{source}: only_Unet is False but key 'quantize_config.Vae' is missing")
        # PassionSR quantizes only the projections of the VAE's mid-block attention
        vae = _passion_component(qc["Vae"], f"{source}: quantize_config.Vae", quant_attention=False)
    return QuantConfig(unet=unet, vae=vae)


def _passion_component(block: dict, where: str, quant_attention: bool) -> ComponentConfig:
    if not isinstance(block, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = set(block) - set(_PASSION_KEYS) - _PASSION_IGNORED - {QUANT_CKPT}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    for key in ("weight_quant_bits", "act_quant_bits"):
        if key not in block:
            raise ConfigError(f"{where}: missing key {key!r}")
    kw = {ours: block[theirs] for theirs, ours in _PASSION_KEYS.items() if theirs in block}
    if "s_alpha" not in kw:
        kw["s_alpha"] = 0.5  # PassionSR's default when the key is absent
    kw["quant_attention"] = quant_attention
    try:
        return ComponentConfig(**kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_quant_config(path: str | Path) -> QuantConfig:
    """A YAML/JSON file in either form: PassionSR's (has `quantize_config`) or ours (`unet`/`vae`)."""
    data = load_yaml(path)
    if "quantize_config" in data:
        return from_passion_block(data["quantize_config"], str(path))
    return QuantConfig.from_dict(data, str(path))


def _released(bits: int, with_vae: bool) -> QuantConfig:
    """PassionSR's released settings: asymmetric unsigned, split, s_alpha 0.3."""
    comp = ComponentConfig(weight_bits=bits, act_bits=bits, split=True, s_alpha=0.3)
    vae = dataclasses.replace(comp, quant_attention=False) if with_vae else None
    return QuantConfig(unet=comp, vae=vae)


NAMED_CONFIGS = {
    "w8a8": _released(8, with_vae=True),
    "w6a6": _released(6, with_vae=True),
    "w8a8-unet": _released(8, with_vae=False),
    "w6a6-unet": _released(6, with_vae=False),
}


def resolve_quant_config(name_or_path: str | Path) -> QuantConfig:
    """A named config (w8a8, w6a6, w8a8-unet, w6a6-unet) or a config file."""
    key = str(name_or_path).lower()
    if key in NAMED_CONFIGS:
        return NAMED_CONFIGS[key]
    if Path(name_or_path).suffix.lower() in (".yaml", ".yml", ".json") or Path(name_or_path).exists():
        return load_quant_config(name_or_path)
    raise ConfigError(f"{name_or_path}: not a config file and not one of {', '.join(NAMED_CONFIGS)}")
