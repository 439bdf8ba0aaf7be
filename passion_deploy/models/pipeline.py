"""One-step diffusion super-resolution (OSEDiff without its text encoders), spec section 1.

    x   = 2*lr - 1                       lr: bicubic-upscaled LR image in [0, 1]
    z   = VAE.encode(x).mean * sf
    eps = UNet(z, t=999, context=C)
    z0  = (z - sqrt(1-a) * eps) / sqrt(a)   a = alphas_cumprod[999], in float64
    sr  = VAE.decode(z0 / sf) * 0.5 + 0.5

The three stages are separate methods because calibration, export and verification all
work on one component at a time.
"""
from __future__ import annotations

import math

import torch
from torch import nn

TIMESTEP = 999


def alpha_cumprod_at(timestep: int = TIMESTEP) -> float:
    """alphas_cumprod[timestep] of SD's training scheduler (scaled_linear 0.00085..0.012, 1000 steps).

    Taken from diffusers' own DDPMScheduler so the constant is bit-identical to what the
    reference pipeline uses.
    """
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    return float(sched.alphas_cumprod[timestep])


def z0_from_eps(z: torch.Tensor, eps: torch.Tensor, sqrt_a: float, sqrt_1ma: float) -> torch.Tensor:
    """z0 = (z - sqrt(1-a) * eps) / sqrt(a), in float64 (the one place every runtime takes it from)."""
    z0 = (z.double() - sqrt_1ma * eps.double().to(z.device)) / sqrt_a
    return z0.to(z.dtype)


class OneStepSR(nn.Module):
    def __init__(self, unet: nn.Module, vae: nn.Module, context: torch.Tensor, preset: str):
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.preset = preset
        self.register_buffer("context", context.detach().clone(), persistent=False)
        self.scaling_factor = float(vae.config.scaling_factor)
        a = alpha_cumprod_at(TIMESTEP)
        self.sqrt_a = math.sqrt(a)
        self.sqrt_1ma = math.sqrt(1.0 - a)
        n_vae_down = len(vae.config.block_out_channels) - 1
        n_unet_down = len(unet.config.block_out_channels) - 1
        self.vae_factor = 2**n_vae_down
        # image sides must be a multiple of this so every down/up-sample lines up
        self.size_multiple = self.vae_factor * 2**n_unet_down

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def encode(self, lr_up: torch.Tensor) -> torch.Tensor:
        x = lr_up * 2.0 - 1.0
        return self.vae.encode(x).latent_dist.mode() * self.scaling_factor

    def unet_eps(self, z: torch.Tensor) -> torch.Tensor:
        ctx = self.context.to(z.dtype).expand(z.shape[0], -1, -1)
        t = torch.full((z.shape[0],), TIMESTEP, dtype=torch.long, device=z.device)
        return self.unet(z, t, encoder_hidden_states=ctx).sample

    def z0_from_eps(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return z0_from_eps(z, eps, self.sqrt_a, self.sqrt_1ma)

    def denoise(self, z: torch.Tensor) -> torch.Tensor:
        return self.z0_from_eps(z, self.unet_eps(z))

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z0 / self.scaling_factor).sample * 0.5 + 0.5

    def forward(self, lr_up: torch.Tensor) -> torch.Tensor:
        """lr_up: B x 3 x H x W in [0, 1], H and W multiples of `size_multiple`. Not clamped."""
        return self.decode(self.denoise(self.encode(lr_up)))
