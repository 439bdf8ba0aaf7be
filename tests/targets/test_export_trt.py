"""The trt target end to end on a machine without TensorRT (the Q/DQ ONNX written, rule-checked,
verified in ONNX Runtime, exit status 3 naming what is missing), the engine checks that run
without a GPU, the FP16 graph copies engines are built from, and, where TensorRT and a GPU
exist, the engines themselves."""
import json
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from artifact_helpers import reseal
from passion_deploy.cli import export as export_cli
from passion_deploy.export import artifact
from passion_deploy.export.targets.trt import build as trt_build
from passion_deploy.export.targets.trt.fp16 import to_fp16
from passion_deploy.export.qdq.rules import qdq_violations
from passion_deploy.export.onnx_graph import session
from passion_deploy.export.targets import open_artifact
from passion_deploy.export.targets.trt.runtime import QdqOnnxSR

HAVE_ENGINES = not trt_build.missing_for_engines()


@pytest.fixture(scope="module")
def trt_dir(tmp_path_factory):
    """tiny-w8a8's VAE decoder through --target trt --verify on a machine that lacks TensorRT."""
    out = tmp_path_factory.mktemp("trt") / "art"
    mp = pytest.MonkeyPatch()
    mp.setattr(trt_build, "missing_for_engines", lambda: ["TensorRT"])
    try:
        import io
        from contextlib import redirect_stderr

        err = io.StringIO()
        with redirect_stderr(err):
            rc = export_cli.main(["--ckpt", "tiny-w8a8", "--target", "trt", "--out", str(out), "--components", "vae_decoder",
                                  "--verify", "--probes", "1", "--no-progress"])
    finally:
        mp.undo()
    return out, rc, err.getvalue()


def test_without_tensorrt_the_qdq_onnx_is_written_verified_and_exit_is_3(trt_dir):
    out, rc, err = trt_dir
    assert rc == 3
    last = err.strip().splitlines()[-1]
    assert "built no engines" in last and "lacks TensorRT" in last and "pip install tensorrt pycuda" in last
    m = artifact.read_manifest(out)
    assert m["target"] == "trt" and m["engines"] is None and m["engines_missing"] == ["TensorRT"]
    c = m["components"]["vae_decoder"]
    assert c["onnx"] == "vae_decoder.qdq.onnx" and c["onnx"] in m["files"]
    assert c["fixed_input_shapes"]["latent"] == [1, 4] + m["pipeline"]["latent_tile"]
    model = onnx.load(str(out / c["onnx"]))
    assert qdq_violations(model) == []
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == c["fixed_input_shapes"]["latent"]
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] and report["target"] == "trt"
    assert report["components"]["vae_decoder"]["psnr_vs_fakequant_db"] >= 45


def test_without_engines_the_runtime_is_the_qdq_graph_at_its_fixed_tile(trt_dir):
    out = trt_dir[0]
    rt = open_artifact(out)
    assert isinstance(rt, QdqOnnxSR) and rt.fixed_vae_latent_tile == rt.latent_tile
    z = torch.randn(1, 4, *rt.latent_tile)
    img = rt.decode(z)
    assert img.shape == (1, 3, rt.latent_tile[0] * rt.vae_factor, rt.latent_tile[1] * rt.vae_factor)
    with pytest.raises(ValueError, match="fixed"):
        rt.decode(torch.randn(1, 4, 8, 8))


def test_missing_tensorrt_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert trt_build.missing_for_engines()[0] == "TensorRT"


def test_engines_built_elsewhere_are_refused_with_what_differs(trt_dir, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "moved"
    shutil.copytree(trt_dir[0], out)
    m = json.loads((out / "manifest.json").read_text())
    m["engines"] = {"vae_decoder": {"int8": {"engine": "vae_decoder.int8.engine"}, "fp16": {"engine": "vae_decoder.fp16.engine"}}}
    m["tensorrt"] = {"version": "11.4.0.106", "gpu": "NVIDIA H100 80GB HBM3", "float_precision": "fp16", "max_batch": 1}
    reseal(out, m)  # as exported on that machine
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.0.1"))
    monkeypatch.setattr(trt_build, "missing_for_engines", lambda: [])
    monkeypatch.setattr(trt_build, "gpu_name", lambda: "NVIDIA H200")
    with pytest.raises(artifact.ArtifactError, match=r"version 11\.4\.0\.106 \(here: 10\.0\.1\) and gpu NVIDIA H100"):
        open_artifact(out)


def test_fp16_copy_types_every_float_but_resize_scales_and_keeps_fp32_io():
    """The FP16 baseline engine's graph: tiny-w8a8's VAE decoder traced without quantization."""
    from passion_deploy.checkpoint import load_checkpoint
    from passion_deploy.export.targets.onnx.lower import lower_graph
    from passion_deploy.export.ir.trace import trace_vae_decoder

    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        g, ref = trace_vae_decoder(load_checkpoint("tiny-w8a8"), z, quantized=False)
    model = lower_graph(g)
    m16 = to_fp16(model)
    onnx.checker.check_model(m16, full_check=True)  # strict type inference: no FP32/FP16 mix left
    resize_scales = {n.input[2] for n in m16.graph.node if n.op_type == "Resize"}
    floats = {t.name: t.data_type for t in m16.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    assert resize_scales and all(floats[n] == TensorProto.FLOAT for n in resize_scales)
    assert all(dt == TensorProto.FLOAT16 for n, dt in floats.items() if n not in resize_scales)
    assert m16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    y16 = session(m16.SerializeToString()).run(None, {"latent": z.numpy()})[0]
    assert y16.dtype == np.float32
    assert 10 * np.log10(1.0 / float(((np.clip(y16, 0, 1) - ref.clamp(0, 1).numpy()) ** 2).mean())) > 35


def test_fp16_copy_refuses_scales_fp16_cannot_hold(trt_dir):
    """tiny's near-zero weight channels have 1e-8 steps: an FP16 Q/DQ graph would zero them."""
    model = onnx.load(str(trt_dir[0] / "vae_decoder.qdq.onnx"))
    with pytest.raises(ValueError, match=r"does not survive FP16.*--trt-float fp32"):
        to_fp16(model)


def test_fp16_copy_refuses_values_beyond_fp16():
    big = numpy_helper.from_array(np.array([1e6], np.float32), "big")
    g = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", "big"], ["y"])], "g",
                               [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                               [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [big])
    with pytest.raises(ValueError, match="beyond FP16"):
        to_fp16(onnx.helper.make_model(g))


@pytest.mark.skipif(not HAVE_ENGINES, reason="needs TensorRT and a CUDA GPU: " + ", ".join(trt_build.missing_for_engines()))
def test_engines_build_and_match_the_qdq_graph(tmp_path):
    from passion_deploy.export.targets.trt.runtime import TrtSR

    out = tmp_path / "eng"
    rc = export_cli.main(["--ckpt", "tiny-w8a8", "--target", "trt", "--out", str(out), "--components", "vae_decoder",
                          "--timing-cache", str(tmp_path / "t.cache"), "--no-progress"])
    assert rc == 0 and (tmp_path / "t.cache").stat().st_size > 0
    m = artifact.read_manifest(out)
    assert set(m["engines"]["vae_decoder"]) == {"int8", "fp16"} and m["tensorrt"]["gpu"]
    z = torch.randn(1, 4, *m["pipeline"]["latent_tile"])
    ref = QdqOnnxSR(out).decode(z).clamp(0, 1)
    for kind in ("int8", "fp16"):
        y = TrtSR(out, kind).decode(z).clamp(0, 1)
        assert 10 * np.log10(1.0 / float(((y - ref) ** 2).mean())) > (35 if kind == "int8" else 25), kind


def test_passion_sr_runs_the_trt_artifact_at_any_size(trt_dir):
    """The runner tiles the VAE at the artifact's fixed shape (padding a small image up): an odd
    37x53 LR becomes exactly 148x212 and agrees with the fake-quant pipeline it came from."""
    from passion_deploy.checkpoint import load_checkpoint
    from passion_deploy.runner import SRModel, Tiling, load_model, super_resolve

    model = load_model(model_dir=trt_dir[0])
    lr = torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(0))
    lr = torch.nn.functional.avg_pool2d(lr[None], 3, 1, 1)[0]  # smooth, like a photo
    sr = super_resolve(model, lr)
    assert sr.shape == (3, 148, 212)
    pipe = load_checkpoint("tiny-w8a8")
    tile = model.pipe.fixed_vae_latent_tile
    ref = super_resolve(SRModel(pipe, "fakequant", tuple(pipe.latent_tile), "ref"), lr, tiling=Tiling(vae_tile=(tile[0], tile[0])))
    assert 10 * np.log10(1.0 / float(((sr - ref) ** 2).mean())) > 40
