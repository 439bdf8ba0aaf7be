"""The one-step SR pipeline and presets (spec section 1)."""
import math

import pytest
import torch

from passion_deploy.models import build_pipeline, get_preset
from passion_deploy.models.pipeline import alpha_cumprod_at
from passion_deploy.models.tiling import denoise_tiled, gaussian_weights, tile_starts


def test_alpha_cumprod_999_matches_scaled_linear_schedule():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, 0)[999].item()
    assert math.isclose(alpha_cumprod_at(999), expected, rel_tol=1e-4)


def test_one_step_formula(monkeypatch):
    pipe = build_pipeline("tiny")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        z = pipe.encode(x)
        eps = pipe.unet_eps(z)
        a = alpha_cumprod_at(999)
        z0 = (z.double() - math.sqrt(1 - a) * eps.double()) / math.sqrt(a)
        sr = pipe.vae.decode(z0.float() / 0.18215).sample * 0.5 + 0.5
        assert torch.allclose(pipe(x), sr, atol=1e-5)
        # encode uses the latent mean, so it is deterministic
        assert torch.equal(pipe.encode(x), pipe.encode(x))
    assert z.shape == (1, 4, 8, 8)  # tiny VAE downsamples by 4


def test_sd21_architecture_matches_stable_diffusion_2_1_base():
    p = get_preset("sd21")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**p.unet_config())
        vae = AutoencoderKL(**p.vae_config())
    # parameter counts of SD2.1-base's UNet and VAE
    assert sum(t.numel() for t in unet.parameters()) == 865_910_724
    assert sum(t.numel() for t in vae.parameters()) == 83_653_863
    assert p.vae_factor == 8


def test_tiling_covers_and_blends():
    assert tile_starts(64, 64, 32) == [0]
    assert tile_starts(100, 64, 32) == [0, 32, 36]
    # the default overlap is half a tile, also for tiny's 32-pixel tile (a fixed 32 made it step by 1)
    assert tile_starts(64, 32) == [0, 16, 32] and tile_starts(100, 64) == [0, 32, 36]
    with pytest.raises(ValueError, match="below the tile size"):
        tile_starts(64, 32, 32)
    w = gaussian_weights(8, 8)
    assert w[3:5, 3:5].min() > w[0, 0]

    class Shift:  # a pointwise "denoiser": tiled and untiled must agree exactly up to blending
        def denoise(self, z):
            return z * 2 + 1

    z = torch.randn(1, 4, 40, 50)
    assert torch.allclose(denoise_tiled(Shift(), z, (16, 16), 8), z * 2 + 1, atol=1e-5)
    small = torch.randn(1, 4, 5, 7)  # smaller than a tile: padded, then cropped
    assert torch.allclose(denoise_tiled(Shift(), small, (16, 16), 8), small * 2 + 1)
