"""Miniature files in PassionSR's layouts, written from the layout spec
(shared/spec/passionsr-checkpoints.md) and ldm's module structure, independently of the importer.

What a PassionSR user has on disk, at toy size:

    ldm.yaml              ldm model config (UNetModel with spatial transformers + AutoencoderKL)
    sd.ckpt               {"state_dict": ...}: model.diffusion_model.*, first_stage_model.*, cond_stage_model.*,
                          12 schedule buffers of shape (1000,)
    osediff.ckpt          PassionSR's LoRA dict (unet_state_dict / vae_state_dict, module lists, ranks)
    osediff.pkl           OSEDiff's LoRA dict (state_dict_unet / state_dict_vae)
    context.pt            the empty-prompt context, one tensor (1, 77, CONTEXT_DIM)
    unet_w8a8.pth ...     QuantWrapper state dicts: model.model.<ldm path>.<tensor> in spec section 4 order
    infer_w8a8.yaml ...   PassionSR's inference YAML tying them together

The module structure is ldm's (openaimodel.UNetModel, model.Encoder/Decoder) written out here by
hand; `Layer` records each quantized layer with the shapes of its weight, so tests can recompute
its function from the spec's formulas.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

# --- the architecture (GroupNorm(32)-compatible channel counts) -------------------------------


@dataclass(frozen=True)
class Arch:
    """The numbers of an ldm config in SD2's schema."""

    model_ch: int
    channel_mult: tuple
    num_res: int
    attn_res: tuple  # ds values (1, 2, 4, ...) whose level has attention
    head_ch: int
    context_dim: int
    latent_tile: int  # the UNet's calibration tile (latent pixels): attn1 scale_factor_vw has (tile / 2^level)^2 entries
    vae_ch: int
    vae_mult: tuple
    vae_res: int


TINY = Arch(32, (1, 2, 2), 1, (1, 2), 16, 32, 8, 32, (1, 2), 1)  # levels 0 and 1 with attention, not 2
SD21 = Arch(320, (1, 2, 4, 4), 2, (4, 2, 1), 64, 1024, 64, 128, (1, 2, 4, 4), 2)  # v2-inference.yaml, 512 px tiles
IN_CH, OUT_CH, Z = 4, 4, 4
HEAD_CH, CONTEXT_DIM, LATENT_TILE = TINY.head_ch, TINY.context_dim, TINY.latent_tile
CONTEXT_TOKENS = 77
SCALE_FACTOR = 0.18215
VAE_FACTOR = 2 ** (len(TINY.vae_mult) - 1)
MODEL_CH = TINY.model_ch
LORA_RANK = 4

# spec section 5.1: these substrings of "model.<ldm path>" keep a layer at 8 bits
EIGHT_BIT_SUBSTRINGS = ["time_embed.0", "out.2", "quant_conv", "post_quant_conv", "encoder.conv_out", "decoder.conv_out"]


@dataclass
class Layer:
    """One nn.Conv2d / nn.Linear of an ldm network (what PassionSR wraps)."""

    path: str  # ldm path inside model.diffusion_model / first_stage_model
    weight: tuple[int, ...]
    bias: bool = True
    stride: int = 1
    padding: int = 0


@dataclass
class Net:
    """An ldm network in module order: layers, norms and (UNet) attention modules, interleaved."""

    items: list = field(default_factory=list)  # ("layer", Layer) | ("norm", path, C, kind) | ("attn", path, d_head, n_keys)

    def conv(self, path, c_in, c_out, k=3, stride=1, bias=True):
        self.items.append(("layer", Layer(path, (c_out, c_in, k, k), bias, stride, k // 2 if stride == 1 else (1 if k == 3 else 0))))

    def linear(self, path, c_in, c_out, bias=True):
        self.items.append(("layer", Layer(path, (c_out, c_in), bias)))

    def norm(self, path, c, kind="group"):
        self.items.append(("norm", path, c, kind))

    def layers(self) -> dict[str, Layer]:
        return {it[1].path: it[1] for it in self.items if it[0] == "layer"}


def _resblock(net: Net, p: str, c_in: int, c_out: int, emb: int | None, names=("in_layers.0", "in_layers.2", "out_layers.0", "out_layers.3", "skip_connection")):
    n1, c1, n2, c2, skip = names
    net.norm(f"{p}.{n1}", c_in)
    net.conv(f"{p}.{c1}", c_in, c_out)
    if emb is not None:
        net.linear(f"{p}.emb_layers.1", emb, c_out)
    net.norm(f"{p}.{n2}", c_out)
    net.conv(f"{p}.{c2}", c_out, c_out)
    if c_in != c_out:
        net.conv(f"{p}.{skip}", c_in, c_out, k=1)


def _transformer(net: Net, p: str, c: int, n_tokens: int, a: Arch):
    """ldm SpatialTransformer (use_linear_in_transformer: True, depth 1) in PassionSR's registration
    order: the quantized block holds attn1, ff, attn2, then norm1..3."""
    net.norm(f"{p}.norm", c)
    net.linear(f"{p}.proj_in", c, c)
    t = f"{p}.transformer_blocks.0"
    for attn, ctx, keys in (("attn1", c, n_tokens), ("ff", None, None), ("attn2", a.context_dim, CONTEXT_TOKENS)):
        if attn == "ff":
            net.linear(f"{t}.ff.net.0.proj", c, 8 * c)  # GEGLU: 2 x (4 c)
            net.linear(f"{t}.ff.net.2", 4 * c, c)
            continue
        net.items.append(("attn", f"{t}.{attn}", a.head_ch, keys))
        net.linear(f"{t}.{attn}.to_q", c, c, bias=False)
        net.linear(f"{t}.{attn}.to_k", ctx, c, bias=False)
        net.linear(f"{t}.{attn}.to_v", ctx, c, bias=False)
        net.linear(f"{t}.{attn}.to_out.0", c, c)
        net.items.append(("attn_end", f"{t}.{attn}"))
    for i in (1, 2, 3):
        net.norm(f"{t}.norm{i}", c, "layer")
    net.linear(f"{p}.proj_out", c, c)


def unet_net(a: Arch = TINY) -> Net:
    """ldm openaimodel.UNetModel for an Arch."""
    net = Net()
    mc = a.model_ch
    emb = 4 * mc
    net.linear("time_embed.0", mc, emb)
    net.linear("time_embed.2", emb, emb)
    net.conv("input_blocks.0.0", IN_CH, mc)
    ch, chans, ds, idx = mc, [mc], 1, 1
    for level, mult in enumerate(a.channel_mult):
        for _ in range(a.num_res):
            out = mc * mult
            _resblock(net, f"input_blocks.{idx}.0", ch, out, emb)
            ch = out
            if ds in a.attn_res:
                _transformer(net, f"input_blocks.{idx}.1", ch, (a.latent_tile // ds) ** 2, a)
            chans.append(ch)
            idx += 1
        if level != len(a.channel_mult) - 1:
            net.conv(f"input_blocks.{idx}.0.op", ch, ch, stride=2)
            chans.append(ch)
            ds *= 2
            idx += 1
    _resblock(net, "middle_block.0", ch, ch, emb)
    _transformer(net, "middle_block.1", ch, (a.latent_tile // ds) ** 2, a)
    _resblock(net, "middle_block.2", ch, ch, emb)
    idx = 0
    for level, mult in reversed(list(enumerate(a.channel_mult))):
        for i in range(a.num_res + 1):
            out = mc * mult
            _resblock(net, f"output_blocks.{idx}.0", ch + chans.pop(), out, emb)
            ch, sub = out, 1
            if ds in a.attn_res:
                _transformer(net, f"output_blocks.{idx}.1", ch, (a.latent_tile // ds) ** 2, a)
                sub = 2
            if level and i == a.num_res:
                net.conv(f"output_blocks.{idx}.{sub}.conv", ch, ch)
                ds //= 2
            idx += 1
    net.norm("out.0", ch)
    net.conv("out.2", mc, OUT_CH)
    return net


def _vae_res(net: Net, p: str, c_in: int, c_out: int):
    _resblock(net, p, c_in, c_out, None, ("norm1", "conv1", "norm2", "conv2", "nin_shortcut"))


def _vae_attn(net: Net, p: str, c: int):
    net.norm(f"{p}.norm", c)
    for n in ("q", "k", "v", "proj_out"):
        net.conv(f"{p}.{n}", c, c, k=1)


def vae_net(a: Arch = TINY) -> Net:
    """ldm AutoencoderKL (model.Encoder / model.Decoder, double_z) for an Arch."""
    net = Net()
    vc, vm = a.vae_ch, list(a.vae_mult)
    net.conv("encoder.conv_in", 3, vc)
    in_mult = [1] + vm
    block_in = vc
    for i, mult in enumerate(vm):
        block_in, block_out = vc * in_mult[i], vc * mult
        for j in range(a.vae_res):
            _vae_res(net, f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != len(vm) - 1:
            net.items.append(("layer", Layer(f"encoder.down.{i}.downsample.conv", (block_in, block_in, 3, 3), True, 2, 0)))
    _vae_res(net, "encoder.mid.block_1", block_in, block_in)
    _vae_attn(net, "encoder.mid.attn_1", block_in)
    _vae_res(net, "encoder.mid.block_2", block_in, block_in)
    net.norm("encoder.norm_out", block_in)
    net.conv("encoder.conv_out", block_in, 2 * Z)
    block_in = vc * vm[-1]
    net.conv("decoder.conv_in", Z, block_in)
    _vae_res(net, "decoder.mid.block_1", block_in, block_in)
    _vae_attn(net, "decoder.mid.attn_1", block_in)
    _vae_res(net, "decoder.mid.block_2", block_in, block_in)
    levels = {}  # built from the deepest level up, registered in index order (ldm's up.insert(0, ...))
    for i in reversed(range(len(vm))):
        block_out = vc * vm[i]
        level = Net()
        for j in range(a.vae_res + 1):
            _vae_res(level, f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
        if i != 0:
            level.conv(f"decoder.up.{i}.upsample.conv", block_in, block_in)
        levels[i] = level.items
    for i in sorted(levels):
        net.items += levels[i]
    net.norm("decoder.norm_out", block_in)
    net.conv("decoder.conv_out", block_in, 3)
    net.conv("quant_conv", 2 * Z, 2 * Z, k=1)
    net.conv("post_quant_conv", Z, Z, k=1)
    return net


# --- the files ----------------------------------------------------------------------------


def ldm_yaml(a: Arch = TINY) -> dict:
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "image_size": 64, "channels": 4,
        "conditioning_key": "crossattn", "scale_factor": SCALE_FACTOR, "use_ema": False, "parameterization": "v",
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "use_checkpoint": True, "use_fp16": False, "image_size": 32, "in_channels": IN_CH, "out_channels": OUT_CH,
            "model_channels": a.model_ch, "attention_resolutions": list(a.attn_res), "num_res_blocks": a.num_res,
            "channel_mult": list(a.channel_mult), "num_head_channels": a.head_ch, "use_spatial_transformer": True,
            "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": a.context_dim, "legacy": False}},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": Z, "monitor": "val/rec_loss", "ddconfig": {
                "double_z": True, "z_channels": Z, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": a.vae_ch,
                "ch_mult": list(a.vae_mult), "num_res_blocks": a.vae_res, "attn_resolutions": [], "dropout": 0.0},
            "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                              "params": {"freeze": True, "layer": "penultimate"}},
    }}}


def sd_state_dict(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """An original-SD checkpoint's state dict with random weights (fan-in scaled, so activations stay O(1))."""
    sd = {}
    for prefix, net in (("model.diffusion_model.", unet_net()), ("first_stage_model.", vae_net())):
        for it in net.items:
            if it[0] == "layer":
                layer = it[1]
                fan_in = 1
                for s in layer.weight[1:]:
                    fan_in *= s
                sd[f"{prefix}{layer.path}.weight"] = torch.randn(layer.weight, generator=gen) / fan_in**0.5
                if layer.bias:
                    sd[f"{prefix}{layer.path}.bias"] = 0.05 * torch.randn(layer.weight[0], generator=gen)
            elif it[0] == "norm":
                sd[f"{prefix}{it[1]}.weight"] = 1 + 0.1 * torch.randn(it[2], generator=gen)
                sd[f"{prefix}{it[1]}.bias"] = 0.1 * torch.randn(it[2], generator=gen)
    sd["cond_stage_model.model.token_embedding.weight"] = torch.randn(8, 4, generator=gen)
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                 "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                 "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        sd[name] = torch.rand(1000, generator=gen)
    return sd


# LoRA targets: diffusers module name -> (ldm key of its weight, adapter). The UNet's three
# adapters are all merged; the VAE's decoder adapter is dropped (spec section 3).
LORA_UNET = {
    "conv_in": ("model.diffusion_model.input_blocks.0.0.weight", "default_encoder"),
    "down_blocks.0.resnets.0.conv1": ("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", "default_encoder"),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q":
        ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", "default_encoder"),
    "up_blocks.0.resnets.0.conv2": ("model.diffusion_model.output_blocks.0.0.out_layers.3.weight", "default_decoder"),
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k":
        ("model.diffusion_model.output_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", "default_decoder"),
    "mid_block.attentions.0.proj_in": ("model.diffusion_model.middle_block.1.proj_in.weight", "default_others"),
}
LORA_VAE = {
    "encoder.down_blocks.0.resnets.0.conv1": ("first_stage_model.encoder.down.0.block.0.conv1.weight", "default_encoder"),
    "encoder.mid_block.attentions.0.to_q": ("first_stage_model.encoder.mid.attn_1.q.weight", "default_encoder"),
    "decoder.up_blocks.0.resnets.0.conv1": ("first_stage_model.decoder.up.1.block.0.conv1.weight", "default_decoder"),
    "decoder.mid_block.attentions.0.to_v": ("first_stage_model.decoder.mid.attn_1.v.weight", "default_decoder"),
}


def _lora_pair(module: str, w: torch.Tensor, adapter: str, gen, linear: bool) -> dict:
    """peft's shapes: conv A (r, Cin, kh, kw), B (Cout, r, 1, 1); linear A (r, in), B (out, r).
    `linear`: diffusers holds the module as nn.Linear (the VAE's attention, a 1x1 conv in ldm)."""
    if linear or w.dim() == 2:
        a, b = (LORA_RANK, w.shape[1]), (w.shape[0], LORA_RANK)
    else:
        a, b = (LORA_RANK, *w.shape[1:]), (w.shape[0], LORA_RANK, 1, 1)
    return {f"{module}.lora_A.{adapter}.weight": 0.1 * torch.randn(a, generator=gen),
            f"{module}.lora_B.{adapter}.weight": 0.1 * torch.randn(b, generator=gen)}


def lora_dicts(sd: dict, gen) -> tuple[dict, dict]:
    unet, vae = {}, {}
    for module, (key, adapter) in LORA_UNET.items():
        unet |= _lora_pair(module, sd[key], adapter, gen, linear=False)
    unet["conv_in.base_layer.weight"] = torch.randn(sd["model.diffusion_model.input_blocks.0.0.weight"].shape, generator=gen) / 6
    unet["conv_in.base_layer.bias"] = 0.05 * torch.randn(MODEL_CH, generator=gen)
    for module, (key, adapter) in LORA_VAE.items():
        vae |= _lora_pair(module, sd[key], adapter, gen, linear=".attentions." in module)
    return unet, vae


def _modules(table: dict, adapter: str) -> list[str]:
    return [m for m, (_, a) in table.items() if a == adapter]


def passionsr_lora(unet: dict, vae: dict) -> dict:
    """PassionSR's osediff.ckpt."""
    return {"unet_lora_encoder_modules": _modules(LORA_UNET, "default_encoder"),
            "unet_lora_decoder_modules": _modules(LORA_UNET, "default_decoder"),
            "unet_lora_others_modules": _modules(LORA_UNET, "default_others"),
            "rank_unet": LORA_RANK, "rank_vae": LORA_RANK,
            "vae_lora_encoder_modules": _modules(LORA_VAE, "default_encoder"),
            "vae_lora_decoder_modules": _modules(LORA_VAE, "default_decoder"),
            "unet_state_dict": unet, "vae_state_dict": vae}


def osediff_lora(unet: dict, vae: dict) -> dict:
    """OSEDiff's own osediff.pkl: the same, with its dict names."""
    d = passionsr_lora(unet, vae)
    d["state_dict_unet"], d["state_dict_vae"] = d.pop("unet_state_dict"), d.pop("vae_state_dict")
    return d


def merged_ldm_weights(sd: dict, lora_unet: dict, lora_vae: dict) -> dict[str, torch.Tensor]:
    """The FP weights PassionSR runs, by ldm key: conv_in replaced by base_layer, then W + (8/r) B A
    for every UNet LoRA and the VAE's encoder adapter only."""
    out = dict(sd)
    out["model.diffusion_model.input_blocks.0.0.weight"] = lora_unet["conv_in.base_layer.weight"]
    out["model.diffusion_model.input_blocks.0.0.bias"] = lora_unet["conv_in.base_layer.bias"]
    scale = 8.0 / LORA_RANK
    for table, lora in ((LORA_UNET, lora_unet), (LORA_VAE, lora_vae)):
        for module, (key, adapter) in table.items():
            if table is LORA_VAE and adapter == "default_decoder":
                continue
            a = lora[f"{module}.lora_A.{adapter}.weight"]
            b = lora[f"{module}.lora_B.{adapter}.weight"]
            w = out[key]
            out[key] = w + scale * (b.flatten(1) @ a.flatten(1)).reshape(w.shape)
    return out


def quant_layout(net: Net, split: bool) -> dict[str, tuple[int, ...]]:
    """Spec section 4's keys and shapes of a QuantWrapper state dict, without values."""
    out = {}
    for it in net.items:
        if it[0] == "norm":
            out[f"model.model.{it[1]}.weight"] = out[f"model.model.{it[1]}.bias"] = (it[2],)
        elif it[0] == "attn":
            out[f"model.model.{it[1]}.scale_factor_qk"] = (it[2],)
            out[f"model.model.{it[1]}.scale_factor_vw"] = (it[3],)
        elif it[0] == "attn_end":
            for q in "qkvw":
                out[f"model.model.{it[1]}.act_quantizer_{q}.x_min"] = out[f"model.model.{it[1]}.act_quantizer_{q}.x_max"] = ()
        else:
            layer = it[1]
            p, w = f"model.model.{layer.path}", layer.weight
            out[f"{p}.scale_factor"] = out[f"{p}.offset"] = (1, w[1]) + (1,) * (len(w) - 2)
            if layer.bias:
                out[f"{p}.bias_quantizer.x_min"] = out[f"{p}.bias_quantizer.x_max"] = ()
            for i in range(2 if split else 1):
                out[f"{p}.weight_quantizer_{i}.x_min"] = out[f"{p}.weight_quantizer_{i}.x_max"] = (w[0],) + (1,) * (len(w) - 1)
                out[f"{p}.act_quantizer_{i}.x_min"] = out[f"{p}.act_quantizer_{i}.x_max"] = ()
    return out


def sd_shapes(a: Arch) -> dict[str, tuple[int, ...]]:
    """The UNet and VAE tensor names and shapes of an original-SD checkpoint for an Arch."""
    out = {}
    for prefix, net in (("model.diffusion_model.", unet_net(a)), ("first_stage_model.", vae_net(a))):
        for it in net.items:
            if it[0] == "layer":
                out[f"{prefix}{it[1].path}.weight"] = it[1].weight
                if it[1].bias:
                    out[f"{prefix}{it[1].path}.bias"] = (it[1].weight[0],)
            elif it[0] == "norm":
                out[f"{prefix}{it[1]}.weight"] = out[f"{prefix}{it[1]}.bias"] = (it[2],)
    return out


def quant_state_dict(net: Net, weights: dict, prefix: str, split: bool, gen) -> dict[str, torch.Tensor]:
    """A QuantWrapper state dict in spec section 4's order and shapes, float32, with boundaries
    that make sense for the weights (per output channel min/max of W*s) and O(1) activations."""
    sd = {}
    attn_quantizers: list[str] = []
    for it in net.items:
        kind = it[0]
        if kind == "norm":
            sd[f"model.model.{it[1]}.weight"] = weights[f"{prefix}{it[1]}.weight"].clone()
            sd[f"model.model.{it[1]}.bias"] = weights[f"{prefix}{it[1]}.bias"].clone()
        elif kind == "attn":
            _, path, d_head, n_keys = it
            sd[f"model.model.{path}.scale_factor_qk"] = torch.exp(0.2 * torch.randn(d_head, generator=gen))
            sd[f"model.model.{path}.scale_factor_vw"] = torch.exp(0.2 * torch.randn(n_keys, generator=gen))
            attn_quantizers.append(path)
        elif kind == "attn_end":
            path = it[1]
            for q in "qkvw":
                lo = 0.0 if q == "w" else -(2.0 + torch.rand((), generator=gen).item())
                hi = (0.4 if q == "w" else 2.0) + torch.rand((), generator=gen).item()
                sd[f"model.model.{path}.act_quantizer_{q}.x_min"] = torch.tensor(lo, dtype=torch.float32)
                sd[f"model.model.{path}.act_quantizer_{q}.x_max"] = torch.tensor(hi, dtype=torch.float32)
        else:
            layer = it[1]
            c_out, c_in = layer.weight[0], layer.weight[1]
            nd = len(layer.weight)
            vec = (1, c_in) + (1,) * (nd - 2)
            s = torch.exp(0.3 * torch.randn(vec, generator=gen))
            sd[f"model.model.{layer.path}.scale_factor"] = s
            sd[f"model.model.{layer.path}.offset"] = 0.1 * torch.randn(vec, generator=gen)
            if layer.bias:
                b = weights[f"{prefix}{layer.path}.bias"]
                sd[f"model.model.{layer.path}.bias_quantizer.x_min"] = b.min().clone()
                sd[f"model.model.{layer.path}.bias_quantizer.x_max"] = b.max().clone()
            ws = weights[f"{prefix}{layer.path}.weight"] * s
            halves = [ws[:, : c_in // 2], ws[:, c_in // 2:]] if split else [ws]
            for i, h in enumerate(halves):
                flat = h.flatten(1)
                shape = (c_out,) + (1,) * (nd - 1)
                sd[f"model.model.{layer.path}.weight_quantizer_{i}.x_min"] = flat.min(dim=1).values.reshape(shape)
                sd[f"model.model.{layer.path}.weight_quantizer_{i}.x_max"] = flat.max(dim=1).values.reshape(shape)
                sd[f"model.model.{layer.path}.act_quantizer_{i}.x_min"] = torch.tensor(-(1.5 + torch.rand((), generator=gen).item()))
                sd[f"model.model.{layer.path}.act_quantizer_{i}.x_max"] = torch.tensor(1.5 + torch.rand((), generator=gen).item())
    return sd


def inference_yaml(root: Path, name: str, bits: int, unet_quant: str, vae_quant: str | None, lora: str | None) -> Path:
    """PassionSR's inference YAML (schema of scripts/inference/config/.../saw_U_W8A8_V_W8A8.yaml),
    paths relative to `root` as PassionSR's are relative to its repository root."""
    def block(ckpt, split, method):
        return {"quant_ckpt": ckpt, "quantype": "PTQ", "method": method, "only_weight": False,
                "weight_quant_bits": bits, "weight_sym": False, "weight_sign": False, "act_quant_bits": bits,
                "act_sign": False, "act_sym": False, "split": split, "layer_type": "2Dquant", "s_alpha": 0.3}

    data = {
        "device": "cuda:0", "out_dir": "results/x", "dataset": "DIV2K_val",
        "basic_config": {"seed": 42, "precision": "autocast", "process_size": 512, "config": "ldm.yaml", "ckpt": "sd.ckpt",
                         "pretrained_model_name_or_path": "hf-models/sd21", "context_embedding_path": "context.pt",
                         "upscale": 4, "align_method": "adain", "merge_lora": True,
                         **({"lora_weights_path": lora} if lora else {})},
        "tile_config": {"vae_decoder_tiled_size": 224, "vae_encoder_tiled_size": 1024, "latent_tiled_size": 64,
                        "latent_tiled_overlap": 32},
        "quantize_config": {"quantize": True, "only_Unet": vae_quant is None,
                            "Unet": block(unet_quant, True, "saw" if bits == 8 else "saw_sep"),
                            **({"Vae": block(vae_quant, False, "saw")} if vae_quant else {})},
    }
    path = root / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class PassionFiles:
    root: Path
    sd: dict  # the SD checkpoint's state dict
    lora_unet: dict
    lora_vae: dict
    context: torch.Tensor
    quant: dict  # file name -> state dict
    unet: Net
    vae: Net

    def merged(self) -> dict[str, torch.Tensor]:
        return merged_ldm_weights(self.sd, self.lora_unet, self.lora_vae)


def write_passionsr_files(root: Path, seed: int = 0) -> PassionFiles:
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    (root / "ldm.yaml").write_text(yaml.safe_dump(ldm_yaml(), sort_keys=False))
    sd = sd_state_dict(gen)
    torch.save({"state_dict": sd}, root / "sd.ckpt")
    lora_unet, lora_vae = lora_dicts(sd, gen)
    torch.save(passionsr_lora(lora_unet, lora_vae), root / "osediff.ckpt")
    torch.save(osediff_lora(lora_unet, lora_vae), root / "osediff.pkl")
    context = torch.randn(1, CONTEXT_TOKENS, CONTEXT_DIM, generator=gen)
    torch.save(context, root / "context.pt")
    merged = merged_ldm_weights(sd, lora_unet, lora_vae)
    unet, vae = unet_net(), vae_net()
    quant = {}
    for bits in (8, 6):
        quant[f"unet_w{bits}a{bits}.pth"] = quant_state_dict(unet, merged, "model.diffusion_model.", True, gen)
        quant[f"vae_w{bits}a{bits}.pth"] = quant_state_dict(vae, merged, "first_stage_model.", False, gen)
    for name, qsd in quant.items():
        torch.save(qsd, root / name)
    for bits in (8, 6):
        inference_yaml(root, f"infer_w{bits}a{bits}.yaml", bits, f"unet_w{bits}a{bits}.pth", f"vae_w{bits}a{bits}.pth",
                       "osediff.ckpt")
    inference_yaml(root, "infer_unet_only.yaml", 8, "unet_w8a8.pth", None, "osediff.pkl")
    return PassionFiles(root, sd, lora_unet, lora_vae, context, quant, unet, vae)
