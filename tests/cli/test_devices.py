"""--device on every command that builds a PyTorch pipeline: auto picks the GPU when there is one,
cuda without one is refused in one sentence, and runtimes return host tensors wherever they run."""
import pytest
import torch

from passion_deploy.devices import DeviceError, cuda_available, resolve_device

NO_GPU = not cuda_available()


def test_auto_is_the_gpu_when_there_is_one():
    assert resolve_device("auto").type == ("cuda" if cuda_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec, says", [("gpu", "choose auto, cpu, cuda or cuda:N"), ("cuda:x", "choose auto")])
def test_a_bad_device_is_named(spec, says):
    with pytest.raises(DeviceError, match=says):
        resolve_device(spec)


@pytest.mark.skipif(not NO_GPU, reason="checks the refusal on a machine without a CUDA GPU")
@pytest.mark.parametrize("cmd", ["sr", "export", "calibrate", "bench"])
def test_cuda_without_a_gpu_is_one_sentence_on_every_command(cmd, tmp_path, capsys):
    from passion_deploy import assets
    from passion_deploy.cli import bench, calibrate, export, sr

    argv = {"sr": (sr.main, ["-i", str(tmp_path), "-o", str(tmp_path / "o"), "--device", "cuda"]),
            "export": (export.main, ["--ckpt", "tiny-w8a8", "--target", "onnx", "--out", str(tmp_path / "a"),
                                     "--device", "cuda:0"]),
            "calibrate": (calibrate.main, ["--config", str(assets.path("configs/tiny-w8a8.yaml")), "--preset", "tiny",
                                           "--out", str(tmp_path / "c.safetensors"), "--device", "cuda"]),
            "bench": (bench.main, ["--model", str(tmp_path), "--device", "cuda"])}[cmd]
    assert argv[0](argv[1]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU is visible here" in err[0] and "use --device cpu or auto" in err[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "c.safetensors").exists()


def test_a_pipeline_runtime_moves_and_still_returns_host_tensors(tiny_w8a8):
    import copy

    from passion_deploy.export.runtime import PipelineSR

    rt = PipelineSR(copy.deepcopy(tiny_w8a8), "fakequant", tiny_w8a8.latent_tile).to(resolve_device("auto"))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = rt.decode(z)
    assert out.device.type == "cpu" and rt.device == resolve_device("auto")
    with torch.no_grad():
        torch.testing.assert_close(out, tiny_w8a8.decode(z), rtol=1e-4, atol=1e-4)
