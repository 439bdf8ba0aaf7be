"""PSNR / SSIM on hand-computed cases and against scikit-image, and passion-sr --hr end to end."""
import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from passion_deploy.metrics import db_value, image_metrics, output_psnr, psnr, rgb_to_y, ssim


def test_psnr_of_a_constant_offset():
    a = torch.rand(3, 20, 30, dtype=torch.float64) * 0.8 + 0.1
    assert psnr(a, a + 0.01) == pytest.approx(40.0, abs=1e-9)  # 10 log10(1 / 0.01^2)
    assert psnr(a * 255, a * 255 + 2.55, peak=255.0) == pytest.approx(40.0, abs=1e-9)
    assert psnr(a, a) == math.inf
    # on Y an RGB offset d becomes (65.481 + 128.553 + 24.966) d = 219 d on the 0..255 scale
    m = image_metrics(a + 0.01, a)
    assert m["psnr_rgb"] == pytest.approx(40.0, abs=1e-9)
    assert m["psnr_y"] == pytest.approx(20 * math.log10(255 / 2.19), abs=1e-9)


def test_output_psnr_clamps_images_and_scales_other_outputs_by_the_reference_range():
    """The one PSNR --verify and every benchmark score outputs with (metrics.output_psnr)."""
    ref = torch.rand(1, 3, 8, 8) * 0.8 + 0.1
    assert output_psnr(ref + 0.01, ref, image=True) == pytest.approx(40.0, abs=1e-4)
    over = ref.clone()
    over[0, 0, 0, 0] = 1.0
    assert output_psnr(over + 5.0 * (over == 1.0), over, image=True) == math.inf  # shown alike: clamped to [0, 1]
    latent = torch.linspace(-2, 2, 64).reshape(1, 1, 8, 8)  # range 4: the peak of a non-image output
    assert output_psnr(latent + 0.04, latent, image=False) == pytest.approx(40.0, abs=1e-4)  # 10 log10(4^2 / 0.04^2)
    assert output_psnr(latent + 0.04, latent * 10, image=False) < 20  # the reference's range, not the output's
    assert (db_value(40.004), db_value(math.inf)) == (40.0, "inf")


def test_bt601_luma():
    px = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).T[:, :, None]
    assert rgb_to_y(px).flatten().tolist() == pytest.approx([16.0, 235.0, 81.481, 144.553])


def test_ssim_hand_cases():
    x = torch.rand(3, 24, 24)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # constant images a and a + c: variances are 0, so SSIM = (2 a (a + c) + C1) / (a^2 + (a + c)^2 + C1)
    a, c, c1 = 0.5, 0.1, 0.01**2
    expect = (2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1)
    assert ssim(torch.full((1, 16, 16), a, dtype=torch.float64), torch.full((1, 16, 16), a + c, dtype=torch.float64)) == pytest.approx(expect, abs=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 10, 20), torch.rand(1, 10, 20))


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_scikit_image(channels):
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(channels)
    x = torch.rand(channels, 23, 31, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.rand(channels, 23, 31, generator=g, dtype=torch.float64)).clamp(0, 1)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    if channels == 1:
        expect = skm.structural_similarity(x[0].numpy(), y[0].numpy(), **kw)
    else:
        expect = skm.structural_similarity(x.numpy(), y.numpy(), channel_axis=0, **kw)
    assert ssim(x, y) == pytest.approx(expect, abs=1e-10)
    # Y channel on the 0..255 scale with data range 255, as SR papers report it
    ys, yh = rgb_to_y(x.expand(3, -1, -1)), rgb_to_y(y.expand(3, -1, -1))
    expect_y = skm.structural_similarity(ys[0].numpy(), yh[0].numpy(), gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=255.0)
    assert ssim(ys, yh, data_range=255.0) == pytest.approx(expect_y, abs=1e-10)


def test_image_metrics_crop_border_and_small_images():
    a = torch.rand(3, 30, 30)
    b = a.clone()
    b[:, :2] = 0  # damage only the top 2 rows
    assert image_metrics(b, a, crop_border=2)["psnr_rgb"] == math.inf
    assert image_metrics(b, a)["psnr_rgb"] < 30
    tiny = image_metrics(torch.rand(3, 4, 4), torch.rand(3, 4, 4))
    assert math.isnan(tiny["ssim_y"]) and math.isfinite(tiny["psnr_y"])  # SSIM needs an 11x11 window
    with pytest.raises(ValueError, match="same-size"):
        image_metrics(a, a[:, :20])


def save(path, arr):
    Image.fromarray(arr).save(path)
    return path


def test_hr_metrics_csv_and_summary(tmp_path, capsys):
    from passion_deploy.cli.sr import main
    from passion_deploy.images import downscale_bicubic, quantize_8bit, read_image, upscale_bicubic

    rng = np.random.default_rng(0)
    lr_dir, hr_dir, out = tmp_path / "lr", tmp_path / "hr", tmp_path / "out"
    lr_dir.mkdir()
    hr_dir.mkdir()
    hr = (rng.random((64, 72, 3)) * 255).astype(np.uint8)
    save(hr_dir / "a.png", hr)
    lr = downscale_bicubic(torch.from_numpy(hr.transpose(2, 0, 1).copy()).float() / 255)
    save(lr_dir / "ax4.png", (lr.numpy().transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))  # DIV2K-style name
    hr_b = (rng.random((66, 43, 3)) * 255).astype(np.uint8)  # sides not divisible by 4: LR is 16x10
    save(hr_dir / "b.png", hr_b)
    save(lr_dir / "b.png", (rng.random((16, 10, 3)) * 255).astype(np.uint8))
    save(lr_dir / "c.png", (rng.random((8, 8, 3)) * 255).astype(np.uint8))  # no HR
    rc = main(["-i", str(lr_dir), "-o", str(out), "--hr", str(hr_dir), "--color-fix", "none"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "c.png: no HR image matches its name in" in captured.err
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [(r["image"], r["method"]) for r in rows] == [("ax4", "FP32"), ("ax4", "bicubic"), ("b", "FP32"), ("b", "bicubic")]
    # the values are those of the written PNG against the HR (cropped to 4x the LR for b)
    sr_a, hr_a = read_image(out / "ax4.png"), read_image(hr_dir / "a.png")
    m = image_metrics(sr_a, hr_a)
    for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
        assert float(rows[0][k]) == pytest.approx(m[k], abs=1e-4)
    bic = image_metrics(quantize_8bit(upscale_bicubic(read_image(lr_dir / "ax4.png"))), hr_a)
    assert float(rows[1]["psnr_y"]) == pytest.approx(bic["psnr_y"], abs=1e-4)
    mb = image_metrics(read_image(out / "b.png"), read_image(hr_dir / "b.png")[:, :64, :40])
    assert float(rows[2]["psnr_rgb"]) == pytest.approx(mb["psnr_rgb"], abs=1e-4)
    assert "PSNR-Y" in captured.out and "bicubic" in captured.out and "FP32" in captured.out
    assert not list(out.glob(".*.tmp"))  # written atomically: no temp file left behind
    # a rerun keeps the outputs and still reports the metrics (read back from disk)
    mtime = (out / "ax4.png").stat().st_mtime_ns
    assert main(["-i", str(lr_dir), "-o", str(out), "--hr", str(hr_dir), "--color-fix", "none"]) == 0
    assert (out / "ax4.png").stat().st_mtime_ns == mtime
    assert list(csv.DictReader(open(out / "metrics.csv"))) == rows


def test_hr_of_the_wrong_size_is_named_not_a_traceback(tmp_path, capsys):
    from passion_deploy.cli.sr import main

    rng = np.random.default_rng(1)
    (tmp_path / "lr").mkdir()
    (tmp_path / "hr").mkdir()
    save(tmp_path / "lr" / "p.png", (rng.random((8, 8, 3)) * 255).astype(np.uint8))
    save(tmp_path / "hr" / "p.png", (rng.random((50, 32, 3)) * 255).astype(np.uint8))
    assert main(["-i", str(tmp_path / "lr"), "-o", str(tmp_path / "out"), "--hr", str(tmp_path / "hr")]) == 0
    err = capsys.readouterr().err
    assert "p.png: HR is 32x50 but the 4x output of p.png is 32x32; no metrics for it" in err
    assert "Traceback" not in err
    assert main(["-i", str(tmp_path / "lr"), "-o", str(tmp_path / "out"), "--hr", str(tmp_path / "nope")]) == 2
    assert "nope: the --hr folder does not exist" in capsys.readouterr().err


def test_hr_names_match_the_usual_dataset_conventions(tmp_path):
    from passion_deploy.evaluation import find_hr, hr_index

    for name in ("0801.png", "Canon_001_HR.png", "Canon_001_LR4.png", "photo_hr.png", "photo_lr.png", "same.png"):
        (tmp_path / name).write_bytes(b"")
    index = hr_index(tmp_path)
    lr = tmp_path / "lr"
    assert find_hr(index, lr / "0801x4.png").name == "0801.png"  # DIV2K
    assert find_hr(index, lr / "Canon_001_LR4.png").name == "Canon_001_HR.png"  # RealSR
    assert find_hr(index, tmp_path / "photo_lr.png").name == "photo_hr.png"  # never the LR file itself
    assert find_hr(index, lr / "same.png").name == "same.png"
    assert find_hr(index, lr / "other.png") is None
