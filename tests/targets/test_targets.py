"""The Target contract: the registry names the targets, and a new target is one module behind
one registry line: export_artifact, the manifest and open_artifact reach it without any other
change (here a test target that ships the IR and runs the source pipeline)."""
import sys
import types

import pytest
import torch

from passion_deploy.export import artifact, targets
from passion_deploy.export.exporter import export_artifact
from passion_deploy.export.runtime import ArtifactRuntime
from passion_deploy.models.components import component


class EchoTarget(targets.Target):
    name = "echo"
    help = "a test target: a note per component, run by the fake-quant source pipeline"

    def lower(self, job, name, graph):
        (job.out_dir / f"{name}.echo.txt").write_text(f"{len(graph.nodes)} nodes\n")
        return [f"{name}.echo.txt"], {"echo_nodes": len(graph.nodes)}

    def manifest_fields(self, job):
        return {"echo": {"tile": list(job.tile)}}

    def open(self, art, timing=False, **kwargs):
        return EchoSR(art)


class EchoSR(ArtifactRuntime):
    contract = EchoTarget()

    def artifact_fn(self, name):
        return component(name).fn(self.source_pipeline())


@pytest.fixture
def echo_registered(monkeypatch):
    mod = types.ModuleType("echo_target_for_tests")
    mod.TARGET = EchoSR.contract
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(targets.REGISTRY, "echo", mod.__name__)  # the one registry line


def test_registry_lists_the_targets_and_refuses_unknown_ones_by_name():
    assert targets.target_names() == ("onnx", "openvino", "triton", "trt")
    assert {targets.get_target(n).name for n in targets.target_names()} == set(targets.target_names())
    with pytest.raises(artifact.ArtifactError, match="target 'tflite' has no implementation"):
        targets.get_target("tflite")


def test_a_new_target_is_one_registry_line(echo_registered, tiny_w8a8, tmp_path):
    from passion_deploy.checkpoint import save_checkpoint

    ckpt = tmp_path / "w8.safetensors"
    save_checkpoint(tiny_w8a8, ckpt)
    m = export_artifact(str(ckpt), tmp_path / "art", "echo", ("vae_decoder",), progress=False, pipe=tiny_w8a8)
    assert m["target"] == "echo" and m["echo"] == {"tile": list(tiny_w8a8.latent_tile)}
    comp = m["components"]["vae_decoder"]
    assert comp["echo_nodes"] > 0 and {"vae_decoder.ir.safetensors", "vae_decoder.echo.txt"} <= set(m["files"])
    rt = targets.open_artifact(tmp_path / "art")
    assert isinstance(rt, EchoSR)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rt.decode(z), tiny_w8a8.decode(z))


def test_an_artifact_of_an_unregistered_target_is_refused_by_name(echo_registered, tiny_w8a8, tmp_path, monkeypatch):
    from passion_deploy.checkpoint import save_checkpoint

    ckpt = tmp_path / "w8.safetensors"
    save_checkpoint(tiny_w8a8, ckpt)
    export_artifact(str(ckpt), tmp_path / "art", "echo", ("vae_decoder",), progress=False, pipe=tiny_w8a8)
    monkeypatch.delitem(targets.REGISTRY, "echo")
    with pytest.raises(artifact.ArtifactError, match="target 'echo' has no runtime in this version"):
        targets.open_artifact(tmp_path / "art")
