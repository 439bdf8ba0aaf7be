"""One conformance suite over the target registry: every registered target exports the same
small artifact (the session's tiny W8A8 calibrated at 64 px, its VAE decoder), which opens, runs
close to the fake-quant model, passes --verify, has a serve spec that names only sealed files,
reads as a report, and runs from a copy in another folder. What a target cannot run on this
machine (TensorRT engines, Triton kernels without a GPU) is skipped with the reason the target
itself gives; what it can run instead here is tested (trt's Q/DQ graph in ONNX Runtime, the
kernels in Triton's interpreter)."""
import dataclasses
import shutil

import pytest
import torch

from passion_deploy.errors import PassionError
from passion_deploy.export import artifact, targets
from passion_deploy.export.targets.openvino import openvino_missing
from passion_deploy.export.verify import psnr, verify_artifact

COMPONENT = "vae_decoder"  # conftest.CONFORMANCE_COMPONENTS: a partial artifact also carries its source pipeline
TARGETS = targets.target_names()


def _z(rt):
    """A latent at the artifact's tile (the trt graphs take exactly that shape)."""
    return torch.randn(1, 4, *rt.latent_tile, generator=torch.Generator().manual_seed(0))


def _art(exported_artifact, name):
    if name == "triton":  # its runtime needs Triton (the interpreter without a GPU)
        pytest.importorskip("triton", reason="the triton target runs on Triton (pip install triton)")
    if name == "openvino" and openvino_missing():
        pytest.skip("the openvino target needs OpenVINO (pip install 'passion-deploy[openvino]')")
    return exported_artifact(name)


@pytest.mark.parametrize("name", TARGETS)
def test_export_seals_what_the_target_reads(exported_artifact, name):
    art = artifact.load(_art(exported_artifact, name))
    tgt = targets.get_target(name)
    m = art.manifest
    assert m["target"] == name and list(m["components"]) == [COMPONENT]
    assert all(k in m for k in tgt.manifest_needs)
    assert all(m["components"][COMPONENT].get(k) for k in tgt.component_needs)
    assert m["source_checkpoint"]["copy"] in m["files"]  # a partial artifact runs its other parts on its own copy
    assert set(m[artifact.SEAL]) >= {"target", "pipeline.sqrt_alpha", f"components.{COMPONENT}"}
    report = targets.export_report(m)
    assert isinstance(report, targets.ExportReport) and report.summary.startswith(name)


@pytest.mark.parametrize("name", TARGETS)
def test_options_are_a_dataclass_and_an_unknown_one_is_refused_by_name(name):
    tgt = targets.get_target(name)
    assert dataclasses.is_dataclass(tgt.options) and tgt.make_options({}) == tgt.options()
    with pytest.raises(PassionError, match=f"the {name} target has no option 'nonsense'"):
        tgt.resolve_options({"nonsense": 1})


@pytest.mark.parametrize("name", TARGETS)
def test_open_runs_the_component_close_to_the_fake_quant_model(exported_artifact, tiny_w8a8, name):
    rt = targets.open_artifact(_art(exported_artifact, name))
    assert rt.target == name and rt.backend == name and rt.artifact.target == name
    z = _z(rt)
    with torch.no_grad():
        ref = tiny_w8a8.decode(z)
    out = rt.decode(z)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert psnr(out.clamp(0, 1), ref.clamp(0, 1), True) > 40


@pytest.mark.parametrize("name", TARGETS)
def test_verify_passes(exported_artifact, name):
    report, ok = verify_artifact(_art(exported_artifact, name), n_probes=1, progress=False, layer_tables=False)
    assert ok and report["target"] == name
    db = report["components"][COMPONENT]["psnr_vs_fakequant_db"]
    assert db == "inf" or db >= 45


@pytest.mark.parametrize("name", TARGETS)
def test_serve_spec_names_only_sealed_files(exported_artifact, name):
    art = artifact.load(_art(exported_artifact, name))
    spec = targets.serve_spec(art)
    assert isinstance(spec, targets.ServeSpec) and spec.max_batch >= 1
    if spec.components is None:  # served only in-process (the Python backend runs the artifact's runtime)
        return
    assert set(spec.components) == set(art.manifest["components"])
    for model in spec.components.values():
        assert model.files and set(model.files) <= set(art.manifest["files"])
        assert "latent" in model.inputs and len(model.inputs["latent"]) == 4


@pytest.mark.parametrize("name", TARGETS)
def test_a_moved_artifact_runs_without_its_checkpoint(exported_artifact, conformance_ckpt, tmp_path, name):
    src = _art(exported_artifact, name)
    rt = targets.open_artifact(src)
    before = rt.decode(_z(rt))
    moved = tmp_path / "elsewhere" / "art"
    shutil.copytree(src, moved)
    hidden = conformance_ckpt.with_name(conformance_ckpt.name + ".away")
    conformance_ckpt.rename(hidden)  # the checkpoint it was exported from is gone
    try:
        rt = targets.open_artifact(moved)
        assert rt.dir == moved and torch.equal(rt.decode(_z(rt)), before)
    finally:
        hidden.rename(conformance_ckpt)


@pytest.mark.parametrize("name", TARGETS)
def test_timing_opens_where_it_says_something(exported_artifact, name):
    """passion-bench's way in: where the target's report says timing here says nothing (no
    engines, no GPU), skip with that reason; elsewhere the artifact's own variant is timed first."""
    art = artifact.load(_art(exported_artifact, name))
    why = targets.export_report(art.manifest).no_timing
    if why:
        pytest.skip(f"{name}: {why}")
    rt = targets.open_for_timing(art)
    variants = rt.timing_variants(COMPONENT, _z(rt))
    assert variants and tuple(variants[0].x.shape[-2:]) == rt.latent_tile
    out = variants[0].load()(variants[0].x)  # what the harness times: a session's outputs or a tensor
    out = out[0] if isinstance(out, list) else out
    assert tuple(out.shape) == (1, 3, *(rt.vae_factor * t for t in rt.latent_tile))
