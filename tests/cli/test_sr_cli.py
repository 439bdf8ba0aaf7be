"""passion-sr end to end on CPU: sizes, image kinds, bad files, fake-quant."""
import numpy as np
import pytest
from PIL import Image

from passion_deploy.cli.sr import main
from passion_deploy.images import read_image


def save(path, arr, mode=None):
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    save(d / "rgb_37x53.png", (rng.random((37, 53, 3)) * 255).astype(np.uint8))
    save(d / "gray.png", (rng.random((20, 24)) * 255).astype(np.uint8), "L")
    save(d / "rgba.png", (rng.random((16, 16, 4)) * 255).astype(np.uint8), "RGBA")
    Image.fromarray((rng.random((16, 20, 3)) * 255).astype(np.uint8)).convert("P").save(d / "palette.png")
    save(d / "deep16.png", (rng.random((16, 16)) * 65535).astype(np.uint16))
    (d / "empty.png").write_bytes(b"")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    return d


def test_folder_with_every_image_kind_and_bad_files(inputs, tmp_path, capsys):
    rc = main(["-i", str(inputs), "-o", str(tmp_path), "--backend", "fp32"])
    err = capsys.readouterr().err
    assert rc == 1  # some inputs failed, the rest still ran
    assert "empty.png: the file is empty" in err and "broken.jpg: not a readable image" in err
    assert "Traceback" not in err
    sizes = {p.stem: Image.open(p).size for p in tmp_path.glob("*.png")}
    assert sizes == {"rgb_37x53": (212, 148), "gray": (96, 80), "rgba": (64, 64), "palette": (80, 64),
                     "deep16": (64, 64)}
    for p in tmp_path.glob("*.png"):
        assert Image.open(p).mode == "RGB"


def test_sixteen_bit_and_alpha_are_read_faithfully(tmp_path):
    a16 = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    t = read_image(save(tmp_path / "h.png", a16))
    assert t.shape == (3, 4, 4) and abs(t.mean().item() - 0.5) < 1e-3
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent black -> white
    assert read_image(save(tmp_path / "t.png", rgba, "RGBA")).min().item() == 1.0


def test_missing_input_is_one_clear_sentence(tmp_path, capsys):
    assert main(["-i", str(tmp_path / "nope.png"), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nope.png: no such file or folder" in err and "Traceback" not in err


def test_fakequant_turns_64px_photo_into_256px(tmp_path):
    from passion_deploy.calibrate.data import bundled_photos, center_square

    photos = bundled_photos()
    if not photos:
        pytest.skip("no bundled photos in this checkout")
    img = center_square(read_image(photos[0]), 64)
    arr = (img.numpy().transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
    src = save(tmp_path / "photo64.png", arr)
    out = tmp_path / "out"
    assert main(["--preset", "tiny", "--backend", "fakequant", "-i", str(src), "-o", str(out)]) == 0
    res = Image.open(out / "photo64.png")
    assert res.size == (256, 256)
    # a rerun skips finished outputs
    mtime = (out / "photo64.png").stat().st_mtime_ns
    assert main(["--backend", "fakequant", "-i", str(src), "-o", str(out)]) == 0
    assert (out / "photo64.png").stat().st_mtime_ns == mtime


def test_odd_sizes_exact_with_a_checkpoint_and_tile_batching(tmp_path):
    """Fake-quant W8A8 from the bundled checkpoint at odd sizes, VAE tiling forced: exactly 4x.
    Stacking tiles in batches of 4 gives the FP32 picture of one at a time (to one 8-bit level:
    batched GEMMs round differently); for fake-quant such 1e-7 differences can flip an 8-bit
    code, so there the bar is 45 dB."""
    from passion_deploy.metrics import psnr

    rng = np.random.default_rng(3)
    src = tmp_path / "in"
    src.mkdir()
    sizes = [(21, 35), (9, 50)]
    for h, w in sizes:
        smooth = np.asarray(Image.fromarray((rng.random((h // 3 + 1, w // 3 + 1, 3)) * 255).astype(np.uint8))
                            .resize((w, h), Image.BICUBIC))
        save(src / f"odd_{h}x{w}.png", smooth)
    for backend in ("fp32", "fakequant"):
        common = ["--backend", backend, "--ckpt", "tiny-w8a8", "-i", str(src), "--vae-tile", "8"]
        assert main(common + ["-o", str(tmp_path / f"{backend}1")]) == 0
        assert main(common + ["-o", str(tmp_path / f"{backend}4"), "--batch", "4"]) == 0
        for h, w in sizes:
            one = read_image(tmp_path / f"{backend}1" / f"odd_{h}x{w}.png")
            four = read_image(tmp_path / f"{backend}4" / f"odd_{h}x{w}.png")
            assert one.shape == (3, 4 * h, 4 * w)
            if backend == "fp32":
                assert (one - four).abs().max() <= 1 / 255 + 1e-6
            else:
                assert psnr(one, four) > 45
