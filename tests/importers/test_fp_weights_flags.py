"""--weights / --lora for checkpoints saved without FP weights, checked against what the checkpoint
records; foreign files given as --ckpt are recognised and sent to the right command (issue 14, item 3)."""
import json

import pytest
import torch
from safetensors import safe_open

from passion_deploy.calibrate import statistics_pass
from passion_deploy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from passion_deploy.cli import export as export_cli
from passion_deploy.config import NAMED_CONFIGS
from passion_deploy.models import build_pipeline
from passion_deploy.models.build import save_project_weights
from passion_deploy.quant import quantize_pipeline


@pytest.fixture(scope="module")
def files(tmp_path_factory, calib_batches):
    d = tmp_path_factory.mktemp("fpw")
    fp = build_pipeline("tiny", random_weights=7)  # weights that are not the bundled ones
    save_project_weights(fp.unet, fp.vae, d / "w7.safetensors")
    pipe = quantize_pipeline(build_pipeline("tiny", weights=d / "w7.safetensors"), NAMED_CONFIGS["w8a8"])
    statistics_pass(pipe, calib_batches, progress=False)
    save_checkpoint(pipe, d / "no_fp.safetensors")
    save_checkpoint(pipe, d / "with_fp.safetensors", include_fp_weights=True)
    return d


def export(args, capsys):
    rc = export_cli.main(args + ["--no-progress"])
    return rc, capsys.readouterr().err


def test_export_without_fp_weights_plus_weights_equals_export_with_them(files, tmp_path, capsys):
    common = ["--target", "onnx", "--isa", "portable", "--components", "vae_decoder"]
    assert export(["--ckpt", str(files / "no_fp.safetensors"), "--weights", str(files / "w7.safetensors"),
                   "--out", str(tmp_path / "a")] + common, capsys)[0] == 0
    assert export(["--ckpt", str(files / "with_fp.safetensors"), "--out", str(tmp_path / "b")] + common, capsys)[0] == 0
    ma, mb = (json.loads((tmp_path / x / "manifest.json").read_text()) for x in "ab")
    assert ma["files"]["vae_decoder.onnx"]["sha256"] == mb["files"]["vae_decoder.onnx"]["sha256"]
    ir = [safe_open(str(tmp_path / x / "vae_decoder.ir.safetensors"), "pt") for x in "ab"]
    assert ir[0].metadata() == ir[1].metadata() and set(ir[0].keys()) == set(ir[1].keys())
    assert all(torch.equal(ir[0].get_tensor(k), ir[1].get_tensor(k)) for k in ir[0].keys())


def test_other_weights_are_refused_by_name(files, tmp_path, capsys):
    rc, err = export(["--ckpt", str(files / "no_fp.safetensors"), "--target", "onnx", "--out", str(tmp_path / "c")], capsys)
    assert rc == 2 and "calibrated on FP weights 'file:w7.safetensors:sha256:" in err and "tiny_fp32" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="carries its own FP weights"):
        load_checkpoint(files / "with_fp.safetensors", weights=files / "w7.safetensors")


def test_a_lora_is_recorded_with_its_hash_and_a_different_one_refused(files, tmp_path, calib_batches):
    def lora_file(path, seed):
        g = torch.Generator().manual_seed(seed)
        conv = build_pipeline("tiny", weights=files / "w7.safetensors").unet.conv_in
        r = 2
        sd = {"conv_in.lora_A.default_encoder.weight": torch.randn(r, conv.in_channels, 3, 3, generator=g) * 0.01,
              "conv_in.lora_B.default_encoder.weight": torch.randn(conv.out_channels, r, 1, 1, generator=g) * 0.01}
        torch.save({"state_dict_unet": sd, "state_dict_vae": {}}, path)
        return path

    a, b = lora_file(tmp_path / "a.pkl", 1), lora_file(tmp_path / "b.pkl", 2)
    pipe = quantize_pipeline(build_pipeline("tiny", weights=files / "w7.safetensors", lora=a), NAMED_CONFIGS["w8a8"])
    statistics_pass(pipe, calib_batches[:1], progress=False)
    save_checkpoint(pipe, tmp_path / "lora.safetensors")
    ok = load_checkpoint(tmp_path / "lora.safetensors", weights=files / "w7.safetensors", lora=a)
    assert torch.equal(ok.unet.conv_in.weight, pipe.unet.conv_in.weight)
    with pytest.raises(CheckpointError, match=r"\+lora:a\.pkl:sha256:.* but the weights given are .*\+lora:b\.pkl"):
        load_checkpoint(tmp_path / "lora.safetensors", weights=files / "w7.safetensors", lora=b)


@pytest.mark.parametrize("content, says", [
    ({"model.model.input_blocks.1.1.proj_in.scale_factor": torch.ones(1, 4)}, "PassionSR quantization checkpoint (.pth); turn it into one with passion-import"),
    ({"state_dict": {"model.diffusion_model.out.2.weight": torch.ones(1)}}, "an SD checkpoint (FP weights); give it as --weights"),
    ({"unet_state_dict": {}, "vae_state_dict": {}, "rank_unet": 4}, "an OSEDiff LoRA; give it as --lora"),
])
def test_foreign_files_as_ckpt_name_the_command_that_takes_them(tmp_path, capsys, content, says):
    path = tmp_path / "foreign.pth"
    torch.save(content, path)
    rc, err = export(["--ckpt", str(path), "--target", "onnx", "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and f"{path}: " in err and says in err and "Traceback" not in err
