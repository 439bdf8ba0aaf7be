"""passion-import: PassionSR's files (written by tests/passionsr_files.py from the layout spec) become
the project's fake-quant model, whose layers compute what the spec says PassionSR's layers compute.

The reference computations below are written from the spec's formulas (quant-semantics sections
2-4, passionsr-checkpoints section 5), in ldm names, from the files' own tensors and the LoRA
merged by hand; they share nothing with the importer but the files.
"""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open

from passion_deploy.checkpoint import CheckpointError, load_checkpoint
from passion_deploy.config import NAMED_CONFIGS, ConfigError, load_quant_config
from passion_deploy.importers import ImportRefused, import_passionsr, job_from_flags, job_from_yaml, write_checkpoint
from passion_deploy.importers.ldm_config import matching_preset, read_ldm_config
from passion_deploy.quant.layers import QuantLinear
from passion_deploy.quant.quantizer import LBQuantizer, QuantSpec
from passionsr_files import (CONTEXT_TOKENS, EIGHT_BIT_SUBSTRINGS, HEAD_CH, LATENT_TILE, SD21, VAE_FACTOR, quant_layout,
                             sd_shapes, unet_net, vae_net, write_passionsr_files)

UNET = "model.diffusion_model."
VAE = "first_stage_model."

# ldm layer -> (diffusers module in the project's model, how PassionSR runs it)
UNET_LAYERS = {
    "input_blocks.0.0": ("conv_in", "conv"),  # base_layer replaced, then a LoRA
    "input_blocks.1.0.in_layers.2": ("down_blocks.0.resnets.0.conv1", "conv"),  # LoRA, split channels
    "input_blocks.2.0.op": ("down_blocks.0.downsamplers.0.conv", "conv"),  # stride 2: border correction
    "output_blocks.1.0.skip_connection": ("up_blocks.0.resnets.1.conv_shortcut", "conv"),  # 1x1
    "out.2": ("conv_out", "conv"),  # 8-bit
    "time_embed.0": ("time_embedding.linear_1", "linear"),  # 8-bit, 2-D input: channel halves
    "input_blocks.1.0.emb_layers.1": ("down_blocks.0.resnets.0.time_emb_proj", "linear"),
    "input_blocks.1.1.proj_in": ("down_blocks.0.attentions.0.proj_in", "linear"),  # 3-D input: token halves
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q": ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "linear"),
    "output_blocks.2.1.transformer_blocks.0.attn2.to_k": ("up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "linear"),
    "middle_block.1.transformer_blocks.0.ff.net.2": ("mid_block.attentions.0.transformer_blocks.0.ff.net.2", "linear"),
}
UNET_ATTENTIONS = {
    "input_blocks.1.1.transformer_blocks.0.attn1": "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
    "middle_block.1.transformer_blocks.0.attn1": "mid_block.attentions.0.transformer_blocks.0.attn1",
    "output_blocks.2.1.transformer_blocks.0.attn2": "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
}
VAE_LAYERS = {
    "encoder.down.0.block.0.conv1": ("encoder.down_blocks.0.resnets.0.conv1", "conv"),  # LoRA (encoder adapter)
    "decoder.up.1.block.0.conv1": ("decoder.up_blocks.0.resnets.0.conv1", "conv"),  # its decoder LoRA is dropped
    "quant_conv": ("quant_conv", "conv"),  # 8-bit
    "decoder.conv_out": ("decoder.conv_out", "conv"),  # 8-bit
    "encoder.mid.attn_1.q": ("encoder.mid_block.attentions.0.to_q", "conv1x1"),  # a 1x1 conv in ldm, Linear in diffusers
    "decoder.mid.attn_1.proj_out": ("decoder.mid_block.attentions.0.to_out.0", "conv1x1"),
}


# ----------------------------------------------------------------------------- the spec's formulas


def R(v):
    return torch.sign(v) * torch.floor(v.abs() + 0.5)


def fake_quant(x, lo, hi, bits, per_tensor):
    """Asymmetric unsigned LBQ (the released configs). Per-tensor bounds are float64 in PassionSR:
    D and zp in float64, rounded to float32 for the tensor ops; per-channel ones compute in float32."""
    if per_tensor:
        d64 = (hi.double() - lo.double()) / (2**bits - 1)
        d, zp = d64.float(), R(lo.double() / d64).float()
    else:
        d = (hi - lo) / (2**bits - 1)
        zp = R(lo / d)
    return (torch.clamp(R(x / d) - zp, 0, 2**bits - 1) + zp) * d


def layer_bits(ldm: str, bits: int) -> int:
    return 8 if any(s in f"model.{ldm}" for s in EIGHT_BIT_SUBSTRINGS) else bits


def passion_layer(x, ldm, q, w, b, bits, split, kind, stride=1, padding=0):
    """PassionSR's layer function (spec 5.4): conv x' = (x - o)/s + conv(o, W); linear x' = (x + o)/s + W o."""
    k = f"model.model.{ldm}"
    s, o = q[f"{k}.scale_factor"], q[f"{k}.offset"]
    nb = layer_bits(ldm, bits)
    xs = (x + o) / s if kind == "linear" else (x - o) / s
    ws = w * s
    if split:
        h, hc = xs.shape[1] // 2, w.shape[1] // 2
        xq = torch.cat([fake_quant(xs[:, :h], q[f"{k}.act_quantizer_0.x_min"], q[f"{k}.act_quantizer_0.x_max"], nb, True),
                        fake_quant(xs[:, h:], q[f"{k}.act_quantizer_1.x_min"], q[f"{k}.act_quantizer_1.x_max"], nb, True)], 1)
        wq = torch.cat([fake_quant(ws[:, :hc], q[f"{k}.weight_quantizer_0.x_min"], q[f"{k}.weight_quantizer_0.x_max"], nb, False),
                        fake_quant(ws[:, hc:], q[f"{k}.weight_quantizer_1.x_min"], q[f"{k}.weight_quantizer_1.x_max"], nb, False)], 1)
    else:
        xq = fake_quant(xs, q[f"{k}.act_quantizer_0.x_min"], q[f"{k}.act_quantizer_0.x_max"], nb, True)
        wq = fake_quant(ws, q[f"{k}.weight_quantizer_0.x_min"], q[f"{k}.weight_quantizer_0.x_max"], nb, False)
    bq = None if b is None else fake_quant(b, q[f"{k}.bias_quantizer.x_min"], q[f"{k}.bias_quantizer.x_max"], nb, True)
    if kind == "linear":
        return F.linear(xq, wq, bq) + (w @ o.T).squeeze(1)
    return F.conv2d(xq, wq, bq, stride, padding) + F.conv2d(o.expand_as(x), w, None, stride, padding)


def passion_attention(hidden, context, ldm, q, weights, bits):
    """QS-4 with its projections as PassionSR linear layers (split: token halves)."""
    def lin(x, name):
        return passion_layer(x, f"{ldm}.{name}", q, weights[f"{UNET}{ldm}.{name}.weight"],
                             weights.get(f"{UNET}{ldm}.{name}.bias"), bits, True, "linear")

    ctx = hidden if context is None else context
    qx, kx, vx = lin(hidden, "to_q"), lin(ctx, "to_k"), lin(ctx, "to_v")
    b, n, c = qx.shape
    heads = c // HEAD_CH

    def split_heads(t):
        return t.reshape(t.shape[0], t.shape[1], heads, HEAD_CH).permute(0, 2, 1, 3).reshape(t.shape[0] * heads, t.shape[1], HEAD_CH)

    qh, kh, vh = split_heads(qx), split_heads(kx), split_heads(vx)
    k = f"model.model.{ldm}"
    s_qk, s_vw = q[f"{k}.scale_factor_qk"], q[f"{k}.scale_factor_vw"]

    def aq(t, name):
        return fake_quant(t, q[f"{k}.act_quantizer_{name}.x_min"], q[f"{k}.act_quantizer_{name}.x_max"], bits, True)

    scores = aq(qh * s_qk, "q") @ aq(kh / s_qk, "k").transpose(-1, -2)
    p = torch.softmax(scores * HEAD_CH**-0.5, dim=-1)
    out = aq(p * s_vw, "w") @ aq(vh / s_vw[:, None], "v")
    out = out.reshape(b, heads, n, HEAD_CH).permute(0, 2, 1, 3).reshape(b, n, c)
    return lin(out, "to_out.0")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_passionsr_files(tmp_path_factory.mktemp("passionsr"))


def imported(files, yaml_name):
    return import_passionsr(job_from_yaml(files.root / yaml_name, root=files.root), progress=False)


@pytest.fixture(scope="module")
def w8(files):
    return imported(files, "infer_w8a8.yaml")


@pytest.fixture(scope="module")
def w6(files):
    return imported(files, "infer_w6a6.yaml")


def capture(pipe, modules: dict[str, str]):
    """Run the pipeline once at its calibration tile; each named module's first input(s) and output."""
    seen, hooks = {}, []
    for key, path in modules.items():
        def hook(mod, args, kwargs, out, key=key):
            if key not in seen:
                hs = args[0] if args else kwargs["hidden_states"]
                seen[key] = (hs, kwargs.get("encoder_hidden_states"), out)
        hooks.append(pipe.get_submodule(path).register_forward_hook(hook, with_kwargs=True))
    x = torch.rand(1, 3, LATENT_TILE * VAE_FACTOR, LATENT_TILE * VAE_FACTOR, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            pipe(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def close(got, want):
    scale = want.abs().max().item() + 1e-6
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


# ----------------------------------------------------------------------------- the model is PassionSR's function


@pytest.mark.parametrize("which,bits,quant", [("w8", 8, "8a8"), ("w6", 6, "6a6")])
def test_layers_reproduce_the_spec(files, request, which, bits, quant):
    pipe = request.getfixturevalue(which).pipe
    weights = files.merged()
    unet_q, vae_q = files.quant[f"unet_w{quant}.pth"], files.quant[f"vae_w{quant}.pth"]
    mods = {f"u:{ldm}": f"unet.{d}" for ldm, (d, _) in UNET_LAYERS.items()}
    mods |= {f"a:{ldm}": f"unet.{d}" for ldm, d in UNET_ATTENTIONS.items()}
    mods |= {f"v:{ldm}": f"vae.{d}" for ldm, (d, _) in VAE_LAYERS.items()}
    seen = capture(pipe, mods)
    layers = files.unet.layers() | files.vae.layers()
    for ldm, (_, kind) in UNET_LAYERS.items():
        x, _, y = seen[f"u:{ldm}"]
        lay = layers[ldm]
        want = passion_layer(x, ldm, unet_q, weights[f"{UNET}{ldm}.weight"], weights.get(f"{UNET}{ldm}.bias"), bits, True,
                             kind, lay.stride, lay.padding)
        close(y, want)
    for ldm in UNET_ATTENTIONS:
        x, ctx, y = seen[f"a:{ldm}"]
        if ldm.endswith("attn2"):
            assert ctx is not None and ctx.shape[1] == CONTEXT_TOKENS
        close(y, passion_attention(x, ctx, ldm, unet_q, weights, bits))
    for ldm, (_, kind) in VAE_LAYERS.items():
        x, _, y = seen[f"v:{ldm}"]
        lay = layers[ldm]
        w, b = weights[f"{VAE}{ldm}.weight"], weights[f"{VAE}{ldm}.bias"]
        if kind == "conv1x1" and x.dim() == 4:  # the ldm AttnBlock order: NCHW into a 1x1 conv, as PassionSR
            want = passion_layer(x, ldm, vae_q, w, b, bits, False, "conv")
        elif kind == "conv1x1":  # (B, N, C) tokens; PassionSR's 1x1 conv sees (B, C, N, 1)
            want = passion_layer(x.transpose(1, 2).unsqueeze(-1), ldm, vae_q, w, b, bits, False, "conv")
            want = want.squeeze(-1).transpose(1, 2)
        else:
            want = passion_layer(x, ldm, vae_q, w, b, bits, False, kind, lay.stride, lay.padding)
        close(y, want)


def test_quantized_layers_and_bits(w6):
    pipe = w6.pipe
    layers = {n: m for n, m in pipe.unet.named_modules() if hasattr(m, "w_quant")}
    assert len(layers) == 132
    assert layers["conv_out"].w_quant[0].spec.bits == 8 and layers["conv_out"].a_quant[0].spec.bits == 8
    assert layers["time_embedding.linear_1"].b_quant.spec.bits == 8
    assert layers["time_embedding.linear_2"].w_quant[0].spec.bits == 6
    assert layers["conv_in"].w_quant[0].spec.bits == 6  # ldm input_blocks.0.0 is not on PassionSR's 8-bit list
    vae = {n: m for n, m in pipe.vae.named_modules() if hasattr(m, "w_quant")}
    assert {n for n, m in vae.items() if m.w_quant[0].spec.bits == 8} == {
        "quant_conv", "post_quant_conv", "encoder.conv_out", "decoder.conv_out"}
    assert pipe.latent_tile == (LATENT_TILE, LATENT_TILE)  # from the attn1 scale_factor_vw lengths


def test_linear_layers_of_passionsr_blocks_use_passionsr_let_form(w8, tmp_path):
    unet_linears = [m for m in w8.pipe.unet.modules() if isinstance(m, QuantLinear)]
    assert len(unet_linears) > 50 and all(m.let_form == "reference" for m in unet_linears)
    # PassionSR's VAE has no linear layers: its attention projections are 1x1 convs in the conv form,
    # which diffusers' Linear computes in the consistent form
    vae_linears = [m for m in w8.pipe.vae.modules() if isinstance(m, QuantLinear)]
    assert len(vae_linears) == 8 and all(m.let_form == "consistent" for m in vae_linears)
    path = tmp_path / "m.safetensors"
    write_checkpoint(w8, path)
    with safe_open(str(path), "pt") as f:
        recorded = json.loads(f.metadata()["quant_config"])
    assert recorded["unet"]["let_form"] == "reference" and recorded["vae"]["let_form"] == "consistent"
    assert NAMED_CONFIGS["w8a8"].unet.let_form == "consistent"  # the project's own calibrations keep theirs


def test_per_tensor_steps_are_float64_then_float32():
    """A per-tensor quantizer of an imported model derives D and zp in float64 (PassionSR's float64
    bounds), which differs from deriving them in float32 for these bounds."""
    def differ(lo, hi):
        return (hi - lo) / 63 != ((hi.double() - lo.double()) / 63).float()

    candidates = torch.rand(200, 2, generator=torch.Generator().manual_seed(3)) * torch.tensor([-2.0, 4.0])
    lo, hi = next((lo, hi) for lo, hi in candidates if differ(lo, hi))  # bounds where the two derivations differ
    q = LBQuantizer(QuantSpec(6))
    with torch.no_grad():
        q.x_min.fill_(lo.item())
        q.x_max.fill_(hi.item())
    q.initialized.fill_(True)
    x = torch.linspace(-2, 4, 1001)
    plain = q(x)
    q.per_tensor_float64 = True
    assert torch.equal(q(x), fake_quant(x, lo, hi, 6, per_tensor=True))
    assert not torch.equal(q(x), plain)


def test_checkpoint_round_trip(w8, tmp_path):
    path = tmp_path / "m.safetensors"
    write_checkpoint(w8, path)
    loaded = load_checkpoint(path)
    assert loaded.preset == "custom" and loaded.latent_tile == w8.pipe.latent_tile
    assert torch.equal(loaded.context, w8.pipe.context)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), w8.pipe(x))


def test_no_fp_weights_loads_with_the_sd_checkpoint(files, tmp_path):
    job = job_from_flags(files.root / "ldm.yaml", files.root / "sd.ckpt", files.root / "unet_w8a8.pth", "W8A8",
                         context=files.root / "context.pt")
    result = import_passionsr(job, progress=False)
    full, bare = tmp_path / "full.safetensors", tmp_path / "bare.safetensors"
    write_checkpoint(result, full)
    write_checkpoint(result, bare, include_fp_weights=False)
    with safe_open(str(bare), "pt") as f:
        assert not any(k.endswith("conv_in.weight") for k in f.keys())
    with pytest.raises(CheckpointError, match="no FP weights"):
        load_checkpoint(bare)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(bare, weights=files.root / "sd.ckpt")(x), load_checkpoint(full)(x))


def test_both_lora_layouts_merge_alike(files, w8):
    """osediff.pkl (OSEDiff's names) merges to the same UNet as PassionSR's osediff.ckpt."""
    other = imported(files, "infer_unet_only.yaml")
    assert other.pipe.vae.encoder.conv_in.__class__.__name__ == "Conv2d"  # only_Unet: the VAE stays FP
    a, b = w8.pipe.unet.state_dict(), other.pipe.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith(".weight") and "quant" not in k)
    assert other.summary["lora"]["file_format"] == "osediff.pkl" and w8.summary["lora"]["file_format"] == "osediff.ckpt"
    assert w8.summary["lora"]["dropped"] == 4  # the VAE decoder adapter's two pairs


def test_sd21_config_maps_to_the_sd21_preset():
    cfg = read_ldm_config(Path(__file__).parents[1] / "data" / "v2-inference-v-fp32.yaml")
    assert matching_preset(cfg) == "sd21"


def test_sd21_layout_maps_one_to_one(files):
    """PassionSR's files for the real SD2.1 architecture (spec section 4 layout, shapes only, on meta
    tensors): every tensor has exactly one place, of its shape, in the project's sd21 model."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from passion_deploy.config import QuantConfig
    from passion_deploy.importers.inference_yaml import imported_forms
    from passion_deploy.importers.ldm_names import name_maps
    from passion_deploy.importers.quant_tensors import check_eight_bit_layers, expected_tensors, latent_tile
    from passion_deploy.models.presets import SD21_UNET, SD21_VAE
    from passion_deploy.quant.wrap import quantize_component

    # the layout generator agrees with the tiny files it wrote
    assert quant_layout(files.unet, True) == {k: tuple(v.shape) for k, v in files.quant["unet_w8a8.pth"].items()}
    ckpt = {k: torch.empty(s, device="meta") for k, s in sd_shapes(SD21).items()}
    w6 = NAMED_CONFIGS["w6a6"]
    cfg = imported_forms(QuantConfig(unet=w6.unet, vae=dataclasses.replace(w6.vae, split=False)), "test")
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**SD21_UNET), AutoencoderKL(**SD21_VAE)
        quantize_component(unet, cfg.unet, "unet")
        quantize_component(vae, cfg.vae, "vae")
    names = name_maps(ckpt, unet.config, vae.config, Path("v2-1_512-ema-pruned.ckpt"))
    for comp, module, net, split in (("unet", unet, unet_net(SD21), True), ("vae", vae, vae_net(SD21), False)):
        layout, slots = quant_layout(net, split), expected_tensors(module, names[comp])
        assert set(slots) == set(layout), sorted(set(slots) ^ set(layout))[:4]
        assert all(slot.shape in (None, layout[k]) for k, slot in slots.items())
        assert len({slot.target for slot in slots.values()}) == len(slots)
        check_eight_bit_layers(module, names[comp], comp, 6, Path("x.pth"))  # PassionSR's 8-bit rule = ours
    layout = quant_layout(unet_net(SD21), True)
    s_vw = {slot.target.removesuffix(".s_vw"): layout[k][0]
            for k, slot in expected_tensors(unet, names["unet"]).items() if slot.shape is None}
    assert latent_tile(s_vw, 4) == 64  # the release's 512 px tiles


def test_unsupported_ldm_keys_are_refused_by_name(tmp_path, files):
    data = yaml.safe_load((files.root / "ldm.yaml").read_text())
    data["model"]["params"]["unet_config"]["params"]["num_classes"] = 1000
    p = tmp_path / "ldm.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ImportRefused, match="num_classes") as e:
        read_ldm_config(p)
    assert str(p) in str(e.value)


# ----------------------------------------------------------------------------- one-sentence refusals


class NeedsCode:  # pickled by reference: loading it would import and run this module's code
    pass


def broken_copy(files, tmp_path, change_unet=None, change_yaml=None, raw=None):
    """A copy of the YAML's files with the UNet checkpoint (or the YAML) changed; returns the YAML path."""
    root = tmp_path / "broken"
    shutil.copytree(files.root, root)
    if change_unet or raw is not None:
        sd = dict(files.quant["unet_w8a8.pth"])
        if change_unet:
            change_unet(sd)
        torch.save(raw if raw is not None else sd, root / "unet_w8a8.pth")
    if change_yaml:
        data = yaml.safe_load((root / "infer_w8a8.yaml").read_text())
        change_yaml(data)
        (root / "infer_w8a8.yaml").write_text(yaml.safe_dump(data))
    return root / "infer_w8a8.yaml"


def rename(sd, old, new):
    sd[new] = sd.pop(old)


KEY = "model.model.input_blocks.1.1.proj_in.scale_factor"
CASES = {
    "wrong name": (dict(change_unet=lambda sd: rename(sd, KEY, KEY.replace("proj_in", "proj_inn"))),
                   ["unet_w8a8.pth", "unknown tensor", "proj_inn.scale_factor"]),
    "wrong shape": (dict(change_unet=lambda sd: sd.update({KEY: sd[KEY].reshape(-1)})),
                    ["unet_w8a8.pth", KEY, "(32,)", "(1, 32)"]),
    "missing tensor": (dict(change_unet=lambda sd: sd.pop("model.model.out.2.act_quantizer_1.x_max")),
                       ["unet_w8a8.pth", "missing tensor", "out.2.act_quantizer_1.x_max"]),
    "pickle that needs code": (dict(raw={"model.model.x": NeedsCode()}), ["unet_w8a8.pth", "weights_only"]),
    "quant_ckpt that does not exist": (
        dict(change_yaml=lambda d: d["quantize_config"]["Unet"].update(quant_ckpt="weights/U_W8A8/nope.pth")),
        ["infer_w8a8.yaml", "quantize_config.Unet.quant_ckpt", "weights/U_W8A8/nope.pth"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_sentence_naming_the_file(files, tmp_path, case, capsys):
    from passion_deploy.cli.import_passionsr import main

    change, fragments = CASES[case]
    config = broken_copy(files, tmp_path, **change)
    assert main(["--config", str(config), "--root", str(config.parent), "--out", str(tmp_path / "m.safetensors"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("passion-import: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "m.safetensors").exists()


def test_quant_ckpt_is_never_ignored(files, tmp_path, capsys, monkeypatch):
    """Every command that takes a PassionSR YAML either imports its quant_ckpt or stops naming it."""
    from passion_deploy.cli import calibrate, sr
    from passion_deploy.images import write_png

    config = broken_copy(files, tmp_path, change_yaml=lambda d: d["quantize_config"]["Unet"].update(quant_ckpt="gone.pth"))
    write_png(tmp_path / "lr" / "a.png", torch.rand(3, 4, 4))
    monkeypatch.chdir(config.parent)
    with pytest.raises(ConfigError, match="quantize_config.Unet.quant_ckpt"):
        load_quant_config(config)  # the plain config reader refuses rather than drops it
    assert calibrate.main(["--config", str(config), "--out", str(tmp_path / "c.safetensors"), "--no-progress"]) == 2
    assert sr.main(["--config", str(config), "-i", str(tmp_path / "lr"), "-o", str(tmp_path / "out")]) == 2
    for err in capsys.readouterr().err.strip().splitlines():
        assert "quantize_config.Unet.quant_ckpt" in err and "gone.pth" in err, err


def test_calibrate_and_sr_run_the_imported_model(files, tmp_path, monkeypatch):
    from passion_deploy.cli import calibrate, sr
    from passion_deploy.images import read_image, write_png

    monkeypatch.chdir(files.root)  # PassionSR's paths are relative to where it runs
    out = tmp_path / "c.safetensors"
    assert calibrate.main(["--config", "infer_w8a8.yaml", "--out", str(out), "--no-progress"]) == 0
    assert load_checkpoint(out).quant_config.unet.let_form == "reference"
    lr = tmp_path / "lr"
    write_png(lr / "a.png", torch.rand(3, 4, 4))
    assert sr.main(["--config", "infer_w8a8.yaml", "-i", str(lr), "-o", str(tmp_path / "sr"), "--color-fix", "none"]) == 0
    assert read_image(tmp_path / "sr" / "a.png").shape == (3, 16, 16)
    assert sr.main(["--config", "infer_w8a8.yaml", "--backend", "fp16", "-i", str(lr), "-o", str(tmp_path / "x")]) == 2
