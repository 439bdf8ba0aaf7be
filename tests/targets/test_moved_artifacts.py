"""Artifacts run from their own folder alone: copied elsewhere with the checkpoint they were
exported from gone, passion-sr --model still runs them (issue 14, item 4)."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from passion_deploy.checkpoint import save_checkpoint
from passion_deploy.cli.sr import main as sr_main
from passion_deploy.export import artifact
from passion_deploy.export.exporter import export_artifact
from passion_deploy.export.targets import open_artifact


@pytest.fixture
def ckpt(tiny_w8a8, tmp_path):
    path = tmp_path / "src" / "w8.safetensors"
    path.parent.mkdir()
    save_checkpoint(tiny_w8a8, path)  # no FP weights: the tiny preset's own come from the installation
    return path


def move_away(folder, tmp_path, ckpt):
    """Copy the artifact elsewhere, delete the original and the checkpoint it came from."""
    moved = tmp_path / "elsewhere" / "art"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)
    shutil.rmtree(ckpt.parent)
    return moved


def lr_image(path):
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_a_full_onnx_artifact_runs_from_a_copy_and_names_the_missing_reference(ckpt, tiny_w8a8, tmp_path, capsys):
    m = export_artifact(str(ckpt), tmp_path / "art", "onnx", isa="portable", progress=False, pipe=tiny_w8a8)
    assert "copy" not in m["source_checkpoint"]  # every component is in the artifact: nothing else to run
    moved = move_away(tmp_path / "art", tmp_path, ckpt)
    out = tmp_path / "out"
    assert sr_main(["--model", str(moved), "-i", str(lr_image(tmp_path / "lr.png")), "-o", str(out)]) == 0
    assert Image.open(out / "lr.png").size == (64, 64)
    with pytest.raises(artifact.ArtifactError, match="is not on this machine, and the artifact carries no copy"):
        open_artifact(moved).reference_pipeline()


def test_a_partial_artifact_carries_the_pipeline_for_what_it_lacks(ckpt, tiny_w8a8, tmp_path):
    m = export_artifact(str(ckpt), tmp_path / "art", "onnx", ("unet",), isa="portable", progress=False, pipe=tiny_w8a8)
    assert m["source_checkpoint"]["copy"] in m["files"]
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    before = open_artifact(tmp_path / "art").decode(z)  # the decoder runs on the source pipeline
    moved = move_away(tmp_path / "art", tmp_path, ckpt)
    rt = open_artifact(moved)
    assert torch.equal(rt.decode(z), before)
    with torch.no_grad():
        assert torch.equal(before, tiny_w8a8.decode(z))


def test_a_triton_artifact_runs_from_a_copy(ckpt, tiny_w8a8, tmp_path):
    m = export_artifact(str(ckpt), tmp_path / "art", "triton", ("vae_decoder",), progress=False, pipe=tiny_w8a8)
    assert m["source_checkpoint"]["copy"] == "source.safetensors"
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    before = open_artifact(tmp_path / "art").decode(z)
    moved = move_away(tmp_path / "art", tmp_path, ckpt)
    assert torch.equal(open_artifact(moved).decode(z), before)
