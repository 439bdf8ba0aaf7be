"""Turn a OneStepSR pipeline into PassionSR's fake-quant model: one verb, `quantize_pipeline`.

Every Conv1d/Conv2d/Linear of a quantized component becomes a QuantConv/QuantLinear; the
attention modules inside the UNet's transformer blocks get QuantAttnProcessor. The first and
last layers keep 8-bit weights and activations whatever the config says (spec section 3).

A quantized VAE computes in the order of PassionSR's ldm VAE (docs/quant-semantics.md,
"computation order"): its SiLU is ldm's `x * sigmoid(x)` (`LdmSiLU`; diffusers' fused silu
rounds differently), and its mid-block attention is ldm's AttnBlock (LdmVaeAttnProcessor) with
q/k/v/proj_out as 1x1 convs (QuantLinear.conv1x1) unless they are split by token. The UNet's
SiLU stays torch's silu: ldm's UNet uses nn.SiLU too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

if TYPE_CHECKING:  # config imports the quantizer; importing it here at run time would be circular
    from ..config import ComponentConfig, QuantConfig
from .attention import LdmVaeAttnProcessor, QuantAttnProcessor
from .layers import QuantLayer, QuantLinear, wrap_layer
from .quantizer import LBQuantizer

# diffusers names of the layers PassionSR keeps at 8 bits (ldm `time_embed.0`, `out.2`, ...),
# relative to the component module
EIGHT_BIT_LAYERS = {
    "unet": {"time_embedding.linear_1", "conv_out"},
    "vae": {"quant_conv", "post_quant_conv", "encoder.conv_out", "decoder.conv_out"},
}
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


class LdmSiLU(nn.SiLU):
    """ldm's VAE nonlinearity, `x * torch.sigmoid(x)`: silu in the order PassionSR computes it
    (a subclass of nn.SiLU: it is the same function, and exporters treat it as SiLU)."""

    def forward(self, x):
        return x * torch.sigmoid(x)


def ldm_vae_order(vae: nn.Module) -> None:
    """The VAE's SiLUs and mid-block attention in PassionSR's ldm order (module docstring), in place."""
    from diffusers.models.attention_processor import Attention

    for name, m in list(vae.named_modules()):
        for child, sub in list(m.named_children()):
            if type(sub) is nn.SiLU:
                setattr(m, child, LdmSiLU())
    for m in vae.modules():
        if isinstance(m, Attention) and not isinstance(m.processor, QuantAttnProcessor):
            for proj in (m.to_q, m.to_k, m.to_v, m.to_out[0]):
                if isinstance(proj, QuantLinear) and not proj.split and proj.let_form == "consistent":
                    proj.conv1x1 = True
            m.set_processor(LdmVaeAttnProcessor())


def _set_child(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def quantize_component(module: nn.Module, cfg: ComponentConfig, component: str) -> None:
    """Wrap, in place, every quantizable layer of a UNet ("unet") or an AutoencoderKL ("vae")."""
    from diffusers.models.attention_processor import Attention

    targets = [(n, m) for n, m in module.named_modules() if isinstance(m, QUANTIZABLE)]
    for name, layer in targets:
        bits8 = name in EIGHT_BIT_LAYERS[component]
        wrapped = wrap_layer(
            layer,
            cfg.weight_spec(8 if bits8 else None),
            cfg.act_spec(8 if bits8 else None),
            split=cfg.split,
            use_let=cfg.let,
            let_form=cfg.let_form,
            s_alpha=cfg.s_alpha,
            only_weight=cfg.only_weight,
        )
        wrapped.qname = name
        _set_child(module, name, wrapped)
    if cfg.quant_attention and not cfg.only_weight:
        for name, m in module.named_modules():
            if isinstance(m, Attention) and _attention_is_quantized(name, component):
                proc = QuantAttnProcessor(cfg.act_spec(), head_dim=m.inner_dim // m.heads, s_alpha=cfg.s_alpha)
                m.set_processor(proc)
    for _, q in quantizers(module):
        q.per_tensor_float64 = cfg.per_tensor_float64
    if component == "vae":
        ldm_vae_order(module)


def _attention_is_quantized(name: str, component: str) -> bool:
    # UNet: the self- and cross-attention of every transformer block. VAE: its mid-block
    # attention, only when a config asks for it (PassionSR quantizes only its projections).
    return "transformer_blocks" in name if component == "unet" else True


def quantize_pipeline(pipe, config: QuantConfig):
    """Make `pipe` (a OneStepSR) the fake-quant model of `config`, in place; returns it."""
    if getattr(pipe, "quant_config", None) is not None:
        raise ValueError("pipeline is already quantized")
    if config.unet is not None:
        quantize_component(pipe.unet, config.unet, "unet")
    if config.vae is not None:
        quantize_component(pipe.vae, config.vae, "vae")
    pipe.quant_config = config
    return pipe


def quant_layers(module: nn.Module) -> Iterator[tuple[str, QuantLayer]]:
    for name, m in module.named_modules():
        if isinstance(m, QuantLayer):
            yield name, m


def attention_processors(module: nn.Module) -> Iterator[tuple[str, QuantAttnProcessor]]:
    for name, m in module.named_modules():
        if isinstance(m, QuantAttnProcessor):
            yield name, m


def quantizers(module: nn.Module) -> Iterator[tuple[str, LBQuantizer]]:
    for name, m in module.named_modules():
        if isinstance(m, LBQuantizer):
            yield name, m


def set_quant_state(module: nn.Module, weight: bool = True, act: bool = True) -> None:
    """Enable or disable weight/bias and activation quantizers (disabled ones pass values through)."""
    for _, layer in quant_layers(module):
        for q in list(layer.w_quant) + ([layer.b_quant] if layer.b_quant is not None else []):
            q.enabled = weight
        for q in layer.a_quant or []:
            q.enabled = act
    for _, proc in attention_processors(module):
        for q in proc.quantizers():
            q.enabled = act


def set_observers(module: nn.Module, act: str | None, weight: str | None = "minmax", let: bool = False) -> None:
    """Statistics-pass switches: activation observer ("ema"/"minmax"/None), weight observer, LET EMA."""
    for _, layer in quant_layers(module):
        for q in list(layer.w_quant) + ([layer.b_quant] if layer.b_quant is not None else []):
            q.observer = weight
        for q in layer.a_quant or []:
            q.observer = act
        layer.let_observer = let and layer.use_let
    for _, proc in attention_processors(module):
        for q in proc.quantizers():
            q.observer = act
        proc.let_observer = let
