"""Calibrated checkpoints: bit-exact round trip; every bad-file case fails with one clear sentence."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from passion_deploy.checkpoint import CheckpointError, load_checkpoint, quant_state_dict, save_checkpoint


@pytest.fixture(scope="module")
def saved(tiny_w8a8, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "w8a8.safetensors"
    save_checkpoint(tiny_w8a8, path)
    return path


def rewrite(src, dst, tensors=None, meta=None):
    with safe_open(str(src), "pt") as f:
        m = dict(f.metadata())
    t = load_file(str(src))
    save_file(tensors(t) if tensors else t, str(dst), metadata=meta(m) if meta else m)
    return dst


def test_round_trip_is_bit_exact(tiny_w8a8, saved, calib_batches):
    loaded = load_checkpoint(saved)
    for comp in ("unet", "vae"):
        a, b = quant_state_dict(getattr(tiny_w8a8, comp)), quant_state_dict(getattr(loaded, comp))
        assert a.keys() == b.keys() and len(a) > 100
        assert all(torch.equal(a[k], b[k]) for k in a)
    x = calib_batches[1]
    with torch.no_grad():
        assert torch.equal(tiny_w8a8(x), loaded(x))
    assert loaded.quant_config == tiny_w8a8.quant_config


def test_round_trip_with_fp_weights(tiny_w8a8, tmp_path, calib_batches):
    path = tmp_path / "full.safetensors"
    save_checkpoint(tiny_w8a8, path, include_fp_weights=True)
    loaded = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(tiny_w8a8(calib_batches[0]), loaded(calib_batches[0]))


def expect(path, fragment, **kw):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, **kw)
    msg = str(e.value)
    assert str(path) in msg and fragment in msg and "\n" not in msg
    return msg


def test_truncated(saved, tmp_path):
    bad = tmp_path / "trunc.safetensors"
    data = saved.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    expect(bad, "truncated or corrupt")


def test_corrupt_and_empty_and_missing(tmp_path):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\x00\x01not a checkpoint" * 10)
    expect(bad, "truncated or corrupt")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    expect(empty, "empty")
    expect(tmp_path / "nope.safetensors", "no such")


def test_wrong_preset(saved, tmp_path):
    expect(saved, "calibrated for preset 'tiny'", preset="sd21")
    other = rewrite(saved, tmp_path / "p.safetensors", meta=lambda m: {**m, "preset": "sd21"})
    # its tensors are tiny-sized: the sd21 model has other names/shapes (random weights keep this fast enough)
    with pytest.raises(CheckpointError):
        load_checkpoint(other, weights=None)


def test_missing_and_extra_tensors(saved, tmp_path):
    def drop(t):
        k = sorted(t)[0]
        del t[k]
        return t

    expect(rewrite(saved, tmp_path / "m.safetensors", tensors=drop), "missing")
    extra = rewrite(saved, tmp_path / "e.safetensors", tensors=lambda t: {**t, "unet.bogus.x_min": torch.zeros(1)})
    expect(extra, "unexpected")


def test_wrong_shape(saved, tmp_path):
    def reshape(t):
        k = next(k for k in sorted(t) if k.endswith("let_scale"))
        t[k] = torch.ones(t[k].numel() + 1)
        return t

    expect(rewrite(saved, tmp_path / "s.safetensors", tensors=reshape), "shape")


def test_not_a_checkpoint_and_bad_config(saved, tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(1)}, str(plain))
    expect(plain, "not a passion-deploy calibrated checkpoint")
    cfg = rewrite(saved, tmp_path / "c.safetensors",
                  meta=lambda m: {**m, "quant_config": json.dumps({"unet": {"weight_bits": 12}})})
    expect(cfg, "bad quantization config")
