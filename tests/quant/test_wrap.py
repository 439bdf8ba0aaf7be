"""Wrapping a diffusers pipeline: every layer quantized, split and 8-bit rule on the right names."""
import torch
from torch import nn

from passion_deploy.config import NAMED_CONFIGS
from passion_deploy.images import psnr
from passion_deploy.models import build_pipeline
from passion_deploy.quant import QuantAttnProcessor, QuantLayer, quantize_pipeline
from passion_deploy.quant.wrap import quant_layers


def test_w6a6_wraps_everything_with_8bit_first_last_layers():
    pipe = quantize_pipeline(build_pipeline("tiny"), NAMED_CONFIGS["w6a6"])
    for comp in (pipe.unet, pipe.vae):
        raw = [n for n, m in comp.named_modules()
               if type(m) in (nn.Conv1d, nn.Conv2d, nn.Linear) and not isinstance(m, QuantLayer)]
        assert raw == []
    unet = dict(quant_layers(pipe.unet))
    vae = dict(quant_layers(pipe.vae))
    eight = {("unet", "time_embedding.linear_1"), ("unet", "conv_out"), ("vae", "quant_conv"),
             ("vae", "post_quant_conv"), ("vae", "encoder.conv_out"), ("vae", "decoder.conv_out")}
    for comp, layers in (("unet", unet), ("vae", vae)):
        for name, layer in layers.items():
            bits = 8 if (comp, name) in eight else 6
            assert layer.w_quant[0].spec.bits == bits, name
            assert layer.a_quant[0].spec.bits == bits, name
            assert layer.split and len(layer.w_quant) == 2 and len(layer.a_quant) == 2
    # names that exist in diffusers' UNet/VAE are the ones that got the rule
    assert {"time_embedding.linear_1", "conv_out", "conv_in"} <= set(unet)
    assert unet["conv_in"].w_quant[0].spec.bits == 6
    assert {"quant_conv", "post_quant_conv", "encoder.conv_out", "decoder.conv_out"} <= set(vae)
    # kinds of layers: time projections, shortcuts, samplers, transformer projections, GEGLU
    names = " ".join(unet)
    for part in ("time_emb_proj", "proj_in", "proj_out", "attn1.to_q", "attn2.to_k", "ff.net.0.proj",
                 "downsamplers.0.conv", "upsamplers.0.conv", "conv_shortcut"):
        assert part in names, part


def test_attention_processors_only_in_unet_transformer_blocks():
    pipe = quantize_pipeline(build_pipeline("tiny"), NAMED_CONFIGS["w8a8"])
    unet_procs = [n for n, m in pipe.unet.named_modules() if isinstance(m, QuantAttnProcessor)]
    assert unet_procs and all("transformer_blocks" in n for n in unet_procs)
    assert {n.split(".")[-2] for n in unet_procs} == {"attn1", "attn2"}
    assert not [m for m in pipe.vae.modules() if isinstance(m, QuantAttnProcessor)]
    assert isinstance(dict(pipe.vae.named_modules())["encoder.mid_block.attentions.0.to_q"], QuantLayer)


def test_fakequant_w8a8_pipeline_runs_end_to_end(tiny_w8a8, calib_batches):
    fp = build_pipeline("tiny")
    x = calib_batches[0]
    with torch.no_grad():
        y, ref = tiny_w8a8(x), fp(x)
    assert y.shape == (1, 3, 64, 64) and torch.isfinite(y).all()
    assert 20 < psnr(y, ref) < 80  # W8A8 follows the FP model closely, but it is quantized
