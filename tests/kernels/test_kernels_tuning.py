"""The GEMM's launch choice (kernels/tuning.py, configs.GEMM_CLASSES): the shape class of a
launch, the on-disk cache of tuned launches per GPU, and the tuning path itself, run in
Triton's interpreter with a stand-in timer (the real one times CUDA events on a GPU)."""
import json
import warnings

import numpy as np
import pytest
import torch

from passion_deploy.kernels import use_interpreter_without_gpu

use_interpreter_without_gpu()
pytest.importorskip("triton", reason="the kernels need triton (pip install triton)")

from passion_deploy.kernels import configs, gemm, tuning  # noqa: E402
from passion_deploy.kernels.configs import Launch  # noqa: E402
from passion_deploy.kernels.operands import ActOperand, Epilogue, PackedWeights  # noqa: E402

L0, L1, L2 = Launch((64, 64, 32), 4, 3), Launch((128, 64, 64), 4, 3), Launch((64, 64, 64), 8, 3)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PASSION_DEPLOY_CACHE", str(tmp_path))
    monkeypatch.setattr(tuning, "_CACHE", None)
    return tmp_path


def test_cache_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("PASSION_DEPLOY_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning.cache_path() == tmp_path / "xdg" / "passion-deploy" / "autotune.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning.cache_path() == tmp_path / "home" / ".cache" / "passion-deploy" / "autotune.json"
    monkeypatch.setenv("PASSION_DEPLOY_CACHE", str(tmp_path / "mine"))
    assert tuning.cache_path() == tmp_path / "mine" / "autotune.json"
    for off in ("0", "false", "off"):
        monkeypatch.setenv("PASSION_DEPLOY_AUTOTUNE", off)
        assert not tuning.enabled()
    monkeypatch.setenv("PASSION_DEPLOY_AUTOTUNE", "1")
    assert tuning.enabled()


def test_cache_keeps_choices_per_gpu_and_only_listed_launches(tmp_path):
    path = tmp_path / "autotune.json"
    tuning.TuneCache(path).put("H100 / triton 3.6", "qgemm/k", L1)
    fresh = tuning.TuneCache(path)  # another process: reads the file
    assert fresh.get("H100 / triton 3.6", "qgemm/k", (L0, L1)) == L1
    assert fresh.get("A100 / triton 3.6", "qgemm/k", (L0, L1)) is None  # another GPU tunes for itself
    assert fresh.get("H100 / triton 3.6", "qgemm/other", (L0, L1)) is None
    # configs.py no longer lists the stored launch: it is not run (only AOT-compiled launches are)
    assert fresh.get("H100 / triton 3.6", "qgemm/k", (L0, L2)) is None


def test_cache_merges_what_other_processes_wrote(tmp_path):
    path = tmp_path / "autotune.json"
    a, b = tuning.TuneCache(path), tuning.TuneCache(path)
    assert b.get("gpu", "k1", (L0,)) is None  # b has read the (missing) file before a writes
    a.put("gpu", "k1", L1)
    b.put("gpu", "k2", L2)
    data = json.loads(path.read_text())
    assert data["version"] == tuning.VERSION
    assert set(data["devices"]["gpu"]) == {"k1", "k2"}
    assert tuning.TuneCache(path).get("gpu", "k1", (L1,)) == L1


def test_unreadable_cache_warns_and_is_rewritten(tmp_path):
    path = tmp_path / "autotune.json"
    path.write_text("{ not json")
    c = tuning.TuneCache(path)
    with pytest.warns(RuntimeWarning, match="cannot read"):
        assert c.get("gpu", "k", (L0,)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per cache, not one per call
        c.put("gpu", "k", L0)
    assert tuning.TuneCache(path).get("gpu", "k", (L0,)) == L0


def test_shape_classes_of_sd21_launches():
    """rows = batch x output positions: the UNet at the 64x64 latent tile and the VAE at 512 px."""
    cases = {
        (64, 1280): "unet-low-res",  # 8x8 level, batch 1
        (4 * 64, 1280): "unet-low-res",  # batch 4
        (256, 1280): "unet-low-res",  # 16x16 level, batch 1
        (4 * 256, 1280): "unet-mid-res",
        (1024, 640): "unet-mid-res",  # 32x32
        (4096, 320): "unet-mid-res",  # 64x64, batch 1; the VAE's 64x64 convs
        (4 * 4096, 320): "unet-64-batch4-vae",
        (512 * 512, 128): "unet-64-batch4-vae",  # VAE decoder's last level
        (512 * 512, 3): "vae-rgb",  # decoder conv_out
        (64 * 64, 8): "vae-rgb",  # quant_conv
    }
    for (rows, n), name in cases.items():
        cls, cands = configs.qgemm_launches(rows, n, 1)
        assert cls.name == name, (rows, n)
        assert cands == cls.launches and configs.qgemm_launches(rows, n, 2)[1] == cls.split_launches
    assert {c.name for c in configs.GEMM_CLASSES} == set(cases.values())
    with pytest.raises(ValueError, match="1 or 2 K-groups"):
        configs.qgemm_launches(64, 64, 3)


# -- the tuning path, in the interpreter ------------------------------------------------------

def small_gemm(n=24, c=40, p=50):
    g = torch.Generator().manual_seed(0)
    w = PackedWeights(torch.randint(0, 256, (1, n, 1, c), dtype=torch.uint8, generator=g), 8, -128, (c,), 1,
                      torch.randint(-3, 4, (1, n), dtype=torch.int32, generator=g),
                      torch.zeros(1, n, dtype=torch.int32), np.zeros((1, n), np.int64), np.ones((1, n), np.float32))
    w.colsum = (w.data[0, :, 0].long() - 128).sum(1).to(torch.int32)[None]
    ep = Epilogue(torch.tensor([128], dtype=torch.int32), torch.full((1, n), 0.01), None, torch.randn(n, generator=g),
                  None)
    a = torch.randint(0, 256, (1, p, c), dtype=torch.uint8, generator=g)
    return a, [ActOperand("u8", 1.0, 128, 0, 255, 128, 0)], w, ep


def test_gpu_path_tunes_once_and_then_reads_the_cache(cache_dir, monkeypatch):
    """qgemm's GPU branch (here in the interpreter): the class's candidates are timed by
    triton.autotune, the fastest is stored for the GPU, and a later process launches it without
    timing anything. Every candidate writes the same output (the fixed launch's)."""
    a, ops, w, ep = small_gemm()
    want = gemm.qgemm(a, ops, w, ep)  # interpreter: the class's fixed launch
    cls, cands = configs.qgemm_launches(50, 24, 1)
    assert len(cands) > 1
    timed = []

    def bench(kernel_call, quantiles):  # the last candidate is the fastest
        kernel_call()
        timed.append(1)
        return [100.0 - len(timed)] * len(quantiles)

    monkeypatch.setattr(tuning, "DO_BENCH", bench)
    monkeypatch.setattr(tuning, "device_key", lambda device: "Test GPU / triton x")
    monkeypatch.setattr(gemm, "interpreting", lambda: False)
    y = gemm.qgemm(a, ops, w, ep)
    assert len(timed) == len(cands) and torch.equal(y, want)
    stored = json.loads((cache_dir / "autotune.json").read_text())["devices"]["Test GPU / triton x"]
    (key, entry), = stored.items()
    assert key == f"qgemm/{cls.name}/g1/w8/k1x1/u8-float32"
    assert tuning._launch_from_json(entry) == cands[-1]
    # a new process: the stored launch runs directly
    monkeypatch.setattr(tuning, "_CACHE", None)
    monkeypatch.setattr(tuning, "_AUTOTUNERS", {})
    timed.clear()
    assert torch.equal(gemm.qgemm(a, ops, w, ep), want) and timed == []
    # tuning switched off: the fixed launch, nothing timed, nothing stored
    monkeypatch.setenv("PASSION_DEPLOY_AUTOTUNE", "0")
    (cache_dir / "autotune.json").unlink()
    assert torch.equal(gemm.qgemm(a, ops, w, ep), want) and timed == []
    assert not (cache_dir / "autotune.json").exists()


def test_explicit_launches_skip_tuning(cache_dir, monkeypatch):
    a, ops, w, ep = small_gemm()
    monkeypatch.setattr(gemm, "interpreting", lambda: False)
    monkeypatch.setattr(tuning, "tuned_launch", lambda *args, **kw: pytest.fail("tuned an explicit launch"))
    want = gemm.qgemm(a, ops, w, ep, block=(16, 16, 32))
    assert torch.equal(gemm.qgemm(a, ops, w, ep, launch=Launch((32, 32, 32), 4, 3)), want)
    with pytest.raises(ValueError, match="not both"):
        gemm.qgemm(a, ops, w, ep, block=(16, 16, 32), launch=Launch((32, 32, 32), 4, 3))
