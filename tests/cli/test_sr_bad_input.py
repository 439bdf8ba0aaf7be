"""passion-sr on bad and unusual input: each case handled or refused by name in one sentence,
never a traceback; outputs written atomically; reruns skip finished outputs."""
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from passion_deploy.cli.sr import main
from passion_deploy.images import ImageError, read_image, write_png


def raw_png(path, arr, color_type, bit_depth, size=None):
    """A PNG written byte by byte (PIL cannot write 16-bit RGB); `size` overrides the header's size."""
    h, w = arr.shape[:2]
    dt = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + arr[i].astype(dt).tobytes() for i in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    W, H = size or (w, h)
    ihdr = struct.pack(">IIBBBBB", W, H, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return rc, out.err


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


def test_unusual_formats_are_handled(tmp_path, rng, capsys):
    d = tmp_path / "in"
    d.mkdir()
    raw_png(d / "rgb16.png", (rng.random((9, 11, 3)) * 65535).astype(np.uint16), 2, 16)
    raw_png(d / "la16.png", (rng.random((7, 6, 2)) * 65535).astype(np.uint16), 4, 16)
    Image.fromarray((rng.random((10, 12, 4)) * 255).astype(np.uint8), "RGBA").convert("P").save(d / "pal_alpha.png",
                                                                                            transparency=0)
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rng.random((12, 9)) > 0.5).save(d / "bilevel.png")
    Image.fromarray((rng.random((5, 3, 3)) * 255).astype(np.uint8)).save(d / "odd.bmp")
    rc, err = run(capsys, "-i", d, "-o", tmp_path / "out")
    assert rc == 0, err
    sizes = {p.stem: Image.open(p).size for p in (tmp_path / "out").glob("*.png")}
    assert sizes == {"rgb16": (44, 36), "la16": (24, 28), "pal_alpha": (48, 40), "cmyk": (32, 32),
                     "bilevel": (36, 48), "odd": (12, 20)}
    # 16-bit values keep their scale (the top byte), not clipped to white
    t = read_image(d / "rgb16.png")
    assert 0.3 < t.mean().item() < 0.7


def test_broken_empty_truncated_huge_and_bomb_files_are_refused_by_name(tmp_path, rng, capsys):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray((rng.random((10, 10, 3)) * 255).astype(np.uint8)).save(d / "good.png")
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("not an image at all")
    full = raw_png(tmp_path / "full.png", (rng.random((40, 40, 3)) * 255).astype(np.uint8), 2, 8).read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    Image.fromarray((rng.random((60, 50, 3)) * 255).astype(np.uint8)).save(d / "big.png")
    raw_png(d / "bomb.png", np.zeros((1, 1), np.uint8), 0, 8, size=(30000, 30000))  # 900 MP claimed
    rc, err = run(capsys, "-i", d, "-o", tmp_path / "out", "--max-pixels", 2000)
    assert rc == 1  # some refused, the rest ran
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {"good.png"}
    lines = [line for line in err.splitlines() if line.startswith("passion-sr: skipped")]
    assert len(lines) == 5
    assert any("empty.png: the file is empty (0 bytes)" in x for x in lines)
    assert any("text.jpg: not a readable image" in x for x in lines)
    assert any("truncated.png: not a readable image" in x for x in lines)
    assert any("big.png: refused, 50x60 = 3,000 pixels is over the pixel budget of 2,000" in x for x in lines)
    assert any("bomb.png: refused" in x for x in lines)
    # with no budget, PIL's own decompression-bomb guard still refuses it by name
    rc, err = run(capsys, "-i", d / "bomb.png", "-o", tmp_path / "out2", "--max-pixels", 0)
    assert rc == 1 and "bomb.png: refused as a decompression bomb" in err
    with pytest.raises(ImageError, match="big.png: refused"):
        read_image(d / "big.png", max_pixels=100)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path, rng, capsys):
    p = tmp_path / "locked.png"
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(p)
    p.chmod(0)
    try:
        rc, err = run(capsys, "-i", p, "-o", tmp_path / "out")
    finally:
        p.chmod(0o644)
    assert rc == 1 and "locked.png: not a readable image (PermissionError" in err


def test_name_collisions_and_writing_over_the_input_are_refused(tmp_path, rng, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.png", "a.jpg"):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(d / name)
    rc, err = run(capsys, "-i", d, "-o", tmp_path / "out")
    assert rc == 1 and "a.png: its output" in err and "is also the output of a.jpg; rename one of them" in err
    before = (d / "a.png").read_bytes()
    rc, err = run(capsys, "-i", d / "a.png", "-o", d, "--overwrite")
    assert rc == 1 and "a.png: its output would overwrite the input" in err
    assert (d / "a.png").read_bytes() == before
    (tmp_path / "file").write_text("x")
    rc, err = run(capsys, "-i", d, "-o", tmp_path / "file")
    assert rc == 2 and "file: exists and is not a folder" in err


def test_bad_option_values_are_one_sentence(tmp_path, rng, capsys):
    p = tmp_path / "x.png"
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(p)
    for args, msg in [(["--batch", "0"], "--batch 0 must be at least 1"),
                      (["--vae-tile", "big"], "--vae-tile 'big' must be auto, off, N or ENC,DEC"),
                      (["--tile-overlap", "32"], "--tile-overlap 32 must be at least 0 and below the UNet tile 32x32"),
                      (["--vae-tile", "8", "--vae-overlap", "8"], "--vae-overlap 8 must be at least 0 and below the VAE"),
                      (["--max-pixels", "-1"], "--max-pixels -1 must be 0")]:
        rc, err = run(capsys, "-i", p, "-o", tmp_path / "out", *args)
        assert rc == 2 and msg in err, (args, err)
        assert len(err.strip().splitlines()) == 1


def test_rerun_skips_overwrite_rewrites_and_writes_are_atomic(tmp_path, rng, capsys, monkeypatch):
    p = tmp_path / "x.png"
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(p)
    out = tmp_path / "out"
    assert run(capsys, "-i", p, "-o", out)[0] == 0
    first = (out / "x.png").read_bytes()
    rc, _ = run(capsys, "-i", p, "-o", out, "--color-fix", "none")
    assert rc == 0 and (out / "x.png").read_bytes() == first  # kept, not recomputed without the fix
    rc, _ = run(capsys, "-i", p, "-o", out, "--color-fix", "none", "--overwrite")
    assert rc == 0 and (out / "x.png").read_bytes() != first

    # a writer that dies half-way leaves the old output intact and no temp file behind
    def broken_save(self, fp, *a, **k):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    kept = (out / "x.png").read_bytes()
    monkeypatch.setattr(Image.Image, "save", broken_save)
    rc, err = run(capsys, "-i", p, "-o", out, "--overwrite")
    assert rc == 1 and "x.png: cannot write the output (OSError: disk full)" in err
    assert (out / "x.png").read_bytes() == kept
    assert sorted(q.name for q in out.iterdir()) == ["x.png"]
    with pytest.raises(OSError):
        write_png(out / "y.png", read_image(p))
    assert not (out / "y.png").exists()


def test_interrupt_reports_and_leaves_finished_outputs(tmp_path, rng, capsys, monkeypatch):
    import passion_deploy.runner as runner

    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(d / name)
    real = runner.super_resolve
    calls = []

    def once_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "super_resolve", once_then_interrupt)
    rc, err = run(capsys, "-i", d, "-o", tmp_path / "out")
    assert rc == 130 and "interrupted after 1 written" in err
    assert [q.name for q in (tmp_path / "out").iterdir()] == ["a.png"]
