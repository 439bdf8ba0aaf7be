"""The serving pieces without a server: the tile batcher (threads meet in stacked calls, each
gets its own rows back, errors reach every caller, nothing waits for a call that cannot come),
the service (concurrent images of different sizes share component calls and stay exactly
passion-sr's output; each bad request is one sentence), the settings' round trip through
config.pbtxt parameters, and the libpython rule."""
import os
import sysconfig
import threading

import numpy as np
import torch

from passion_deploy.export.runtime import PipelineSR
from passion_deploy.serving.batcher import BatchedRuntime, TileBatcher, exact_batch
from passion_deploy.serving.server import libpython_first
from passion_deploy.serving.service import SRService
from passion_deploy.serving.spec import ModelSpec, SRSettings
from serving_helpers import images_with_outputs, rgb


class CountingRuntime:
    """A runtime whose component is x * 2 + 1, recording the batch of every call."""

    def __init__(self, fail_on: str | None = None):
        self.calls = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def run(self, name, x):
        with self.lock:
            self.calls.append((name, x.shape[0]))
        if name == self.fail_on:
            raise RuntimeError("engine exploded")
        return x * 2 + 1


def _threads(batcher, jobs):
    """Each job (name, tensor) submitted from its own participant thread; results by index."""
    out, errs = {}, {}
    barrier = threading.Barrier(len(jobs))

    def go(i, name, x):
        with batcher.participant():
            barrier.wait()
            try:
                out[i] = batcher.submit(name, x)
            except Exception as e:
                errs[i] = e

    ts = [threading.Thread(target=go, args=(i, n, x)) for i, (n, x) in enumerate(jobs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not any(t.is_alive() for t in ts), "a participant is stuck in the batcher"
    return out, errs


def test_batcher_stacks_equal_calls_up_to_the_batch_and_returns_each_its_rows():
    rt = CountingRuntime()
    b = TileBatcher(rt, max_batch=4)
    g = torch.Generator().manual_seed(0)
    jobs = [("unet", torch.rand(1, 4, 8, 8, generator=g)) for _ in range(6)]
    jobs += [("unet", torch.rand(2, 4, 8, 8, generator=g))]  # a two-tile call of one image
    jobs += [("vae_decoder", torch.rand(1, 4, 6, 10, generator=g)) for _ in range(2)]
    out, errs = _threads(b, jobs)
    assert not errs
    for i, (_, x) in enumerate(jobs):
        assert torch.equal(out[i], x * 2 + 1), f"call {i} got another call's rows"
    unet = sorted(n for name, n in rt.calls if name == "unet")
    assert sum(unet) == 8 and max(unet) <= 4 and len(unet) < 7, unet  # stacked, never over the batch
    assert sorted(n for name, n in rt.calls if name == "vae_decoder") == [2]  # equal shapes only


def test_batcher_error_reaches_every_caller_of_the_stack():
    b = TileBatcher(CountingRuntime(fail_on="unet"), max_batch=8)
    out, errs = _threads(b, [("unet", torch.zeros(1, 4, 8, 8)) for _ in range(3)] + [("vae_encoder", torch.zeros(1, 3, 8, 8))])
    assert sorted(errs) == [0, 1, 2] and all("engine exploded" in str(e) for e in errs.values())
    assert list(out) == [3]


def test_batcher_does_not_wait_for_participants_that_are_done():
    """One image finishes without calling again: the other's held call runs at once."""
    rt = CountingRuntime()
    b = TileBatcher(rt, max_batch=4)
    done = threading.Event()

    def quiet():
        with b.participant():
            done.wait(5)

    t = threading.Thread(target=quiet)
    t.start()
    res = {}

    def caller():
        with b.participant():
            res["x"] = b.submit("unet", torch.ones(1, 4, 8, 8))

    c = threading.Thread(target=caller)
    c.start()
    c.join(0.5)
    assert c.is_alive(), "the call ran before the other participant could join it"
    done.set()
    c.join(10)
    assert not c.is_alive() and torch.equal(res["x"], torch.full((1, 4, 8, 8), 3.0))
    t.join(5)


def test_exact_batch_is_one_for_pytorch_pipelines():
    from passion_deploy.models import build_pipeline

    assert exact_batch(PipelineSR(build_pipeline("tiny"), "fp32", (32, 32)), 8) == 1


def test_service_batches_tiles_of_concurrent_images_and_stays_exact(artifact, tmp_path):
    """Three requests of different sizes in one Triton batch: their UNet tiles share calls, and
    every image is passion-sr's, bit for bit."""
    paths, ref = images_with_outputs(artifact, tmp_path, [(24, 20), (40, 32), (16, 36)], seed=7)
    svc = SRService(ModelSpec(model_dir=str(artifact)).load(), SRSettings(), max_batch=4)
    assert svc.max_batch == 4
    reqs = [svc.parse(rgb(p)[None], None) for p in paths] + [svc.parse(np.zeros((1, 4, 0, 3), np.uint8), None)]
    out = svc.run(reqs)
    for p, o in zip(paths, out):
        assert isinstance(o, np.ndarray) and np.array_equal(o[0], ref[p.stem]), p.name
    assert "the image is empty (0x4 pixels" in str(out[3])
    unet = svc.last_stats.calls["unet"]
    # 1 + 2 + 2 UNet tiles: one image alone would take as many calls as it has tiles
    assert sum(unet) == 5 and max(unet) > 1 and max(unet) <= 4, unet


def test_bad_requests_are_one_sentence_each(artifact):
    svc = SRService(ModelSpec(model_dir=str(artifact)).load(), SRSettings(max_pixels=100), max_batch=2)
    png = _png(12, 9)  # 108 px, over the budget of 100

    def why(image=None, encoded=None):
        r = svc.parse(image, encoded)
        assert r.images is None and "\n" not in r.error
        return r.error

    assert why().startswith("send exactly one input")
    assert "is empty" in why(np.zeros((0, 5, 5, 3), np.uint8))
    assert "over the pixel budget of 100" in why(np.zeros((1, 11, 10, 3), np.uint8))
    assert "over the pixel budget of 100" in why(encoded=np.array([[png]], dtype=object))
    assert "not a readable image" in why(encoded=np.array([[b"GIF89a broken"]], dtype=object))
    assert "must have one size" in SRService(svc.model, SRSettings(), 2).parse(
        None, np.array([[png], [_png(8, 8)]], dtype=object)).error
    assert svc.parse(np.zeros((2, 9, 9, 3), np.uint8), None).images is not None  # 81 px: within budget


def _png(w, h) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_settings_round_trip_through_config_parameters(tmp_path):
    spec = ModelSpec(model_dir="artifact", backend="fp32", ckpt=None, device="cpu")
    s = SRSettings(tile_overlap=8, vae_tile="40,60", vae_overlap=None, color_fix="wavelet", max_pixels=0)
    assert SRSettings.from_params(s.params()) == s
    back = ModelSpec.from_params(spec.params(), base=tmp_path / "1")
    assert back.model_dir == str(tmp_path / "1" / "artifact") and back.ckpt is None and back.device == "cpu"
    assert s.tiling(3).vae_tile == (40, 60) and s.tiling(3).batch == 3 and s.budget is None


def test_libpython_goes_first_once():
    libdir = sysconfig.get_config_var("LIBDIR")
    env = {"LD_LIBRARY_PATH": f"/opt/x{os.pathsep}{libdir}"}
    assert libpython_first(env) == libdir
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [libdir, "/opt/x"]
    env2 = {}
    libpython_first(env2)
    assert env2["LD_LIBRARY_PATH"] == libdir


def test_batched_runtime_keeps_the_runtime_constants(artifact):
    rt = ModelSpec(model_dir=str(artifact)).load().pipe
    b = BatchedRuntime(rt, TileBatcher(rt, 2))
    assert b.size_multiple == rt.size_multiple and b.latent_tile == rt.latent_tile and b.dtype == rt.dtype
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))  # one 32x32 latent tile
    assert torch.equal(b(x), rt(x))
