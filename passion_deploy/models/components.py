"""The component table: the three parts of one-step SR that are traced, exported, run,
verified and benchmarked one at a time (spec section 1).

    name          OneStepSR method  input   output  modules (inside the pipeline)
    vae_encoder   encode            image   latent  vae.encoder, vae.quant_conv
    unet          unet_eps          latent  eps     unet
    vae_decoder   decode            latent  image   vae.post_quant_conv, vae.decoder

Shape rule: the UNet and the decoder take a latent, the encoder its image (vae_factor times
larger). Fixed-tile rule: an artifact that runs at one tile (TensorRT engines, CUDA graphs)
runs the UNet and the decoder at the latent tile and the encoder at that tile's image.
Everything that needs one of these facts reads it here.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Component:
    name: str
    method: str  # the OneStepSR method computing it
    input: str  # input name in IR graphs, ONNX models and engines
    output: str
    root: str  # the pipeline attribute holding its modules
    parts: tuple[str, ...]  # its modules inside root ("" = root itself)
    image_input: bool  # input at image resolution (vae_factor x the latent)
    output_is_image: bool  # output in [0, 1] (PSNR with peak 1), else a latent-like tensor

    def modules(self, pipe) -> list[nn.Module]:
        """The component's modules in `pipe` (a VAE without quant_conv has fewer)."""
        root = getattr(pipe, self.root)
        mods = [root if p == "" else getattr(root, p, None) for p in self.parts]
        return [m for m in mods if m is not None]

    def owns(self, path: str) -> bool:
        """Whether a module path inside `root` belongs to this component."""
        return any(p == "" or path == p or path.startswith(p + ".") for p in self.parts)

    def fn(self, pipe):
        """The pipeline's function computing this component (encode / unet_eps / decode)."""
        return getattr(pipe, self.method)

    def input_shape(self, latent_hw: tuple[int, int], vae_factor: int, batch: int = 1,
                    latent_channels: int = 4) -> tuple[int, int, int, int]:
        """The input shape at a latent tile: the fixed-tile rule above."""
        h, w = latent_hw
        if self.image_input:
            return (batch, 3, h * vae_factor, w * vae_factor)
        return (batch, latent_channels, h, w)


VAE_ENCODER = Component("vae_encoder", "encode", "image", "latent", "vae", ("encoder", "quant_conv"), True, False)
UNET = Component("unet", "unet_eps", "latent", "eps", "unet", ("",), False, False)
VAE_DECODER = Component("vae_decoder", "decode", "latent", "image", "vae", ("post_quant_conv", "decoder"), False, True)

TABLE: dict[str, Component] = {c.name: c for c in (UNET, VAE_ENCODER, VAE_DECODER)}
COMPONENTS: tuple[str, ...] = tuple(TABLE)  # the export order: unet, vae_encoder, vae_decoder


def component(name: str) -> Component:
    try:
        return TABLE[name]
    except KeyError:
        raise ValueError(f"unknown component {name!r}; choose from {', '.join(COMPONENTS)}") from None


def tile_shapes(latent_hw: tuple[int, int], vae_factor: int, names=COMPONENTS) -> dict[str, tuple[int, int, int, int]]:
    """Each component's input shape at one latent tile, batch 1 (what fixed-shape runtimes take)."""
    return {n: TABLE[n].input_shape(latent_hw, vae_factor) for n in names}
