"""The CLIs are shells over the Python API: the model each command runs (or refuses) is the one
passion_deploy.api hands it. Each test replaces an API function and watches the command use it,
so a command that went around the API (to the runner, the targets or the harness) fails here."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import passion_deploy.api as api
from passion_deploy.errors import PassionError
from serving_helpers import free_ports, tiny_onnx_artifact


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir()
    Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)).save(path)
    return path


def refuse(what: str, calls: list | None = None):
    """An API function that refuses, as a bad model would: the command must say its sentence.
    With `calls`, each call's (args, kwargs) is kept there first, so a test can check what it was asked."""
    def refused(*args, **kwargs):
        if calls is not None:
            calls.append((args, kwargs))
        raise PassionError(f"{what} refused by the api")
    return refused


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
    monkeypatch.setattr(api, "benchmark", refuse("benchmark", seen))
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


@pytest.fixture
def fake_export(tmp_path_factory, monkeypatch):
    """api.export_model replaced by a copy of the session's tiny onnx artifact: what passion-export
    does after the export is then the API's verification and benchmark alone. Returns the calls."""
    from passion_deploy.export.artifact import load

    shared, calls = tiny_onnx_artifact(tmp_path_factory), []

    def export_model(ckpt, target, out, *args, **kwargs):
        calls.append(("export_model", ckpt, target))
        shutil.copytree(shared, out)
        return load(out)

    monkeypatch.setattr(api, "export_model", export_model)
    return calls


def test_passion_export_verifies_and_times_through_the_api(fake_export, tmp_path, monkeypatch, capsys):
    from passion_deploy.cli import export

    def verify_artifact(art, min_psnr, probes, progress, device):
        fake_export.append(("verify_artifact", Path(art.dir), min_psnr, probes))
        return {"probes": "1 probe (the api's)", "passed": True}

    monkeypatch.setattr(api, "verify_artifact", verify_artifact)
    monkeypatch.setattr(api, "verification_lines", lambda report: [f"  judged by the api on {report['probes']}"])
    monkeypatch.setattr(api, "benchmark", refuse("benchmark"))
    out = tmp_path / "art"
    assert export.main(["--ckpt", "tiny-w8a8", "--target", "onnx", "--out", str(out), "--verify", "--probes", "1",
                        "--no-progress"]) == 2
    said = capsys.readouterr()
    assert said.err.strip() == "passion-export: the latency comparison could not run: benchmark refused by the api"
    assert "  judged by the api on 1 probe (the api's)" in said.out.splitlines()
    assert fake_export == [("export_model", "tiny-w8a8", "onnx"), ("verify_artifact", out, None, 1)]


def test_passion_export_says_the_apis_verification_refusal(fake_export, tmp_path, monkeypatch, capsys):
    from passion_deploy.cli import export

    monkeypatch.setattr(api, "verify_artifact", refuse("verify_artifact"))
    assert export.main(["--ckpt", "tiny-w8a8", "--target", "onnx", "--out", str(tmp_path / "art"), "--verify",
                        "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == "passion-export: verification could not run: verify_artifact refused by the api"


SEED = Path(__file__).parents[1] / "data" / "passionsr_ptq_seed.yaml"


def test_passion_calibrate_calibrates_through_the_api(tmp_path, monkeypatch, capsys):
    from passion_deploy.cli import calibrate

    seen = []
    monkeypatch.setattr(api, "calibration", refuse("calibration", seen))
    out = str(tmp_path / "c.safetensors")
    assert calibrate.main(["--config", str(SEED), "--preset", "tiny", "--out", out, "--device", "cpu", "--stats-only"]) == 2
    assert capsys.readouterr().err.strip() == "passion-calibrate: calibration refused by the api"
    (args, kwargs), = seen
    assert args[:3] == (str(SEED), out, "tiny") and args[6] == "cpu" and kwargs["stats_only"] is True


def test_passion_calibrate_runs_the_calibration_the_api_prepared(tmp_path, monkeypatch, capsys):
    """The command prints what api.calibration read (before any work), then runs that object."""
    import yaml

    from passion_deploy.cli import calibrate

    cali = tmp_path / "cali"
    cali.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(cali / "0.png")
    cfg = yaml.safe_load(SEED.read_text())
    cfg.update(cali_img_path=str(cali), device="cpu")
    cfg["basic_config"].update(process_size=32)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(api.Calibration, "run", refuse("Calibration.run"))
    out = tmp_path / "c.safetensors"
    assert calibrate.main(["--config", str(tmp_path / "cfg.yaml"), "--preset", "tiny", "--out", str(out), "--no-progress"]) == 2
    said = capsys.readouterr()
    assert said.err.strip() == "passion-calibrate: Calibration.run refused by the api"
    assert said.out.startswith("passion-calibrate: ") and "1 calibration images at 32 px, device cpu" in said.out
    assert not out.exists()
