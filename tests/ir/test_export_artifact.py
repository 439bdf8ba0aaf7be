"""passion-export end to end on the tiny preset: artifact layout and manifest, verification,
refusal of tampered or mismatched files, a W6A6 export, and passion-sr --model."""
import json
import shutil

import numpy as np
import pytest
import torch

from artifact_helpers import reseal
from passion_deploy.checkpoint import save_checkpoint
from passion_deploy.cli import export as export_cli
from passion_deploy.export import artifact
from passion_deploy.export.artifact import ArtifactError
from passion_deploy.export.exporter import export_artifact
from passion_deploy.export.ir.irfile import load_ir
from passion_deploy.export.targets.onnx.runtime import OnnxSR
from passion_deploy.export.verify import psnr, verify_artifact


@pytest.fixture(scope="module")
def w8_ckpt(tiny_w8a8, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-w8a8.safetensors"
    save_checkpoint(tiny_w8a8, path)
    return path


@pytest.fixture(scope="module")
def art8(w8_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "tiny"
    assert export_cli.main(["--ckpt", str(w8_ckpt), "--target", "onnx", "--out", str(out), "--isa", "portable",
                            "--verify", "--probes", "1", "--min-psnr", "0", "--no-progress"]) == 0
    return out


def test_artifact_layout_and_manifest(art8, w8_ckpt):
    m = json.loads((art8 / "manifest.json").read_text())
    assert m["format"] == artifact.FORMAT and m["format_version"] == artifact.FORMAT_VERSION and m["tool_version"]
    assert m["source_checkpoint"]["sha256"] == artifact.sha256_file(w8_ckpt)
    assert m["quant_config"]["unet"]["weight_bits"] == 8 and m["isa"] == "portable"
    assert set(m["components"]) == {"unet", "vae_encoder", "vae_decoder"}
    unet = m["components"]["unet"]
    assert unet["inputs"] == {"latent": [1, 4, 16, 16]} and unet["outputs"] == {"eps": [1, 4, 16, 16]}
    assert m["components"]["vae_encoder"]["inputs"] == {"image": [1, 3, None, None]}
    for comp in m["components"].values():
        for f in (comp["onnx"], comp["ir"]):
            assert m["files"][f]["bytes"] == (art8 / f).stat().st_size
            assert m["files"][f]["sha256"] == artifact.sha256_file(art8 / f)
        # int8 codes are a quarter of the FP32 bytes of the layers they replace
        assert comp["packed_weight_bytes"] * 4 == comp["quantized_layers_fp32_bytes"] <= comp["fp32_weight_bytes"]
    assert not list(art8.glob(".*")), "temporary files left behind"


def test_verify_json(art8):
    r = json.loads((art8 / "verify.json").read_text())
    for key in ("unet", "vae_encoder", "vae_decoder"):
        c = r["components"][key]
        assert {"max_abs_err", "psnr_vs_fakequant_db", "psnr_vs_fp_db"} <= set(c)
        # the artifact is as close to FP as the fake-quant model itself
        assert abs(c["psnr_vs_fp_db"] - c["fakequant_psnr_vs_fp_db"]) < 1.0
    assert {"max_abs_err", "psnr_vs_fakequant_db", "psnr_vs_fp_db"} <= set(r["end_to_end"])
    rows = r["layers"]["unet"]
    assert rows and {"layer", "op", "sqnr_db"} <= set(rows[0])
    assert {row["op"] for row in rows} == {"qconv", "qlinear", "qattention"}
    assert rows[0]["layer"] == "conv_in" and (rows[0]["sqnr_db"] == "inf" or rows[0]["sqnr_db"] > 80)
    assert r["passed"] is True and r["min_psnr_db"] == 0


def test_verify_threshold_sets_the_exit_status(art8, tmp_path, capsys):
    d = tmp_path / "a"
    shutil.copytree(art8, d)
    report, ok = verify_artifact(d, min_psnr=1000.0, n_probes=1, progress=False, layer_tables=False)
    assert not ok and report["passed"] is False


def _copy(art8, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(art8, d)
    return d


def test_tampered_file_is_refused(art8, tmp_path):
    d = _copy(art8, tmp_path)
    data = bytearray((d / "unet.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "unet.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"unet\.onnx: sha256 does not match the manifest"):
        OnnxSR(d)


def test_truncated_missing_and_foreign_files_are_refused(art8, tmp_path):
    d = _copy(art8, tmp_path)
    (d / "vae_decoder.ir.safetensors").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="manifest says"):
        OnnxSR(d)
    d = _copy(art8, tmp_path / "2")
    (d / "vae_encoder.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        OnnxSR(d)
    d = _copy(art8, tmp_path / "3")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        OnnxSR(d)
    m = json.loads((art8 / "manifest.json").read_text())
    m["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="version 99 is not supported"):
        OnnxSR(d)
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        OnnxSR(tmp_path / "nowhere")
    (d / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="not a passion-export artifact"):
        OnnxSR(d)


def test_vnni_artifact_is_refused_on_a_cpu_without_vnni(art8, tmp_path, monkeypatch):
    d = _copy(art8, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["isa"] = "vnni"
    reseal(d, m)  # as exported on a VNNI machine
    monkeypatch.setattr(artifact, "cpu_has_vnni", lambda: False)
    with pytest.raises(ArtifactError, match="without VNNI"):
        OnnxSR(d)


def test_cli_errors_are_one_sentence(w8_ckpt, tmp_path, capsys):
    assert export_cli.main(["--ckpt", str(w8_ckpt), "--target", "trt", "--out", str(tmp_path / "t"), "--max-batch", "0"]) == 2
    assert "--max-batch 0: an engine takes at least one tile" in capsys.readouterr().err
    assert export_cli.main(["--ckpt", str(tmp_path / "none.safetensors"), "--target", "onnx", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "none.safetensors: no such checkpoint file" in err and "Traceback" not in err
    assert export_cli.main(["--ckpt", str(w8_ckpt), "--target", "onnx", "--out", str(tmp_path / "o"), "--tile", "32x32"]) == 2
    assert "calibrated at 16x16" in capsys.readouterr().err
    assert export_cli.main(["--ckpt", str(w8_ckpt), "--target", "onnx", "--out", str(tmp_path / "o"), "--components", "vae"]) == 2
    assert "unknown 'vae'" in capsys.readouterr().err


def test_passion_sr_runs_the_artifact(art8, tmp_path, capsys):
    from PIL import Image

    from passion_deploy.cli import sr

    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "lr.png")
    assert sr.main(["-i", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"), "--model", str(art8)]) == 0
    assert "ONNX Runtime" in capsys.readouterr().out
    assert Image.open(tmp_path / "out" / "lr.png").size == (96, 80)
    assert sr.main(["-i", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out2"), "--model", str(tmp_path)]) == 2
    assert "manifest.json: missing" in capsys.readouterr().err


def test_w6a6_export(calib_batches, tmp_path):
    """W6A6 (UNet and VAE; first/last layers 8-bit): 6-bit codes pack 4 in 3 bytes in the IR,
    the 6x6 GEMMs use the fast uint8 x int8 kernel (exact: no int16 saturation), and every
    component is as close to FP as the fake-quant model."""
    from passion_deploy.calibrate import statistics_pass
    from passion_deploy.config import NAMED_CONFIGS
    from passion_deploy.export.fp_model import fp_copy
    from passion_deploy.models import build_pipeline
    from passion_deploy.quant import quantize_pipeline

    pipe = quantize_pipeline(build_pipeline("tiny"), NAMED_CONFIGS["w6a6"])
    statistics_pass(pipe, calib_batches, progress=False)
    ckpt = tmp_path / "w6.safetensors"
    save_checkpoint(pipe, ckpt)
    m = export_artifact(str(ckpt), tmp_path / "a6", isa="portable", progress=False, pipe=pipe)
    for comp, c in m["components"].items():
        g = load_ir(tmp_path / "a6" / c["ir"])
        six = [r for r in g.recipes.values() if hasattr(r, "weights") and r.w_bits == 6]
        eight = [r for r in g.recipes.values() if hasattr(r, "weights") and r.w_bits == 8]
        assert six and all(r.eight_bit for r in eight)
        # 4 codes in 3 bytes: 0.1875x the FP32 bytes of the 6-bit layers, a bit more with the 8-bit ones
        assert 0.1875 <= c["packed_weight_bytes"] / c["quantized_layers_fp32_bytes"] < 0.2
    model = __import__("onnx").load(str(tmp_path / "a6" / "unet.onnx"))
    weight_types = {i.data_type for i in model.graph.initializer if i.name.endswith(".w")}
    assert 3 in weight_types  # TensorProto.INT8: the 6-bit layers take the int8 kernel
    rt = OnnxSR(tmp_path / "a6")
    fp = fp_copy(pipe)
    x = calib_batches[1]
    with torch.no_grad():
        z = pipe.encode(x)
        z0 = pipe.denoise(z)
        for art, ref, fpo in [(rt.encode(x), z, fp.encode(x)), (rt.unet_eps(z), pipe.unet_eps(z), fp.unet_eps(z)),
                              (rt.decode(z0), pipe.decode(z0), fp.decode(z0))]:
            assert abs(psnr(art, fpo, False) - psnr(ref, fpo, False)) < 1.0


def test_dynamic_constants_artifact_runs_with_timestep_and_context(w8_ckpt, tiny_w8a8, calib_batches, tmp_path):
    """--dynamic-constants --components unet: the UNet keeps timestep/context inputs (the
    runtime feeds t=999 and the stored context); VAE components fall back to the checkpoint."""
    assert export_cli.main(["--ckpt", str(w8_ckpt), "--target", "onnx", "--out", str(tmp_path / "d"), "--isa", "portable",
                            "--components", "unet", "--dynamic-constants", "--no-progress"]) == 0
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert set(m["components"]["unet"]["inputs"]) == {"latent", "timestep", "context"}
    assert "context.safetensors" in m["files"]
    rt = OnnxSR(tmp_path / "d")
    with torch.no_grad():
        z = tiny_w8a8.encode(calib_batches[0])
        assert torch.equal(rt.encode(calib_batches[0]), z)  # not exported: the fake-quant encoder
        assert psnr(rt.unet_eps(z), tiny_w8a8.unet_eps(z), False) > 40


def test_one_export_with_verify_hashes_each_artifact_file_once(w8_ckpt, tmp_path, monkeypatch):
    """passion-export --verify (export, verification, latency comparison) reads each file's bytes
    for its sha256 once: the export seals them, and the Artifact it wrote is passed down."""
    import sys

    from passion_deploy import io_utils

    original = io_utils.sha256_file
    counts: dict[str, int] = {}

    def counting(path, *a, **kw):
        key = str(path)
        counts[key] = counts.get(key, 0) + 1
        return original(path, *a, **kw)

    for mod in list(sys.modules.values()):  # every module that bound the function by name
        if getattr(mod, "sha256_file", None) is original:
            monkeypatch.setattr(mod, "sha256_file", counting)
    monkeypatch.setattr(artifact, "_HASHES", {})
    out = tmp_path / "art"
    assert export_cli.main(["--ckpt", str(w8_ckpt), "--target", "onnx", "--out", str(out), "--isa", "portable",
                            "--components", "vae_decoder", "--verify", "--probes", "1", "--min-psnr", "0",
                            "--no-progress"]) == 0
    m = artifact.read_manifest(out)
    hashed = {k: n for k, n in counts.items() if k.startswith(str(out))}
    assert set(hashed) == {str(out / f) for f in m["files"]}  # every sealed file, and nothing else of the folder
    assert set(hashed.values()) == {1}, hashed


@pytest.mark.parametrize("edit, field", [(lambda m: m["pipeline"].update(sqrt_alpha=0.5), "pipeline.sqrt_alpha"),
                                         (lambda m: m.update(target="trt"), "target"),
                                         (lambda m: m.update(isa="vnni"), "isa"),
                                         (lambda m: m.pop("quant_config_name"), "quant_config_name")])
def test_an_edited_manifest_field_is_refused_by_name(art8, tmp_path, edit, field):
    d = _copy(art8, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError) as e:
        artifact.load(d)
    msg = str(e.value)
    assert f"manifest field '{field}' was" in msg and str(d / "manifest.json") in msg and "\n" not in msg


def test_an_older_format_and_a_manifest_without_what_its_target_needs_are_refused_in_one_sentence(art8, tmp_path):
    from passion_deploy.export import targets

    d = _copy(art8, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    reseal(d, {**m, "format_version": 2})
    with pytest.raises(ArtifactError, match=r"manifest\.json: artifact format version 2 is not supported \(this tool reads 3\)"):
        targets.open_artifact(d)
    reseal(d, {k: v for k, v in m.items() if k != "isa"})
    with pytest.raises(ArtifactError, match=r"manifest\.json: the manifest lacks 'isa', which the onnx target needs"):
        targets.open_artifact(d)
    comps = {n: {k: v for k, v in c.items() if k != "onnx"} for n, c in m["components"].items()}
    reseal(d, {**m, "components": comps})
    with pytest.raises(ArtifactError, match=r"component \w+ lacks 'onnx', which the onnx target needs"):
        targets.open_artifact(d)


def test_the_fp_copy_shares_the_pipelines_weights_and_moves_on_its_own(tiny_w8a8):
    """fp_copy (verify's "vs FP" model) shares every weight tensor with the fake-quant pipeline
    instead of copying it (a deep copy added 4.9 GB to the sd21 --verify, which peaked at 24.4 GB
    on a 24 GiB machine), through its own Parameter objects: converting the copy leaves the
    pipeline as it was, and the pipeline computes what it did before the copy."""
    from passion_deploy.export.fp_model import fp_copy
    from passion_deploy.quant.layers import QuantLayer

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = tiny_w8a8(x)
        fp = fp_copy(tiny_w8a8)
        assert torch.equal(tiny_w8a8(x), before)
    quant = {n: m for n, m in tiny_w8a8.unet.named_modules() if isinstance(m, QuantLayer)}
    plain = dict(fp.unet.named_modules())
    assert quant and all(plain[n].weight.data_ptr() == q.weight.data_ptr() for n, q in quant.items())
    assert not any(isinstance(m, QuantLayer) for m in fp.modules())
    fp.to(torch.float64)
    assert all(q.weight.dtype == torch.float32 for q in quant.values())
    assert all(p.dtype == torch.float32 for p in tiny_w8a8.parameters())
    with torch.no_grad():
        assert torch.equal(tiny_w8a8(x), before)
