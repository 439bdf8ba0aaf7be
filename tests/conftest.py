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


def stats_calibrated_tiny(calib_batches):
    """A statistics-calibrated W8A8 (UNet+VAE) fake-quant tiny pipeline."""
    from passion_deploy.calibrate import statistics_pass
    from passion_deploy.config import NAMED_CONFIGS
    from passion_deploy.models import build_pipeline
    from passion_deploy.quant import quantize_pipeline

    pipe = quantize_pipeline(build_pipeline("tiny"), NAMED_CONFIGS["w8a8"])
    statistics_pass(pipe, calib_batches, progress=False)
    return pipe


def trace_components(pipe, x):
    """Each component of `pipe` traced to the deploy IR on the reference's own input:
    {component: (graph, fake-quant output, input name, input)}."""
    from passion_deploy.export.ir.trace import trace_unet, trace_vae_decoder, trace_vae_encoder

    with torch.no_grad():
        z = pipe.encode(x)
        z0 = pipe.denoise(z)
        traced = {"unet": (trace_unet(pipe, z), "latent", z), "vae_encoder": (trace_vae_encoder(pipe, x), "image", x),
                  "vae_decoder": (trace_vae_decoder(pipe, z0), "latent", z0)}
    return {comp: (g, ref, name, inp) for comp, ((g, ref), name, inp) in traced.items()}


@pytest.fixture(scope="session")
def tiny_w8a8(calib_batches):
    """A statistics-calibrated W8A8 (UNet+VAE) fake-quant tiny pipeline, shared read-only."""
    return stats_calibrated_tiny(calib_batches)


@pytest.fixture(scope="session")
def tiny_traced(tiny_w8a8, calib_batches):
    """Each tiny W8A8 component traced to the deploy IR (trace_components), shared read-only."""
    return trace_components(tiny_w8a8, calib_batches[0])


@pytest.fixture(scope="module")
def private_tiny_traced(calib_batches):
    """tiny_traced built afresh for one module: in the whole suite the shared graphs, after other
    tests used them, compiled to 236 of 238 int8 GEMMs in OpenVINO where fresh ones give 238
    (measured; the test that counts them takes these)."""
    return trace_components(stats_calibrated_tiny(calib_batches), calib_batches[0])


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
