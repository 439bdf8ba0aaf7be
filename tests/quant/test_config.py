"""Quantization configs: PassionSR's YAML schema, the project's own form, clear errors."""
import pytest

from passion_deploy import assets
from passion_deploy.config import (NAMED_CONFIGS, ComponentConfig, ConfigError, QuantConfig, load_quant_config,
                                   resolve_quant_config)

from pathlib import Path

SEED = Path(__file__).parents[1] / "data" / "passionsr_ptq_seed.yaml"


def test_seed_readme_example_loads():
    cfg = load_quant_config(SEED)
    assert cfg.vae is None  # only_Unet: True
    u = cfg.unet
    assert (u.weight_bits, u.act_bits, u.split, u.s_alpha) == (8, 8, True, 0.3)
    assert not u.weight_sym and not u.act_sym and not u.weight_sign and not u.act_sign
    assert u.quant_attention and u.let and u.let_form == "consistent"


@pytest.mark.parametrize("bits", [8, 6])
def test_bundled_yaml_configs_equal_named_configs(bits):
    cfg = load_quant_config(assets.path(f"configs/w{bits}a{bits}.yaml"))
    assert cfg == NAMED_CONFIGS[f"w{bits}a{bits}"]
    assert cfg.vae is not None and not cfg.vae.quant_attention


def test_own_form_round_trip(tmp_path):
    cfg = QuantConfig(unet=ComponentConfig(weight_bits=6, act_bits=8, let_form="reference"), vae=None)
    p = tmp_path / "c.yaml"
    import yaml

    p.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_quant_config(p) == cfg
    assert resolve_quant_config("W6A6") == NAMED_CONFIGS["w6a6"]


def bad(tmp_path, text, fragment):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_quant_config(p)
    assert str(p) in str(e.value) and fragment in str(e.value)


def test_errors_name_file_and_key(tmp_path):
    bad(tmp_path, "quantize_config:\n  Unet: {weight_quant_bits: 8, act_quant_bits: 8, wieght_sym: False}\n", "'wieght_sym'")
    bad(tmp_path, "quantize_config:\n  Unet: {weight_quant_bits: 8}\n", "'act_quant_bits'")
    bad(tmp_path, "quantize_config:\n  only_Unet: False\n  Unet: {weight_quant_bits: 8, act_quant_bits: 8}\n", "Vae")
    bad(tmp_path, "quantize_config:\n  Unet: {weight_quant_bits: 12, act_quant_bits: 8}\n", "2..8")
    bad(tmp_path, "quantize_config:\n  frobnicate: 1\n", "frobnicate")
    bad(tmp_path, "unet: {weight_bits: 8, colour: red}\n", "'colour'")
    bad(tmp_path, "quantize_config: [1, 2\n", "not valid YAML")
    with pytest.raises(ConfigError, match="no such config"):
        load_quant_config(tmp_path / "missing.yaml")
