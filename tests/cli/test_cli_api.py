"""The CLIs are shells over the Python API: the model each command runs (or refuses) is the one
passion_deploy.api hands it. Each test replaces an API function and watches the command use it,
so a command that went around the API (to the runner, the targets or the harness) fails here."""
import socket

import numpy as np
import pytest
from PIL import Image

import passion_deploy.api as api
from passion_deploy.errors import PassionError


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir()
    Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)).save(path)
    return path


def refuse(what: str):
    """An API function that refuses, as a bad model would: the command must say its sentence."""
    def refused(*args, **kwargs):
        raise PassionError(f"{what} refused by the api")
    return refused


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_passion_sr_runs_the_upscaler_the_api_builds(image, tmp_path, monkeypatch):
    from passion_deploy.cli.sr import main

    real, built, runs = api.upscaler, [], []

    def spy(*args, **kwargs):
        up = real(*args, **kwargs)
        run = up.upscale_tensor
        up.upscale_tensor = lambda *a, **k: runs.append(1) or run(*a, **k)
        built.append((args, up))
        return up

    monkeypatch.setattr(api, "upscaler", spy)
    assert main(["-i", str(image), "-o", str(tmp_path / "out"), "--backend", "fp32"]) == 0
    assert [a[0] for a, _ in built] == ["fp32"] and runs == [1]
    assert Image.open(tmp_path / "out" / "a.png").size == (32, 32)


@pytest.mark.parametrize("flags, function", [(["--model", "{dir}"], "open"),
                                             (["--backend", "fp16"], "upscaler")])
def test_passion_sr_takes_its_model_from_the_api(image, tmp_path, monkeypatch, capsys, flags, function):
    from passion_deploy.cli.sr import main

    monkeypatch.setattr(api, function, refuse(function))
    argv = ["-i", str(image), "-o", str(tmp_path / "out")] + [f.format(dir=tmp_path) for f in flags]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"passion-sr: {function} refused by the api"


def test_passion_sr_compare_columns_come_from_the_api(image, tmp_path, monkeypatch, capsys):
    """The FP32 column is the main model's fp32_reference, the others api.upscaler / api.open."""
    from passion_deploy.cli.sr import main

    monkeypatch.setattr(api.Upscaler, "fp32_reference", refuse("fp32_reference"))
    assert main(["-i", str(image), "-o", str(tmp_path / "out"), "--backend", "fakequant", "--ckpt", "tiny-w8a8",
                 "--compare"]) == 2
    assert capsys.readouterr().err.strip() == "passion-sr: fp32_reference refused by the api"


def test_passion_batch_checks_the_model_the_api_opens(image, tmp_path, monkeypatch, capsys):
    from passion_deploy.cli import batch

    monkeypatch.setattr(api, "open", refuse("open"))
    assert batch.main(["--model", str(tmp_path), "-i", str(image), "-o", str(tmp_path / "out"), "--tile-overlap", "1"]) == 2
    assert capsys.readouterr().err.strip() == "passion-batch: open refused by the api"


def test_passion_serve_loads_the_model_the_api_opens(tmp_path, monkeypatch, capsys):
    from passion_deploy.cli import serve
    from passion_deploy.serving import repository

    monkeypatch.setattr(api, "upscaler", refuse("upscaler"))
    # a command that went around the API would go on to start a server: stopped here, by another sentence
    monkeypatch.setattr(repository, "write_serving_repository", refuse("a server's repository (the API was bypassed)"))
    http, grpc, metrics = free_ports(3)
    assert serve.main(["--backend", "fp32", "--http-port", str(http), "--grpc-port", str(grpc),
                       "--metrics-port", str(metrics)]) == 2
    assert capsys.readouterr().err.strip() == "passion-serve: upscaler refused by the api"


def test_passion_bench_measures_through_the_api(tmp_path, monkeypatch, capsys):
    from passion_deploy.cli import bench

    seen = []

    def benchmark(*args, **kwargs):
        seen.append((args, kwargs))
        raise PassionError("benchmark refused by the api")

    monkeypatch.setattr(api, "benchmark", benchmark)
    assert bench.main(["--model", str(tmp_path), "--runs", "7", "--device", "cpu", "--no-fidelity"]) == 2
    assert capsys.readouterr().err.strip() == "passion-bench: benchmark refused by the api"
    (args, kwargs), = seen
    assert args[0] == str(tmp_path) and args[2] == 7 and kwargs["device"] == "cpu" and kwargs["fidelity"] is False


def test_passion_demo_runs_the_upscalers_the_api_builds(tmp_path, monkeypatch, capsys):
    """FP32 and fake-quant both come from api.upscaler, on the CPU, with the photo shown left out of
    the calibration (the fake-quant one is refused here: the FP32 run is proof enough that it runs)."""
    from passion_deploy.calibrate.data import bundled_photos
    from passion_deploy.cli import demo

    photos = bundled_photos()
    if not photos:
        pytest.skip("no bundled photos in this checkout")
    real, asked = api.upscaler, []

    def spy(backend, *args, **kwargs):
        asked.append((backend, kwargs))
        if backend == "fakequant":
            raise PassionError("upscaler refused by the api")
        return real(backend, *args, **kwargs)

    monkeypatch.setattr(api, "upscaler", spy)
    assert demo.main(["-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "passion-demo: upscaler refused by the api"
    assert [b for b, _ in asked] == ["fp32", "fakequant"]
    assert all(k["calib_exclude"] == (photos[0].stem,) and k["device"] == "cpu" for _, k in asked)
    assert (tmp_path / f"{photos[0].stem}_fp32.png").exists()

