"""Weight loading (diffusers folders, single-file ldm checkpoints) and OSEDiff LoRA merging."""
from __future__ import annotations

import os

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from passion_deploy.models import WeightsError, build_pipeline, get_preset
from passion_deploy.models.loading import ldm_to_diffusers, load_weights, merge_osediff_lora

TINY = get_preset("tiny")


def make_models(seed: int, preset=TINY, device: str = "cpu"):
    """Freshly seeded models, without disturbing the global RNG other tests rely on."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**preset.unet_config()), AutoencoderKL(**preset.vae_config())


def state(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_state_equal(module, expected: dict) -> None:
    got = module.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


@pytest.fixture(scope="module")
def source():
    """Seeded tiny models whose weights every loader test expects to see again."""
    return make_models(1)


@pytest.fixture(scope="module")
def folder(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny-diffusers"
    unet, vae = source
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    return path


# ----------------------------------------------------------------------------- diffusers -> ldm names
# The inverse of diffusers' convert_ldm_*_checkpoint, generalised from diffusers'
# scripts/convert_diffusers_to_original_stable_diffusion.py to any block count and
# layers_per_block. test_reverse_mapping_gives_real_sd21_names pins it to real SD2.1 names.

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
               "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_prefixes(cfg: dict) -> dict:
    n, per = len(cfg["block_out_channels"]), cfg["layers_per_block"] + 1
    p = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
         "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
         "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
         "mid_block.resnets.1.": "middle_block.2."}
    for i in range(n):
        for j in range(per - 1):
            p[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{per * i + j + 1}.0."
            p[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{per * i + j + 1}.1."
        p[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{per * (i + 1)}.0.op."
        for j in range(per):
            p[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{per * i + j}.0."
            p[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{per * i + j}.1."
        has_attn = cfg["up_block_types"][i].startswith("CrossAttn")
        p[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{per * i + per - 1}.{2 if has_attn else 1}."
    return p


def vae_prefixes(cfg: dict) -> dict:
    n, per = len(cfg["block_out_channels"]), cfg["layers_per_block"] + 1
    p = {}
    for part in ("encoder", "decoder"):
        p[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        p[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        for j in range(2):
            p[f"{part}.mid_block.resnets.{j}."] = f"{part}.mid.block_{j + 1}."
    for i in range(n):
        for j in range(per - 1):
            p[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        p[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        for j in range(per):
            p[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        p[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    return p


def rename(key: str, prefixes: dict) -> tuple[str, str]:
    """(ldm prefix, rest of the key) for the one prefix that matches; unmatched keys keep their name."""
    hits = [p for p in prefixes if key.startswith(p)]
    assert len(hits) <= 1, (key, hits)
    return (prefixes[hits[0]], key[len(hits[0]):]) if hits else ("", key)


def to_ldm(unet_sd: dict, vae_sd: dict, unet_cfg: dict, vae_cfg: dict) -> dict:
    out = {}
    up = unet_prefixes(unet_cfg)
    for k, v in unet_sd.items():
        new, rest = rename(k, up)
        if ".resnets." in k:
            head, _, tail = rest.partition(".")
            rest = f"{UNET_RESNET[head]}.{tail}"
        out["model.diffusion_model." + new + rest] = v
    vp = vae_prefixes(vae_cfg)
    for k, v in vae_sd.items():
        new, rest = rename(k, vp)
        if ".resnets." in k:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        if ".attentions." in k:
            head, _, tail = rest.rpartition(".")
            rest = f"{VAE_ATTN[head]}.{tail}"
            if v.dim() == 2:  # original SD stores the VAE attention projections as 1x1 convs
                v = v[:, :, None, None]
        out["first_stage_model." + new + rest] = v
    return out


def write_ldm(path, unet, vae, **extra):
    """An original-SD style file: UNet + VAE + the text encoder and schedule tensors loaders ignore."""
    sd = to_ldm(unet.state_dict(), vae.state_dict(), unet.config, vae.config)
    sd["cond_stage_model.model.ln_final.weight"] = torch.ones(8)
    sd["alphas_cumprod"] = torch.linspace(1, 0, 10)
    sd.update(extra)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({"state_dict": sd, "global_step": 123}, path)
    return path


def test_reverse_mapping_gives_real_sd21_names():
    """Names and shapes of a real SD2.1 checkpoint (v2-1_512-ema-pruned), from meta tensors: no memory."""
    sd21 = get_preset("sd21")
    unet, vae = make_models(0, sd21, device="meta")
    ldm = to_ldm(unet.state_dict(), vae.state_dict(), unet.config, vae.config)
    known = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.4.0.emb_layers.1.weight": (640, 1280),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 1024),
        "model.diffusion_model.middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.encoder.norm_out.weight": (512,),
        "first_stage_model.decoder.up.3.block.0.conv1.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.1.upsample.conv.weight": (256, 256, 3, 3),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
    }
    for k, shape in known.items():
        assert tuple(ldm[k].shape) == shape, k
    # every SD2.1 tensor has exactly one ldm name (686 UNet + 248 VAE in the real file)
    assert sum(k.startswith("model.") for k in ldm) == 686 and sum(k.startswith("first_stage_model.") for k in ldm) == 248


def test_sd21_ldm_names_convert_to_the_sd21_preset(tmp_path):
    """The single-file path on the full SD2.1 architecture: every tensor found, every shape right."""
    unet, vae = make_models(0, get_preset("sd21"), device="meta")
    ldm = to_ldm(unet.state_dict(), vae.state_dict(), unet.config, vae.config)
    unet_sd, vae_sd = ldm_to_diffusers(ldm, unet.config, vae.config, tmp_path / "sd21.ckpt")
    for got, module in ((unet_sd, unet), (vae_sd, vae)):
        expected = module.state_dict()
        assert got.keys() == expected.keys()
        assert all(got[k].shape == v.shape for k, v in expected.items())


# ----------------------------------------------------------------------------- loading


def test_diffusers_folder_round_trip(source, folder):
    unet, vae = make_models(2)
    assert load_weights(unet, vae, folder, "tiny") == "diffusers:tiny-diffusers"
    assert_state_equal(unet, source[0].state_dict())
    assert_state_equal(vae, source[1].state_dict())


def test_diffusers_folder_bin_and_old_attention_names(source, tmp_path):
    """.bin weights, and a VAE saved before diffusers renamed query/key/value/proj_attn."""
    unet, vae = source
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    old_vae = {}
    for k, v in vae.state_dict().items():
        for new, old in renames.items():
            k = k.replace(new, old) if "mid_block.attentions" in k else k
        old_vae[k] = v
    assert any(".query." in k for k in old_vae)
    for what, sd in (("unet", unet.state_dict()), ("vae", old_vae)):
        (tmp_path / what).mkdir()
        torch.save(dict(sd), tmp_path / what / "diffusion_pytorch_model.bin")
    u2, v2 = make_models(2)
    load_weights(u2, v2, tmp_path, "tiny")
    assert_state_equal(u2, unet.state_dict())
    assert_state_equal(v2, vae.state_dict())


def test_diffusers_folder_sharded_and_fp16_variant(source, tmp_path):
    """A sharded unet (read through its index) and a vae present only as the fp16 variant."""
    unet, vae = source
    unet.save_pretrained(tmp_path / "unet", max_shard_size="200KB")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    vae_fp16 = make_models(1)[1].half()
    vae_fp16.save_pretrained(tmp_path / "vae", variant="fp16")
    u2, v2 = make_models(2)
    load_weights(u2, v2, tmp_path, "tiny")
    assert_state_equal(u2, unet.state_dict())
    assert_state_equal(v2, {k: v.float() for k, v in vae_fp16.state_dict().items()})
    assert next(v2.parameters()).dtype == torch.float32


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_single_file_ldm_round_trip(source, tmp_path, suffix):
    path = tmp_path / f"tiny-sd{suffix}"
    write_ldm(path, *source)
    unet, vae = make_models(2)
    src = load_weights(unet, vae, path, "tiny")
    assert src.startswith(f"single-file:tiny-sd{suffix}:sha256:") and len(src.rsplit(":", 1)[1]) == 16
    assert_state_equal(unet, source[0].state_dict())
    assert_state_equal(vae, source[1].state_dict())


def test_build_pipeline_with_folder(source, folder):
    pipe = build_pipeline("tiny", weights=folder)
    assert pipe.weights_source == "diffusers:tiny-diffusers"
    assert_state_equal(pipe.unet, source[0].state_dict())
    x = torch.rand(1, 3, pipe.size_multiple, pipe.size_multiple)
    with torch.no_grad():
        assert torch.isfinite(pipe(x)).all()


# ----------------------------------------------------------------------------- bad weight files


def written(path, data: bytes):
    path.write_bytes(data)
    return path


def corrupt(path):
    path.write_bytes(os.urandom(64) + path.read_bytes()[64:])


def edit_safetensors(path, change):
    from safetensors.torch import load_file

    sd = load_file(str(path))
    change(sd)
    save_file(sd, str(path))


class NotATensor:
    """Pickled into a checkpoint, it must be refused by weights_only loading."""


def bad_folder(tmp_path, folder, damage, name="diffusion_pytorch_model.safetensors"):
    """A copy of the folder with its vae weights damaged (the unet stays good: no half load)."""
    import shutil

    path = tmp_path / "damaged"
    shutil.copytree(folder, path)
    damage(path / "vae" / "diffusion_pytorch_model.safetensors")
    return path, os.path.join("damaged", "vae", name).rstrip(os.sep)


CASES = {
    "missing path": lambda tmp, folder, src: (tmp / "nope.ckpt", "nope.ckpt"),
    "empty ckpt": lambda tmp, folder, src: (written(tmp / "e.ckpt", b""), "e.ckpt"),
    "empty safetensors": lambda tmp, folder, src: (written(tmp / "e.safetensors", b""), "e.safetensors"),
    "unsupported suffix": lambda tmp, folder, src: (written(tmp / "w.txt", b"x"), "w.txt"),
    "no unet/vae": lambda tmp, folder, src: (tmp, tmp.name),
    "corrupt vae file": lambda tmp, folder, src: bad_folder(tmp, folder, corrupt),
    "missing vae key": lambda tmp, folder, src: bad_folder(tmp, folder, lambda p: edit_safetensors(p, lambda sd: sd.pop("decoder.conv_out.bias"))),
    "extra vae key": lambda tmp, folder, src: bad_folder(tmp, folder, lambda p: edit_safetensors(p, lambda sd: sd.update({"decoder.extra.weight": torch.zeros(1)}))),
    "no vae weight file": lambda tmp, folder, src: bad_folder(tmp, folder, lambda p: p.rename(p.with_suffix(".old")), name=""),
    "wrong vae shape": lambda tmp, folder, src: bad_folder(tmp, folder, lambda p: edit_safetensors(p, lambda sd: sd.update({"quant_conv.weight": torch.zeros(3, 3)}))),
    "pickled object": lambda tmp, folder, src: (write_ldm(tmp / "obj.ckpt", *src, evil=NotATensor()), "obj.ckpt"),
    "ldm missing key": lambda tmp, folder, src: (ldm_without(tmp / "m.ckpt", src, "first_stage_model.decoder.up.0.block.0.conv1.weight"), "m.ckpt"),
    "no vae tensors": lambda tmp, folder, src: (ldm_without(tmp / "nv.safetensors", src, "first_stage_model."), "nv.safetensors"),
    "other preset": lambda tmp, folder, src: (sd21_named_file(tmp / "big.safetensors"), "big.safetensors"),
}


def ldm_without(path, src, prefix):
    sd = {k: v.contiguous() for k, v in to_ldm(src[0].state_dict(), src[1].state_dict(), src[0].config, src[1].config).items() if not k.startswith(prefix)}
    if path.suffix == ".ckpt":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    return path


def sd21_named_file(path):
    """A tiny-width UNet with sd21's layout: same kind of names, wrong count and shapes for tiny."""
    cfg = get_preset("sd21").unet_config() | dict(block_out_channels=(32, 32, 32, 32), attention_head_dim=2, norm_num_groups=8, cross_attention_dim=8)
    unet = UNet2DConditionModel(**cfg)
    vae = AutoencoderKL(**TINY.vae_config())
    save_file({k: v.contiguous() for k, v in to_ldm(unet.state_dict(), vae.state_dict(), cfg, vae.config).items()}, str(path))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_weights_raise_and_load_nothing(case, source, folder, tmp_path):
    path, name = CASES[case](tmp_path, folder, source)
    unet, vae = make_models(2)
    before = state(unet), state(vae)
    with pytest.raises(WeightsError) as err:
        load_weights(unet, vae, path, "tiny")
    msg = str(err.value)
    assert name in msg and "\n" not in msg, msg
    assert_state_equal(unet, before[0])
    assert_state_equal(vae, before[1])


# ----------------------------------------------------------------------------- OSEDiff LoRA

# conv_in (also replaced outright, as OSEDiff does), one linear (attention), one 3x3 conv and
# one 1x1 conv in the UNet; one conv in the VAE encoder
LORA_UNET = ["conv_in", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
             "down_blocks.0.resnets.0.conv1", "up_blocks.1.resnets.0.conv_shortcut"]
LORA_VAE = ["encoder.down_blocks.0.resnets.0.conv1"]
RANK = 4


def lora_tensors(module, names, adapter, gen):
    """peft-style lora_A/lora_B tensors with peft's layer shapes for each named module."""
    params = dict(module.named_parameters())
    out = {}
    for n in names:
        w = params[f"{n}.weight"]
        a_shape = (RANK, *w.shape[1:])
        b_shape = (w.shape[0], RANK) + (1, 1) * (w.dim() == 4)
        # small, as trained LoRAs are: large deltas overflow the tiny nets into slow inf/NaN math
        out[f"{n}.lora_A.{adapter}.weight"] = 0.1 * torch.randn(a_shape, generator=gen)
        out[f"{n}.lora_B.{adapter}.weight"] = 0.1 * torch.randn(b_shape, generator=gen)
    return out


@pytest.fixture()
def osediff(source):
    """The contents of an OSEDiff osediff.pkl for the tiny models, conv_in trained outright."""
    gen = torch.Generator().manual_seed(5)
    unet, vae = source
    sd_unet = lora_tensors(unet, LORA_UNET[:3], "default_encoder", gen)
    sd_unet |= lora_tensors(unet, LORA_UNET[3:], "default_decoder", gen)
    sd_unet["conv_in.base_layer.weight"] = 0.1 * torch.randn(unet.conv_in.weight.shape, generator=gen)
    sd_unet["conv_in.base_layer.bias"] = 0.1 * torch.randn(unet.conv_in.bias.shape, generator=gen)
    return {
        "unet_lora_encoder_modules": LORA_UNET[:3], "unet_lora_decoder_modules": LORA_UNET[3:],
        "unet_lora_others_modules": [], "rank_unet": RANK, "state_dict_unet": sd_unet,
        "vae_lora_encoder_modules": LORA_VAE, "rank_vae": RANK,
        "state_dict_vae": lora_tensors(vae, LORA_VAE, "default_encoder", gen),
    }


def expected_merge(module, sd: dict, scale: float) -> dict:
    """W + scale * B @ A for every LoRA, after base_layer tensors replaced their weights."""
    want = state(module)
    for k, v in sd.items():
        if ".base_layer." in k:
            want[k.replace(".base_layer.", ".")] = v
    for k, a in sd.items():
        if ".lora_A." in k:
            mod = k.split(".lora_A.")[0]
            b = sd[k.replace(".lora_A.", ".lora_B.")]
            w = want[f"{mod}.weight"]
            want[f"{mod}.weight"] = w + scale * (b.flatten(1) @ a.flatten(1)).view(w.shape)
    return want


def save_lora_safetensors(path, osediff, **metadata):
    tensors = {f"unet.{k}": v for k, v in osediff["state_dict_unet"].items()}
    tensors |= {f"vae.{k}": v for k, v in osediff["state_dict_vae"].items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in metadata.items()})


@pytest.mark.parametrize("fmt", ["pkl", "safetensors"])
def test_lora_merge_matches_peft_formula(source, osediff, tmp_path, fmt):
    path = tmp_path / f"osediff.{fmt}"
    if fmt == "pkl":
        torch.save(osediff, path)
    else:
        save_lora_safetensors(path, osediff, rank=RANK)
    unet, vae = make_models(1)
    merge_osediff_lora(unet, vae, path)
    scale = 8.0 / RANK  # peft's default lora_alpha, which OSEDiff keeps
    for module, base, sd in ((unet, source[0], osediff["state_dict_unet"]), (vae, source[1], osediff["state_dict_vae"])):
        want, got = expected_merge(base, sd, scale), module.state_dict()
        touched = {k.replace(".base_layer.", ".").split(".lora_")[0].removesuffix(".weight") for k in sd}
        for k, v in want.items():
            if k.rsplit(".", 1)[0] in touched:
                torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-6, msg=k)
            else:  # everything the file does not name stays bit-identical
                assert torch.equal(got[k], v), k


def test_lora_alpha_from_metadata_and_argument(source, osediff, tmp_path):
    path = tmp_path / "l.safetensors"
    save_lora_safetensors(path, osediff, rank=RANK, lora_alpha=2)
    name = f"{LORA_UNET[1]}.weight"
    a, b = (osediff["state_dict_unet"][f"{LORA_UNET[1]}.lora_{x}.default_encoder.weight"] for x in "AB")
    for alpha_arg, alpha in ((None, 2.0), (12, 12.0)):
        unet, vae = make_models(1)
        merge_osediff_lora(unet, vae, path, lora_alpha=alpha_arg)
        want = source[0].state_dict()[name] + alpha / RANK * (b @ a)
        torch.testing.assert_close(unet.state_dict()[name], want, rtol=1e-6, atol=1e-6)


def test_merged_outputs_change_as_the_formula_says(source, osediff, tmp_path):
    """The merged UNet/VAE compute what models with the hand-merged weights compute."""
    path = tmp_path / "osediff.pkl"
    torch.save(osediff, path)
    unet, vae = make_models(1)
    merge_osediff_lora(unet, vae, path)
    ref_unet, ref_vae = make_models(1)
    ref_unet.load_state_dict(expected_merge(ref_unet, osediff["state_dict_unet"], 2.0))
    ref_vae.load_state_dict(expected_merge(ref_vae, osediff["state_dict_vae"], 2.0))
    z, x = torch.randn(1, 4, 8, 8), torch.rand(1, 3, 16, 16)
    ctx, t = torch.randn(1, 2, 1024), torch.tensor([999])
    with torch.no_grad():
        outs = [(u(z, t, encoder_hidden_states=ctx).sample, v.encode(x).latent_dist.mode())
                for u, v in ((unet, vae), (ref_unet, ref_vae), source)]
    for got, ref, base in zip(*outs):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert (got - base).abs().max() > 1e-3


def test_build_pipeline_with_lora(source, folder, osediff, tmp_path):
    path = tmp_path / "osediff.pkl"
    torch.save(osediff, path)
    pipe = build_pipeline("tiny", weights=folder, lora=path)
    from passion_deploy.io_utils import sha256_file

    assert pipe.weights_source == f"diffusers:tiny-diffusers+lora:osediff.pkl:sha256:{sha256_file(path)[:16]}"
    want = expected_merge(source[0], osediff["state_dict_unet"], 2.0)
    torch.testing.assert_close(pipe.unet.conv_in.weight, want["conv_in.weight"])


def lora_case(tmp, osediff, change):
    change(osediff)
    torch.save(osediff, tmp / "bad.pkl")
    return tmp / "bad.pkl"


LORA_CASES = {
    "missing": lambda tmp, o: tmp / "bad.pkl",
    "empty": lambda tmp, o: written(tmp / "bad.pkl", b""),
    "corrupt": lambda tmp, o: written(tmp / "bad.pkl", os.urandom(300)),
    "corrupt safetensors": lambda tmp, o: written(tmp / "bad.safetensors", os.urandom(300)),
    "not osediff": lambda tmp, o: lora_case(tmp, o, lambda d: [d.pop("state_dict_unet"), d.pop("state_dict_vae")]),
    "no lora tensors": lambda tmp, o: lora_case(tmp, o, lambda d: [d["state_dict_unet"].clear(), d["state_dict_vae"].clear()]),
    "wrong shape": lambda tmp, o: lora_case(tmp, o, lambda d: d["state_dict_vae"].update(
        {f"{LORA_VAE[0]}.lora_A.default_encoder.weight": torch.zeros(RANK, 5, 3, 3)})),
    "wrong base shape": lambda tmp, o: lora_case(tmp, o, lambda d: d["state_dict_unet"].update(
        {"conv_in.base_layer.weight": torch.zeros(2, 2)})),
    "lone lora_A": lambda tmp, o: lora_case(tmp, o, lambda d: d["state_dict_vae"].pop(
        f"{LORA_VAE[0]}.lora_B.default_encoder.weight")),
    "unknown module": lambda tmp, o: lora_case(tmp, o, lambda d: d["state_dict_vae"].update(
        {"encoder.nowhere.lora_A.default_encoder.weight": torch.zeros(RANK, 2),
         "encoder.nowhere.lora_B.default_encoder.weight": torch.zeros(2, RANK)})),
    "rank mismatch": lambda tmp, o: lora_case(tmp, o, lambda d: d.update(rank_unet=8)),
    "unprefixed safetensors": lambda tmp, o: save_file({"conv_in.lora_A.weight": torch.zeros(1)}, str(tmp / "bad.safetensors")) or tmp / "bad.safetensors",
}


@pytest.mark.parametrize("case", sorted(LORA_CASES))
def test_bad_lora_raises_and_merges_nothing(case, osediff, tmp_path):
    path = LORA_CASES[case](tmp_path, osediff)
    unet, vae = make_models(1)
    before = state(unet), state(vae)
    with pytest.raises(WeightsError) as err:
        merge_osediff_lora(unet, vae, path)
    msg = str(err.value)
    assert path.name in msg and "\n" not in msg, msg
    assert_state_equal(unet, before[0])
    assert_state_equal(vae, before[1])
