"""Colour fix (OSEDiff's adain / wavelet) on hand-checked cases, and passion-sr's default."""
import pytest
import torch

from passion_deploy.colorfix import (DEFAULT_COLOR_FIX, adain_color_fix, apply_color_fix, wavelet_blur,
                                     wavelet_color_fix, wavelet_split)


def smooth_image(seed=0, h=40, w=48):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(1, 3, 6, 6, generator=g)
    return torch.nn.functional.interpolate(lo, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0.1, 0.9)


def test_adain_undoes_a_per_channel_gain_and_offset():
    ref = smooth_image()
    gain = torch.tensor([0.5, 1.3, 0.8])[:, None, None]
    off = torch.tensor([0.1, -0.2, 0.05])[:, None, None]
    out = adain_color_fix(ref * gain + off, ref)
    assert torch.allclose(out, ref, atol=1e-3)
    # exactly, with OSEDiff's eps inside both standard deviations:
    v, mean = ref.flatten(1).var(1)[:, None, None], ref.mean((1, 2), keepdim=True)
    expect = (ref - mean) * gain * (v + 1e-5).sqrt() / (gain**2 * v + 1e-5).sqrt() + mean
    assert torch.allclose(out, expect, atol=1e-6)
    # in general: each channel gets the reference's mean and (unbiased, eps 1e-5) std
    sr = torch.rand(3, 30, 20)
    out = adain_color_fix(sr, ref[:, :30, :20])
    r = ref[:, :30, :20]
    assert torch.allclose(out.mean((1, 2)), r.mean((1, 2)), atol=1e-6)
    var_s, var_r = sr.flatten(1).var(1), r.flatten(1).var(1)
    assert torch.allclose(out.flatten(1).var(1), var_s / (var_s + 1e-5) * (var_r + 1e-5), rtol=1e-4)


def test_wavelet_blur_is_the_dilated_binomial_kernel():
    x = torch.zeros(1, 3, 9, 9)
    x[:, :, 4, 4] = 1.0
    y = wavelet_blur(x, 2)[0, 0]
    expect = torch.zeros(9, 9)
    for dy, dx, v in [(0, 0, 1 / 4), (2, 0, 1 / 8), (-2, 0, 1 / 8), (0, 2, 1 / 8), (0, -2, 1 / 8),
                      (2, 2, 1 / 16), (2, -2, 1 / 16), (-2, 2, 1 / 16), (-2, -2, 1 / 16)]:
        expect[4 + dy, 4 + dx] = v
    assert torch.allclose(y, expect)
    # replicate padding: a constant image stays constant, also at the border
    c = torch.full((1, 3, 5, 7), 0.3)
    assert torch.allclose(wavelet_blur(c, 16), c)


def test_wavelet_split_is_exact_and_the_fix_removes_a_colour_cast_but_keeps_detail():
    ref = smooth_image(1)
    high, low = wavelet_split(ref[None])
    assert torch.allclose(high + low, ref[None], atol=1e-6)
    cast = torch.tensor([0.08, -0.05, 0.02])[:, None, None]
    assert torch.allclose(wavelet_color_fix(ref + cast, ref), ref, atol=1e-5)  # low frequencies replaced
    # a pixel-scale checkerboard is pure high frequency: the 3x3 binomial kernel cancels it exactly,
    # so the fix keeps the model's detail (checked away from the replicate-padded border)
    # (away from the border, whose replicate padding leaks into 2+4+8+16 = 30 pixels)
    big = smooth_image(3, 96, 96)
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    checker = 0.05 * (1 - 2 * ((yy + xx) % 2)).float()
    sr = big + checker
    fixed = wavelet_color_fix(sr, big)
    assert torch.allclose(fixed[:, 31:-31, 31:-31], sr[:, 31:-31, 31:-31], atol=1e-5)
    assert not torch.allclose(fixed, big, atol=1e-2)  # the detail is there, not the reference's


def test_apply_color_fix_names_and_clamps():
    sr, ref = torch.rand(3, 8, 8) * 1.4 - 0.2, torch.rand(3, 8, 8)
    assert torch.equal(apply_color_fix("none", sr, ref), sr.clamp(0, 1))
    for m in ("adain", "wavelet"):
        out = apply_color_fix(m, sr, ref)
        assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="unknown colour fix 'median'"):
        apply_color_fix("median", sr, ref)
    with pytest.raises(ValueError, match="same-size"):
        apply_color_fix("adain", sr, ref[:, :4])


def test_passion_sr_defaults_to_osediffs_adain_and_says_so():
    from passion_deploy.cli.sr import build_parser

    p = build_parser()
    assert DEFAULT_COLOR_FIX == "adain" and p.get_default("color_fix") == "adain"
    assert "default adain" in " ".join(p.format_help().split())


def test_color_fix_moves_sr_output_towards_the_lr_colours():
    """End to end: a model output with a colour cast comes back to the LR's colours."""
    from passion_deploy.images import upscale_bicubic
    from passion_deploy.runner import SRModel, super_resolve

    class Tinted:  # an "SR model" returning the bicubic image with a red cast
        vae_factor, size_multiple, latent_tile = 1, 1, (64, 64)

        def encode(self, x):
            return x

        def denoise(self, z):
            return z

        def decode(self, z):
            return z + torch.tensor([0.1, 0.0, 0.0])[None, :, None, None]

    lr = smooth_image(2, 16, 16)
    up = upscale_bicubic(lr, 4)
    m = SRModel(Tinted(), "fp32", (64, 64), "tinted")
    raw = super_resolve(m, lr, color_fix="none")
    for method in ("adain", "wavelet"):
        fixed = super_resolve(m, lr, color_fix=method)
        assert (fixed - up).abs().mean() < 0.2 * (raw - up).abs().mean()
