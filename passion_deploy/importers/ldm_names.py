"""ldm module names <-> diffusers module names, with exactly the mapping the FP weights get.

The FP weights go through diffusers' single-file converters (models/loading.ldm_to_diffusers).
Rather than restate their renaming rules, the same converters are run on *markers*: one tiny
tensor per ldm weight whose value is its index. Where each marker lands is the diffusers name of
that weight, so the quantization tensors (which carry ldm names) map onto the very modules the
weights were loaded into, for any architecture the converters handle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."  # ldm's LatentDiffusion: the UNet's weights
VAE_PREFIX = "first_stage_model."  # and the autoencoder's
PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX}
# ldm's CrossAttention and diffusers' Attention share these child names; the attention module
# itself owns no weight, so it is mapped through its query projection.
ATTENTION_QUERY = ".to_q"


@dataclass
class NameMap:
    """Module paths of one component: ldm (inside model.diffusion_model / first_stage_model) and diffusers."""

    to_diffusers: dict[str, str] = field(default_factory=dict)
    to_ldm: dict[str, str] = field(default_factory=dict)
    weight_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # ldm module -> its weight's shape

    def add(self, ldm: str, diffusers: str) -> None:
        self.to_diffusers.setdefault(ldm, diffusers)
        self.to_ldm.setdefault(diffusers, ldm)


def _module(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def name_maps(checkpoint: dict, unet_config: dict, vae_config: dict, path: Path) -> dict[str, NameMap]:
    """{"unet": NameMap, "vae": NameMap} for an original-SD checkpoint and the diffusers configs."""
    from ..models.loading import ldm_to_diffusers

    ldm_keys = [k for k in checkpoint if k.startswith((UNET_PREFIX, VAE_PREFIX)) and isinstance(checkpoint[k], torch.Tensor)]
    markers = {k: torch.full((1,) * checkpoint[k].dim(), float(i), dtype=torch.float64) for i, k in enumerate(ldm_keys)}
    unet_sd, vae_sd = ldm_to_diffusers(markers, unet_config, vae_config, path)
    maps = {"unet": NameMap(), "vae": NameMap()}
    for comp, converted in (("unet", unet_sd), ("vae", vae_sd)):
        prefix = PREFIXES[comp]
        for d_key, marker in converted.items():
            l_key = ldm_keys[int(marker.reshape(-1)[0])][len(prefix):]
            l_mod, d_mod = _module(l_key), _module(d_key)
            maps[comp].add(l_mod, d_mod)
            if l_key.endswith(".weight"):
                maps[comp].weight_shapes[l_mod] = tuple(checkpoint[prefix + l_key].shape)
            if l_mod.endswith(ATTENTION_QUERY) and d_mod.endswith(ATTENTION_QUERY):
                maps[comp].add(l_mod[: -len(ATTENTION_QUERY)], d_mod[: -len(ATTENTION_QUERY)])
    return maps
