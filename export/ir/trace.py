"""Build the deploy IR graph of a pipeline component by walking its diffusers modules.

The walk mirrors the forward code of the diffusers blocks the project's presets use
(UNet2DConditionModel with (CrossAttn)Down/Up blocks, ResnetBlock2D, Transformer2DModel,
BasicTransformerBlock with GEGLU, Down/Upsample2D; AutoencoderKL's Encoder and Decoder) and
fails with one sentence on anything else. While it emits nodes it also runs the PyTorch
module on a probe input, so every value has a reference tensor; `trace_*` returns the graph
and the reference output, which tests compare with the pipeline's own forward.

`quantized=False` emits the same graph with the fake-quant layers' FP weights as float ops:
the FP32 baseline "same graph without quantization".

Constant folding (spec section 1): with t = 999 and the fixed empty-prompt context, the time
embedding MLP, every ResBlock time projection and every cross-attention K/V projection are
constants; `fold=True` evaluates them with the (fake-quant) modules themselves, so the folded
values are exactly what the fake-quant model computes. `fold=False` keeps them as graph ops
with `timestep` and `context` inputs. A folded graph lists the layers it folded in
`meta["folded_layers"]`: module path -> the constant holding its output, or None for the time
embedding MLP, whose output then feeds nothing but folded layers. Runtimes that run the
diffusers modules themselves (triton) replace those layers by these constants.
"""
from __future__ import annotations

from passion_deploy.errors import PassionError
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from passion_deploy.quant.attention import LdmVaeAttnProcessor, QuantAttnProcessor, ldm_attention_core
from passion_deploy.quant.layers import QuantConv, QuantLayer, QuantLinear
from passion_deploy.models.components import COMPONENTS
from passion_deploy.quant.wrap import EIGHT_BIT_LAYERS

from .graph import Graph, Node
from .recipes import attention_recipe, layer_recipe



class ExportError(PassionError):
    """A model the exporter cannot represent; the message says what and where."""


@dataclass
class V:
    """A traced value: its graph name and its reference tensor (freed when no longer held)."""

    name: str
    ref: torch.Tensor


# set to a dict to keep every reference tensor by value name (tests and layer-level checks)
KEEP_REFS: dict | None = None


class Tracer:
    def __init__(self, name: str, quantized: bool, eight_bit: set[str]):
        self.g = Graph(name)
        self.quantized = quantized
        self.eight_bit = eight_bit
        self._count: dict[str, int] = {}
        self.fold = True

    def _fresh(self, hint: str) -> str:
        hint = hint.replace(".", "/") or "v"
        n = self._count.get(hint, 0)
        self._count[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def input(self, name: str, ref: torch.Tensor, shape: tuple) -> V:
        self.g.inputs[name] = shape
        self.g.shapes[name] = tuple(ref.shape)
        return V(name, ref)

    def output(self, v: V, name: str, shape: tuple) -> None:
        self.g.nodes.append(Node("identity", [v.name], [name], name=name))
        self.g.outputs[name] = shape
        self.g.shapes[name] = tuple(v.ref.shape)

    def folded(self, layer: str, value: V | None) -> None:
        self.g.meta.setdefault("folded_layers", {})[layer] = None if value is None else value.name

    def const(self, hint: str, value) -> V:
        t = torch.as_tensor(value).detach().float().cpu()
        name = self._fresh("c/" + hint)
        self.g.consts[name] = t.numpy().copy()
        return V(name, t)

    def emit(self, op: str, inputs: list[V], ref: torch.Tensor, attrs: dict | None = None, name: str = "") -> V:
        out = self._fresh(name or op)
        self.g.nodes.append(Node(op, [v.name for v in inputs], [out], attrs or {}, name or out))
        self.g.shapes[out] = tuple(ref.shape)
        v = V(out, ref.detach().contiguous())  # memory layout changes conv rounding: match the modules
        if KEEP_REFS is not None:
            KEEP_REFS[out] = v.ref
            for i in inputs:
                KEEP_REFS.setdefault(i.name, i.ref)
        return v

    # -- float ops ----------------------------------------------------------------------------
    def silu(self, x: V, mod: nn.Module | None = None) -> V:
        """SiLU; `mod`: the model's own SiLU module, whose form (torch's silu or the VAE's ldm
        x * sigmoid(x)) gives the reference value. The op is the same function either way."""
        return self.emit("silu", [x], F.silu(x.ref) if mod is None else mod(x.ref))

    def add(self, x: V, y: V) -> V:
        return self.emit("add", [x, y], x.ref + y.ref)

    def group_norm(self, gn: nn.GroupNorm, x: V, name: str) -> V:
        gamma, beta = self.const(name + ".weight", gn.weight), self.const(name + ".bias", gn.bias)
        return self.emit("group_norm", [x, gamma, beta], gn(x.ref), {"groups": gn.num_groups, "eps": gn.eps}, name)

    def layer_norm(self, ln: nn.LayerNorm, x: V, name: str) -> V:
        if not ln.elementwise_affine or len(ln.normalized_shape) != 1:
            raise ExportError(f"{name}: only affine LayerNorm over the last axis is supported")
        gamma = self.const(name + ".weight", ln.weight)
        beta = self.const(name + ".bias", ln.bias if ln.bias is not None else torch.zeros_like(ln.weight))
        return self.emit("layer_norm", [x, gamma, beta], ln(x.ref), {"eps": ln.eps}, name)

    # -- conv / linear, quantized or not ---------------------------------------------------------
    def conv(self, mod: nn.Module, x: V, name: str) -> V:
        if isinstance(mod, QuantConv):
            if mod.dims != 2:
                raise ExportError(f"{name}: only 2-D convolutions are exported")
            if self.quantized:
                return self._quantized(mod, x, name, "qconv")
            w, b, geo = mod.weight, mod.bias, (mod.stride, mod.padding, mod.dilation)
        elif isinstance(mod, nn.Conv2d):
            if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                raise ExportError(f"{name}: only groups=1 zero-padded convs with explicit padding are exported")
            w, b, geo = mod.weight, mod.bias, (mod.stride, mod.padding, mod.dilation)
        else:
            raise ExportError(f"{name}: expected a Conv2d, found {type(mod).__name__}")
        ref = F.conv2d(x.ref, w, b, *geo)
        ins = [x, self.const(name + ".weight", w)] + ([self.const(name + ".bias", b)] if b is not None else [])
        return self.emit("conv", ins, ref, {"stride": list(geo[0]), "padding": list(geo[1]), "dilation": list(geo[2])}, name)

    def linear(self, mod: nn.Module, x: V, name: str) -> V:
        if isinstance(mod, QuantLinear):
            if self.quantized:
                return self._quantized(mod, x, name, "qlinear")
        elif not isinstance(mod, nn.Linear):
            raise ExportError(f"{name}: expected a Linear, found {type(mod).__name__}")
        ref = F.linear(x.ref, mod.weight, mod.bias)
        ins = [x, self.const(name + ".weight", mod.weight)] + ([self.const(name + ".bias", mod.bias)] if mod.bias is not None else [])
        return self.emit("linear", ins, ref, {}, name)

    def _quantized(self, mod: QuantLayer, x: V, name: str, op: str) -> V:
        rec = layer_recipe(name, mod, eight_bit=name in self.eight_bit)
        self.g.recipes[name] = rec
        return self.emit(op, [x], mod(x.ref), {"recipe": name}, name)

    def evaluate(self, mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """mod(x) for constant folding: the fake-quant layer itself in a quantized graph, its FP
        weights in the float baseline graph."""
        if isinstance(mod, QuantLayer) and not self.quantized:
            if isinstance(mod, QuantLinear):
                return F.linear(x, mod.weight, mod.bias)
            return F.conv2d(x, mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation)
        return mod(x)

    # -- blocks ---------------------------------------------------------------------------------
    def resnet(self, r, x: V, temb: V | None, name: str) -> V:
        plain_norm = r.time_embedding_norm == "default" or (r.time_embedding_norm == "group" and r.time_emb_proj is None)
        if r.upsample is not None or r.downsample is not None or not plain_norm:
            raise ExportError(f"{name}: ResnetBlock2D with up/down-sampling or {r.time_embedding_norm!r} time norm is not supported")
        if not isinstance(r.nonlinearity, nn.SiLU):
            raise ExportError(f"{name}: only SiLU ResNet blocks are supported")
        h = self.silu(self.group_norm(r.norm1, x, name + ".norm1"), r.nonlinearity)
        h = self.conv(r.conv1, h, name + ".conv1")
        if r.time_emb_proj is not None:
            if temb is None:
                raise ExportError(f"{name}: a time projection needs the time embedding")
            h = self.add(h, self.time_projection(r, name))
        h = self.silu(self.group_norm(r.norm2, h, name + ".norm2"), r.nonlinearity)
        h = self.conv(r.conv2, h, name + ".conv2")
        if r.conv_shortcut is not None:
            x = self.conv(r.conv_shortcut, x, name + ".conv_shortcut")
        out = self.add(x, h)
        if r.output_scale_factor != 1.0:
            out = self.emit("affine", [out], out.ref / r.output_scale_factor, {"mul": 1.0 / r.output_scale_factor, "add": 0.0})
        return out

    def time_projection(self, r, name: str) -> V:
        """time_emb_proj(silu(temb))[:, :, None, None]: a constant when t is folded."""
        if r.skip_time_act:
            raise ExportError(f"{name}: skip_time_act is not supported")
        if self.fold:
            with torch.no_grad():
                val = self.evaluate(r.time_emb_proj, F.silu(self.temb_ref))[:, :, None, None]
            c = self.const(name + ".time_emb_proj", val)
            self.folded(name + ".time_emb_proj", c)
            return c
        p = self.linear(r.time_emb_proj, self.temb_act, name + ".time_emb_proj")
        return self.emit("unsqueeze_hw", [p], p.ref[:, :, None, None])

    def attention(self, attn, x: V, ctx: V | None, name: str, ctx_ref: torch.Tensor | None) -> V:
        """diffusers Attention on a (B, N, C) input (self- or cross-attention), without residual."""
        if attn.norm_cross or getattr(attn, "norm_q", None) is not None or attn.spatial_norm is not None:
            raise ExportError(f"{name}: attention with cross/q/k norms or spatial norm is not supported")
        q = self.linear(attn.to_q, x, name + ".to_q")
        folded = ctx is None and ctx_ref is not None
        if folded:  # cross-attention on the fixed context: K and V are constants
            with torch.no_grad():
                k = self.const(name + ".k", self.evaluate(attn.to_k, ctx_ref))
                v = self.const(name + ".v", self.evaluate(attn.to_v, ctx_ref))
            self.folded(name + ".to_k", k)
            self.folded(name + ".to_v", v)
        else:
            src = x if ctx is None else ctx
            k = self.linear(attn.to_k, src, name + ".to_k")
            v = self.linear(attn.to_v, src, name + ".to_v")
        proc = attn.processor
        if isinstance(proc, QuantAttnProcessor) and self.quantized:
            qb, kb, vb = (attn.head_to_batch_dim(t.ref) for t in (q, k, v))
            ref = attn.batch_to_head_dim(proc.attention(qb, kb, vb, attn.scale))
            self.g.recipes[name] = attention_recipe(name, attn, proc)
            o = self.emit("qattention", [q, k, v], ref, {"recipe": name}, name)
        else:
            o = self.emit("attention", [q, k, v], fp_attention(q.ref, k.ref, v.ref, attn.heads, attn.scale),
                          {"heads": attn.heads, "scale": float(attn.scale)}, name)
        return self.linear(attn.to_out[0], o, name + ".to_out.0")

    def vae_attention(self, attn, x: V, name: str) -> V:
        """The VAE mid-block attention: group norm, single-head attention over pixels, residual."""
        if attn.group_norm is None or not attn.residual_connection:
            raise ExportError(f"{name}: expected a VAE attention with group norm and residual")
        h = self.group_norm(attn.group_norm, x, name + ".group_norm")
        h = self.emit("to_tokens", [h], h.ref.flatten(2).transpose(1, 2))
        if isinstance(attn.processor, LdmVaeAttnProcessor):
            h = self.ldm_vae_attention(attn, h, name)
        else:
            h = self.attention(attn, h, None, name, None)
        h = self.emit("to_nchw", [h, x], h.ref.transpose(1, 2).reshape(x.ref.shape))
        out = self.add(h, x)
        if attn.rescale_output_factor != 1.0:
            out = self.emit("affine", [out], out.ref / attn.rescale_output_factor, {"mul": 1.0 / attn.rescale_output_factor, "add": 0.0})
        return out

    def ldm_vae_attention(self, attn, h: V, name: str) -> V:
        """The same ops as `attention` (one head), with reference values computed as the model's
        LdmVaeAttnProcessor computes them: projections as 1x1 convs, ldm's attention core."""
        def proj(mod, x: V, pname: str) -> V:
            if isinstance(mod, QuantLinear):
                return self.linear(mod, x, pname)  # QuantLinear.forward takes the conv1x1 form itself
            ref = F.conv2d(x.ref.transpose(1, 2).unsqueeze(-1).contiguous(), mod.weight[:, :, None, None], mod.bias)
            ins = [x, self.const(pname + ".weight", mod.weight)] + ([self.const(pname + ".bias", mod.bias)] if mod.bias is not None else [])
            return self.emit("linear", ins, ref.squeeze(-1).transpose(1, 2), {}, pname)

        if attn.heads != 1:
            raise ExportError(f"{name}: the ldm VAE attention has one head")
        q, k, v = (proj(m, h, f"{name}.{n}") for m, n in ((attn.to_q, "to_q"), (attn.to_k, "to_k"), (attn.to_v, "to_v")))
        cm = [t.ref.transpose(1, 2).contiguous() for t in (q, k, v)]  # (B, C, HW), as ldm holds them
        ref = ldm_attention_core(*cm, attn.scale).transpose(1, 2)
        o = self.emit("attention", [q, k, v], ref, {"heads": 1, "scale": float(attn.scale)}, name)
        return proj(attn.to_out[0], o, name + ".to_out.0")

    def transformer(self, t2d, x: V, ctx: V | None, ctx_ref, name: str) -> V:
        if not t2d.is_input_continuous:
            raise ExportError(f"{name}: only continuous-input Transformer2DModel is supported")
        h = self.group_norm(t2d.norm, x, name + ".norm")
        if t2d.use_linear_projection:
            h = self.emit("to_tokens", [h], h.ref.flatten(2).transpose(1, 2))
            h = self.linear(t2d.proj_in, h, name + ".proj_in")
        else:
            h = self.conv(t2d.proj_in, h, name + ".proj_in")
            h = self.emit("to_tokens", [h], h.ref.flatten(2).transpose(1, 2))
        for i, blk in enumerate(t2d.transformer_blocks):
            h = self.basic_block(blk, h, ctx, ctx_ref, f"{name}.transformer_blocks.{i}")
        if t2d.use_linear_projection:
            h = self.linear(t2d.proj_out, h, name + ".proj_out")
            h = self.emit("to_nchw", [h, x], h.ref.transpose(1, 2).reshape(x.ref.shape))
        else:
            h = self.emit("to_nchw", [h, x], h.ref.transpose(1, 2).reshape(x.ref.shape))
            h = self.conv(t2d.proj_out, h, name + ".proj_out")
        return self.add(h, x)

    def basic_block(self, blk, h: V, ctx: V | None, ctx_ref, name: str) -> V:
        from diffusers.models.activations import GEGLU

        if blk.norm_type != "layer_norm" or blk.only_cross_attention or blk.pos_embed is not None or blk._chunk_size:
            raise ExportError(f"{name}: only plain layer-norm BasicTransformerBlocks are supported")
        a = self.attention(blk.attn1, self.layer_norm(blk.norm1, h, name + ".norm1"), None, name + ".attn1", None)
        h = self.add(a, h)
        if blk.attn2 is not None:
            a = self.attention(blk.attn2, self.layer_norm(blk.norm2, h, name + ".norm2"), ctx, name + ".attn2", ctx_ref)
            h = self.add(a, h)
        n = self.layer_norm(blk.norm3, h, name + ".norm3")
        geglu = blk.ff.net[0]
        if not isinstance(geglu, GEGLU) or getattr(geglu, "approximate", "none") != "none":
            raise ExportError(f"{name}.ff: only exact-GELU GEGLU feed-forwards are supported")
        p = self.linear(geglu.proj, n, name + ".ff.net.0.proj")
        hid, gate = p.ref.chunk(2, dim=-1)
        g = self.emit("geglu", [p], hid * F.gelu(gate))
        f = self.linear(blk.ff.net[2], g, name + ".ff.net.2")
        return self.add(f, h)

    def downsample(self, ds, x: V, name: str) -> V:
        if ds.norm is not None or not ds.use_conv:
            raise ExportError(f"{name}: only conv Downsample2D is supported")
        if ds.padding == 0:
            x = self.emit("pad", [x], F.pad(x.ref, (0, 1, 0, 1)), {"pads": [0, 0, 1, 1]})
        return self.conv(ds.conv, x, name + ".conv")

    def upsample(self, us, x: V, name: str) -> V:
        if us.norm is not None or us.use_conv_transpose or not us.interpolate or not us.use_conv:
            raise ExportError(f"{name}: only nearest-2x + conv Upsample2D is supported")
        x = self.emit("upsample2x", [x], F.interpolate(x.ref, scale_factor=2.0, mode="nearest"))
        return self.conv(us.conv, x, name + ".conv")


def fp_attention(q, k, v, heads: int, scale: float) -> torch.Tensor:
    b, nq, c = q.shape
    d = c // heads
    qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    p = torch.softmax((qh @ kh.transpose(-1, -2)) * scale, dim=-1)
    return (p @ vh).transpose(1, 2).reshape(b, nq, c)


def _check_type(mod, cls_name: str, where: str) -> None:
    if type(mod).__name__ != cls_name:
        raise ExportError(f"{where}: expected {cls_name}, found {type(mod).__name__}")


# -- components -------------------------------------------------------------------------------

@torch.no_grad()
def trace_unet(pipe, latent: torch.Tensor, quantized: bool = True, fold: bool = True) -> tuple[Graph, torch.Tensor]:
    """UNet eps = UNet(z, t=999, C) on a fixed latent tile."""
    from passion_deploy.models.pipeline import TIMESTEP

    unet = pipe.unet
    t = Tracer("unet", quantized, EIGHT_BIT_LAYERS["unet"])
    t.fold = fold
    if unet.config.get("class_embed_type") or unet.config.get("addition_embed_type") or unet.time_embed_act is not None:
        raise ExportError("unet: class/addition embeddings and time_embed_act are not supported")
    ctx_ref = pipe.context.to(latent.dtype).expand(latent.shape[0], -1, -1)
    z = t.input("latent", latent, tuple(latent.shape))
    tsteps = torch.full((latent.shape[0],), TIMESTEP, dtype=torch.long)
    te = unet.time_embedding
    if te.cond_proj is not None or te.post_act is not None or not isinstance(te.act, nn.SiLU):
        raise ExportError("unet.time_embedding: only linear-SiLU-linear time embeddings are supported")
    temb_ref = t.evaluate(te.linear_2, te.act(t.evaluate(te.linear_1, unet.time_proj(tsteps).to(latent.dtype))))
    t.temb_ref = temb_ref
    if fold:
        ctx = None
        temb = V("<folded>", temb_ref)
        t.folded("time_embedding.linear_1", None)
        t.folded("time_embedding.linear_2", None)
    else:
        tin = t.input("timestep", tsteps.float(), (latent.shape[0],))
        ctx = t.input("context", ctx_ref, tuple(ctx_ref.shape))
        ctx_ref = None
        tp = unet.time_proj
        half = tp.num_channels // 2
        exponent = -np.log(10000) * torch.arange(half, dtype=torch.float32) / (half - tp.downscale_freq_shift)
        freqs = t.const("time_proj.freqs", torch.exp(exponent) * tp.scale)
        temb0 = t.emit("timestep_embedding", [tin, freqs], unet.time_proj(tsteps).to(latent.dtype),
                       {"flip_sin_to_cos": bool(tp.flip_sin_to_cos)}, "time_proj")
        h = t.linear(te.linear_1, temb0, "time_embedding.linear_1")
        h = t.silu(h)
        temb = t.linear(te.linear_2, h, "time_embedding.linear_2")
        t.temb_act = t.silu(temb)
    h = t.conv(unet.conv_in, z, "conv_in")
    res = [h]
    for bi, blk in enumerate(unet.down_blocks):
        name = f"down_blocks.{bi}"
        if type(blk).__name__ not in ("CrossAttnDownBlock2D", "DownBlock2D"):
            raise ExportError(f"unet.{name}: {type(blk).__name__} is not supported")
        attns = getattr(blk, "attentions", None)
        for i, r in enumerate(blk.resnets):
            h = t.resnet(r, h, temb, f"{name}.resnets.{i}")
            if attns is not None:
                h = t.transformer(attns[i], h, ctx, ctx_ref, f"{name}.attentions.{i}")
            res.append(h)
        if blk.downsamplers is not None:
            for di, ds in enumerate(blk.downsamplers):
                h = t.downsample(ds, h, f"{name}.downsamplers.{di}")
            res.append(h)
    mid = unet.mid_block
    _check_type(mid, "UNetMidBlock2DCrossAttn", "unet.mid_block")
    h = t.resnet(mid.resnets[0], h, temb, "mid_block.resnets.0")
    for i, (a, r) in enumerate(zip(mid.attentions, mid.resnets[1:])):
        h = t.transformer(a, h, ctx, ctx_ref, f"mid_block.attentions.{i}")
        h = t.resnet(r, h, temb, f"mid_block.resnets.{i + 1}")
    for bi, blk in enumerate(unet.up_blocks):
        name = f"up_blocks.{bi}"
        if type(blk).__name__ not in ("CrossAttnUpBlock2D", "UpBlock2D"):
            raise ExportError(f"unet.{name}: {type(blk).__name__} is not supported")
        attns = getattr(blk, "attentions", None)
        for i, r in enumerate(blk.resnets):
            skip = res.pop()
            h = t.emit("concat", [h, skip], torch.cat([h.ref, skip.ref], dim=1), {"axis": 1})
            h = t.resnet(r, h, temb, f"{name}.resnets.{i}")
            if attns is not None:
                h = t.transformer(attns[i], h, ctx, ctx_ref, f"{name}.attentions.{i}")
        if blk.upsamplers is not None:
            for ui, us in enumerate(blk.upsamplers):
                h = t.upsample(us, h, f"{name}.upsamplers.{ui}")
    h = t.silu(t.group_norm(unet.conv_norm_out, h, "conv_norm_out"))
    h = t.conv(unet.conv_out, h, "conv_out")
    t.output(h, "eps", tuple(latent.shape))
    t.g.meta.update(latent_tile=list(latent.shape[-2:]), folded=fold, quantized=quantized)
    return t.g, h.ref


def _resnets_and_samplers(t: Tracer, blocks, prefix: str, h: V, kind: str) -> V:
    for bi, blk in enumerate(blocks):
        name = f"{prefix}.{bi}"
        _check_type(blk, "DownEncoderBlock2D" if kind == "down" else "UpDecoderBlock2D", f"vae.{name}")
        for i, r in enumerate(blk.resnets):
            h = t.resnet(r, h, None, f"{name}.resnets.{i}")
        samplers = blk.downsamplers if kind == "down" else blk.upsamplers
        for si, s in enumerate(samplers or []):
            h = t.downsample(s, h, f"{name}.downsamplers.{si}") if kind == "down" else t.upsample(s, h, f"{name}.upsamplers.{si}")
    return h


def _vae_mid(t: Tracer, mid, h: V, prefix: str) -> V:
    _check_type(mid, "UNetMidBlock2D", f"vae.{prefix}")
    h = t.resnet(mid.resnets[0], h, None, f"{prefix}.resnets.0")
    for i, (a, r) in enumerate(zip(mid.attentions, mid.resnets[1:])):
        if a is not None:
            h = t.vae_attention(a, h, f"{prefix}.attentions.{i}")
        h = t.resnet(r, h, None, f"{prefix}.resnets.{i + 1}")
    return h


@torch.no_grad()
def trace_vae_encoder(pipe, image: torch.Tensor, quantized: bool = True) -> tuple[Graph, torch.Tensor]:
    """z = VAE.encode(2*lr - 1).mode * sf, for lr_up in [0, 1]; spatial size dynamic."""
    vae = pipe.vae
    t = Tracer("vae_encoder", quantized, EIGHT_BIT_LAYERS["vae"])
    enc = vae.encoder
    x = t.input("image", image, (image.shape[0], 3, None, None))
    h = t.emit("affine", [x], image * 2.0 - 1.0, {"mul": 2.0, "add": -1.0})
    h = t.conv(enc.conv_in, h, "encoder.conv_in")
    h = _resnets_and_samplers(t, enc.down_blocks, "encoder.down_blocks", h, "down")
    h = _vae_mid(t, enc.mid_block, h, "encoder.mid_block")
    h = t.silu(t.group_norm(enc.conv_norm_out, h, "encoder.conv_norm_out"), enc.conv_act)
    h = t.conv(enc.conv_out, h, "encoder.conv_out")
    if vae.quant_conv is not None:
        h = t.conv(vae.quant_conv, h, "quant_conv")
    c = vae.config.latent_channels
    h = t.emit("slice_channels", [h], h.ref[:, :c], {"start": 0, "stop": c})
    sf = pipe.scaling_factor
    h = t.emit("affine", [h], h.ref * sf, {"mul": sf, "add": 0.0})
    t.output(h, "latent", (image.shape[0], c, None, None))
    t.g.meta.update(quantized=quantized, vae_factor=pipe.vae_factor)
    return t.g, h.ref


@torch.no_grad()
def trace_vae_decoder(pipe, z0: torch.Tensor, quantized: bool = True) -> tuple[Graph, torch.Tensor]:
    """image = VAE.decode(z0 / sf) * 0.5 + 0.5 (unclamped); spatial size dynamic."""
    vae = pipe.vae
    t = Tracer("vae_decoder", quantized, EIGHT_BIT_LAYERS["vae"])
    dec = vae.decoder
    z = t.input("latent", z0, (z0.shape[0], z0.shape[1], None, None))
    sf = t.const("scaling_factor", torch.tensor(pipe.scaling_factor))
    h = t.emit("div", [z, sf], z0 / pipe.scaling_factor)
    if vae.post_quant_conv is not None:
        h = t.conv(vae.post_quant_conv, h, "post_quant_conv")
    h = t.conv(dec.conv_in, h, "decoder.conv_in")
    h = _vae_mid(t, dec.mid_block, h, "decoder.mid_block")
    h = _resnets_and_samplers(t, dec.up_blocks, "decoder.up_blocks", h, "up")
    h = t.silu(t.group_norm(dec.conv_norm_out, h, "decoder.conv_norm_out"), dec.conv_act)
    h = t.conv(dec.conv_out, h, "decoder.conv_out")
    h = t.emit("affine", [h], h.ref * 0.5 + 0.5, {"mul": 0.5, "add": 0.5})
    t.output(h, "image", (z0.shape[0], 3, None, None))
    t.g.meta.update(quantized=quantized, vae_factor=pipe.vae_factor)
    return t.g, h.ref


TRACERS = {"unet": lambda pipe, probe, quantized, fold: trace_unet(pipe, probe, quantized, fold),
           "vae_encoder": lambda pipe, probe, quantized, fold: trace_vae_encoder(pipe, probe, quantized),
           "vae_decoder": lambda pipe, probe, quantized, fold: trace_vae_decoder(pipe, probe, quantized)}


def trace_component(pipe, component: str, probe: torch.Tensor, quantized: bool = True, fold: bool = True):
    """The IR graph and reference output of one component of the component table (the VAE
    graphs have no time or context inputs, so `fold` concerns the UNet only)."""
    if component not in TRACERS:
        raise ExportError(f"unknown component {component!r}; choose from {', '.join(COMPONENTS)}")
    return TRACERS[component](pipe, probe, quantized, fold)
