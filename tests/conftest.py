import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def calib_batches():
    """Two small calibration batches of smooth random images (64x64, tiny's size multiple is 16)."""
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(2, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(lo, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    return [x[:1], x[1:]]


@pytest.fixture(scope="session")
def tiny_w8a8(calib_batches):
    """A statistics-calibrated W8A8 (UNet+VAE) fake-quant tiny pipeline, shared read-only."""
    from passion_deploy.calibrate import statistics_pass
    from passion_deploy.config import NAMED_CONFIGS
    from passion_deploy.models import build_pipeline
    from passion_deploy.quant import quantize_pipeline

    pipe = quantize_pipeline(build_pipeline("tiny"), NAMED_CONFIGS["w8a8"])
    statistics_pass(pipe, calib_batches, progress=False)
    return pipe


@pytest.fixture(scope="session")
def tiny_traced(tiny_w8a8, calib_batches):
    """Each tiny W8A8 component traced to the deploy IR on the reference's own input:
    {component: (graph, fake-quant output, input name, input)}."""
    from passion_deploy.export.ir.trace import trace_unet, trace_vae_decoder, trace_vae_encoder

    x = calib_batches[0]
    with torch.no_grad():
        z = tiny_w8a8.encode(x)
        z0 = tiny_w8a8.denoise(z)
        traced = {"unet": (trace_unet(tiny_w8a8, z), "latent", z), "vae_encoder": (trace_vae_encoder(tiny_w8a8, x), "image", x),
                  "vae_decoder": (trace_vae_decoder(tiny_w8a8, z0), "latent", z0)}
    return {comp: (g, ref, name, inp) for comp, ((g, ref), name, inp) in traced.items()}


def pytest_configure(config):
    # the markers this suite uses, registered so a typo in one fails (--strict-markers in pytest.ini)
    for line in ("slow: minutes of work (sd21-sized models, calibration, many exports)",
                 "serve: starts a Triton Inference Server or a Ray cluster",
                 "gpu: needs a CUDA GPU (skips with the reason without one)"):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config, items):
    # every test under tests/serving/ starts a server or a cluster: `-m "not serve"` skips them all
    for item in items:
        if "serving" in item.path.parts:
            item.add_marker(pytest.mark.serve)
