"""Architecture presets: diffusers configs for the UNet and VAE of each model family.

`sd21` is Stable Diffusion 2.1-base (what OSEDiff and PassionSR use). `tiny` keeps the same
diffusers block types (ResnetBlock2D, Transformer2DModel with self- and cross-attention,
down/upsamplers, VAE mid-block attention) at small widths, so everything that works on it
exercises the same code paths as sd21; its weights fit in 10 MB of float32. The tiny VAE downsamples by 4 (not 8): with 4 latent
channels one latent pixel then carries exactly one LR pixel's worth of information at 4x SR.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

SD21_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),  # diffusers' historical name: these are head counts
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)

SD21_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)

TINY_UNET = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 48, 48),
    layers_per_block=1,
    attention_head_dim=(2, 3, 3),  # head counts, as in SD2.1's config: head dim 16
    cross_attention_dim=1024,  # the real SD2.1 empty-prompt context feeds cross-attention
    use_linear_projection=True,
    norm_num_groups=16,
    flip_sin_to_cos=True,
    freq_shift=0,
)

TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 48, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,  # 8 channels per group at the encoder's output, 4 at the decoder's (train_tiny's start)
    sample_size=256,
    scaling_factor=0.18215,
)


@dataclass(frozen=True)
class Preset:
    name: str
    unet: dict
    vae: dict
    latent_tile: int  # default UNet tile (latent pixels): SD's 64 (512 px); tiny's 32 (128 px)

    @property
    def vae_factor(self) -> int:
        """Spatial downsampling of the VAE (image pixels per latent pixel)."""
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    def unet_config(self) -> dict:
        return copy.deepcopy(self.unet)

    def vae_config(self) -> dict:
        return copy.deepcopy(self.vae)


PRESETS = {
    "sd21": Preset("sd21", SD21_UNET, SD21_VAE, latent_tile=64),
    "tiny": Preset("tiny", TINY_UNET, TINY_VAE, latent_tile=32),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
