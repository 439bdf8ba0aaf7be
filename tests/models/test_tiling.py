"""Tiled VAE / UNet execution: exact sizes, blending arithmetic, batching, fixed-shape VAE
engines, and the seam check on a real photo (tiled vs untiled below the W8A8 error)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from passion_deploy.metrics import psnr
from passion_deploy.models.tiling import decode_tiled, encode_tiled, feather_weights, run_tiled
from passion_deploy.runner import SRModel, Tiling, super_resolve, vae_tiles


class StandIn:
    """A pipeline whose stages are local and aligned to the latent grid (4x4 mean pooling,
    x2 gain, nearest 4x upsampling): tiling must reproduce its untiled output exactly, so any
    error in tile offsets, padding, cropping or blend normalisation shows."""

    vae_factor, size_multiple, latent_tile = 4, 16, (8, 8)

    def __init__(self, fixed=None):
        self.calls = {"encode": [], "denoise": [], "decode": []}
        if fixed is not None:
            self.fixed_vae_latent_tile = fixed

    def encode(self, x):
        self.calls["encode"].append(tuple(x.shape))
        return F.avg_pool2d(x, 4).repeat(1, 2, 1, 1)[:, :4]

    def denoise(self, z):
        self.calls["denoise"].append(tuple(z.shape))
        return z * 2

    def decode(self, z):
        self.calls["decode"].append(tuple(z.shape))
        return F.interpolate(z[:, :3], scale_factor=4, mode="nearest") / 2


def stand_in_model(fixed=None):
    pipe = StandIn(fixed)
    return SRModel(pipe, "fp32", pipe.latent_tile, "stand-in")


@pytest.mark.parametrize("h,w", [(200, 300), (37, 53), (1, 1), (3, 70)])
def test_exact_output_size_and_tiling_is_invisible_on_a_local_model(h, w):
    lr = torch.rand(3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))
    whole = super_resolve(stand_in_model(), lr, tiling=Tiling(vae_tile="off"))
    assert whole.shape == (3, 4 * h, 4 * w)
    tiled_model = stand_in_model()
    tiled = super_resolve(tiled_model, lr, tiling=Tiling(vae_tile=(8, 12), vae_overlap=3, batch=3))
    assert tiled.shape == (3, 4 * h, 4 * w)
    assert torch.allclose(tiled, whole, atol=1e-6)
    if h * w > 1000:  # large enough to need several VAE tiles: every call saw at most 3 of them
        calls = tiled_model.pipe.calls
        assert len(calls["encode"]) > 1 and max(s[0] for s in calls["encode"]) == 3
        assert all(s[-2:] == (8, 8) for s in calls["denoise"])  # the UNet only ever sees its tile


def test_batching_changes_nothing_but_the_number_of_calls():
    x = torch.randn(1, 4, 40, 50)
    seen = []

    def fn(t):
        seen.append(t.shape[0])
        return torch.tanh(t) * 3

    one = run_tiled(fn, x, (16, 16), 8, exact=True, batch=1)
    n_tiles = len(seen)
    seen.clear()
    five = run_tiled(fn, x, (16, 16), 8, exact=True, batch=5)
    assert torch.equal(one, five)
    assert seen == [5] * (n_tiles // 5) + ([n_tiles % 5] if n_tiles % 5 else [])
    assert torch.allclose(one, torch.tanh(x) * 3, atol=1e-6)


def test_feather_window_cross_fades_to_one():
    w = feather_weights(1, 12, 0, 4)[0]
    # two 12-pixel tiles overlapping by 4: the ramps sum to one across the overlap
    assert torch.allclose(w[8:] + w[:4], torch.ones(4))
    assert w.min() > 0 and w[4:8].eq(1).all()


def test_fixed_vae_shape_engine_gets_exactly_its_tile():
    """A runtime built for one VAE shape: encode() only at (h*f, w*f), decode() only at (h, w)."""
    pipe = StandIn(fixed=(12, 12))

    def strict(name, fn, shape):
        def call(x):
            assert tuple(x.shape[-2:]) == shape, f"{name} called at {tuple(x.shape)}"
            return fn(x)
        return call

    pipe.encode = strict("encode", pipe.encode, (48, 48))
    pipe.decode = strict("decode", pipe.decode, (12, 12))
    model = SRModel(pipe, "trt", pipe.latent_tile, "fixed-shape stand-in")
    for h, w in [(5, 7), (37, 53), (12, 12)]:  # smaller than a tile (padded), larger, exactly one
        lr = torch.rand(3, h, w)
        out = super_resolve(model, lr, tiling=Tiling(vae_tile="off", batch=2))  # "off" cannot apply here
        assert out.shape == (3, 4 * h, 4 * w)
        ref = super_resolve(stand_in_model(), lr, tiling=Tiling(vae_tile="off"))
        assert torch.allclose(out, ref, atol=1e-6)
    assert vae_tiles(pipe, (8, 8), "auto") == ((12, 12), (12, 12), True)


def test_vae_tile_settings():
    pipe = StandIn()
    assert vae_tiles(pipe, (64, 64), "auto") == ((128, 128), (224, 224), False)  # PassionSR's SD defaults
    assert vae_tiles(pipe, (32, 32), "auto") == ((64, 64), (112, 112), False)
    assert vae_tiles(pipe, (32, 32), "off") == (None, None, False)
    assert vae_tiles(pipe, (32, 32), 20) == ((20, 20), (20, 20), False)
    assert vae_tiles(pipe, (32, 32), (16, 24)) == ((16, 16), (24, 24), False)


def test_small_images_run_the_vae_untiled_unless_forced():
    pipe = StandIn()
    x = torch.rand(1, 3, 64, 64)
    encode_tiled(pipe, x, (32, 32))
    decode_tiled(pipe, torch.rand(1, 4, 16, 16), (32, 32))
    assert pipe.calls["encode"] == [(1, 3, 64, 64)] and pipe.calls["decode"] == [(1, 4, 16, 16)]
    encode_tiled(pipe, x, (8, 8))
    assert len(pipe.calls["encode"]) > 2 and pipe.calls["encode"][-1] == (1, 3, 32, 32)


@pytest.fixture(scope="module")
def photo_lr():
    from passion_deploy.calibrate.data import bundled_photos
    from passion_deploy.images import downscale_bicubic, read_image

    photos = [p for p in bundled_photos() if p.stem == "astronaut"] or bundled_photos()
    if not photos:
        pytest.skip("no bundled photos in this checkout")
    return downscale_bicubic(read_image(photos[0]))  # 64x64 LR -> 256x256 SR, a 64x64 latent


def test_seam_check_on_a_real_photo(photo_lr):
    """Tiled vs untiled output of the tiny model differ by less than W8A8's quantization error,
    and the difference does not step at the tile borders (no visible seam)."""
    from passion_deploy.runner import load_model

    fp = load_model("tiny", "fp32")
    q = load_model("tiny", "fakequant", ckpt="tiny-w8a8", progress=False)
    tiled = Tiling(vae_tile=32, vae_overlap=8)  # 3x3 UNet tiles (32, overlap 16), 3x3 VAE tiles each way
    untiled_fp = super_resolve(dataclasses.replace(fp, latent_tile=(64, 64)), photo_lr, tiling=Tiling(vae_tile="off"))
    tiled_fp = super_resolve(fp, photo_lr, tiling=tiled)
    tiled_q = super_resolve(q, photo_lr, tiling=tiled)
    tiling_err = torch.mean((tiled_fp - untiled_fp) ** 2).item()
    quant_err = torch.mean((tiled_q - tiled_fp) ** 2).item()
    assert tiling_err < quant_err, (psnr(tiled_fp, untiled_fp), psnr(tiled_q, tiled_fp))
    # seams: the difference must not jump between neighbouring columns/rows anywhere inside the
    # image (8 px from the border, where tiles and the whole image both meet padding, excluded).
    # Measured: at most 2.9x the mean jump here; abutting VAE tiles (overlap 0) jump 6-10x.
    d = (tiled_fp - untiled_fp).abs().mean(0)
    jump_x = (d[:, 1:] - d[:, :-1]).abs().mean(0)[8:-8]
    jump_y = (d[1:, :] - d[:-1, :]).abs().mean(1)[8:-8]
    for jump in (jump_x, jump_y):
        assert jump.max() < 4 * jump.mean()
