"""Comparison pictures: crop choice, layout, and passion-sr --compare end to end."""
import numpy as np
import pytest
import torch
from PIL import Image

from passion_deploy.compare import GAP, auto_crop, clip_crop, compose, nearest_upscale, parse_crop
from passion_deploy.images import to_uint8


def test_parse_and_clip_crop():
    assert parse_crop("auto") is None
    assert parse_crop("3,4,10,12") == (3, 4, 10, 12)
    for bad in ("3,4,10", "a,b,c,d", "0,0,0,5", "-1,0,4,4"):
        with pytest.raises(ValueError, match="X,Y,W,H in LR pixels"):
            parse_crop(bad)
    assert clip_crop((30, 30, 20, 20), 40, 35) == (15, 20, 20, 20)
    assert clip_crop((0, 0, 50, 50), 10, 12) == (0, 0, 12, 10)


def test_auto_crop_finds_the_textured_region():
    g = torch.Generator().manual_seed(0)
    img = torch.full((3, 60, 80), 0.5)
    img[:, 30:46, 50:66] = torch.rand(3, 16, 16, generator=g)  # the only texture
    x, y, w, h = auto_crop(img, 16)
    assert (w, h) == (16, 16) and abs(x - 50) <= 4 and abs(y - 30) <= 4
    assert auto_crop(img, 100) == (0, 0, 80, 60)  # never larger than the image


def test_compose_places_each_crop_under_its_label():
    cols = [(f"col{i}", "sub", torch.rand(3, 40, 48)) for i in range(3)]
    pic = compose(cols, (2, 1, 5, 4), scale=4)
    W, H = 20, 16
    assert pic.width == 3 * W + 2 * GAP
    header = pic.height - H
    arr = np.asarray(pic)
    for i, (_, _, img) in enumerate(cols):
        left = i * (W + GAP)
        assert np.array_equal(arr[header:, left:left + W], to_uint8(img[:, 4:4 + H, 8:8 + W]))
    assert (arr[:header] < 128).any()  # some label text was drawn
    lr = torch.rand(3, 2, 3)
    assert torch.equal(nearest_upscale(lr, 4)[:, 4:8, 8:12], lr[:, 1:2, 2:3].expand(3, 4, 4))


@pytest.fixture(scope="module")
def photo_dirs(tmp_path_factory):
    from passion_deploy.calibrate.data import bundled_photos
    from passion_deploy.images import downscale_bicubic, read_image, write_png

    photos = bundled_photos()
    if not photos:
        pytest.skip("no bundled photos in this checkout")
    d = tmp_path_factory.mktemp("cmp")
    hr = read_image(photos[0])[:, :128, :96]
    write_png(d / "hr" / "p.png", hr)
    write_png(d / "lr" / "p.png", downscale_bicubic(hr))  # 24x32 LR
    return d


def test_compare_picture_columns_and_values(photo_dirs, capsys):
    from passion_deploy.cli.sr import main
    from passion_deploy.images import read_image

    out = photo_dirs / "out"
    args = ["-i", str(photo_dirs / "lr"), "-o", str(out), "--hr", str(photo_dirs / "hr"), "--compare",
            "--compare-with", "fakequant:tiny-w8a8,six bits=fakequant:tiny-w6a6", "--compare-crop", "2,3,16,20"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    pic = np.asarray(Image.open(out / "compare" / "p.png"))
    W, H = 64, 80
    assert pic.shape[1] == 5 * W + 4 * GAP  # LR | FP32 | W8A8 | six bits | HR
    header = pic.shape[0] - H
    fp32 = read_image(out / "p.png")  # the main model is FP32: its column is the written output
    assert np.array_equal(pic[header:, W + GAP:2 * W + GAP], to_uint8(fp32[:, 12:12 + H, 8:8 + W]))
    hr = read_image(photo_dirs / "hr" / "p.png")
    assert np.array_equal(pic[header:, 4 * (W + GAP):], to_uint8(hr[:, 12:12 + H, 8:8 + W]))
    lr = read_image(photo_dirs / "lr" / "p.png")
    assert np.array_equal(pic[header:, :W], to_uint8(nearest_upscale(lr, 4)[:, 12:12 + H, 8:8 + W]))
    # the compared models' metrics join the table
    assert "six bits" in printed and "fake-quant W8A8" in printed
    # a rerun keeps the picture
    mtime = (out / "compare" / "p.png").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "compare" / "p.png").stat().st_mtime_ns == mtime


def test_bad_compare_spec_is_one_sentence(photo_dirs, tmp_path, capsys):
    from passion_deploy.cli.sr import main

    rc = main(["-i", str(photo_dirs / "lr"), "-o", str(tmp_path), "--compare", "--compare-with", "int3"])
    err = capsys.readouterr().err
    assert rc == 2 and "--compare-with 'int3': not fp16, fakequant[:CKPT_OR_CONFIG] or an artifact folder" in err
    assert "Traceback" not in err
    rc = main(["-i", str(photo_dirs / "lr"), "-o", str(tmp_path), "--compare", "--compare-crop", "1,2"])
    assert rc == 2 and "--compare-crop" in capsys.readouterr().err
