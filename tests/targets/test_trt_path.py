"""The TensorRT path's pieces that a CPU can check: batch-dynamic Q/DQ graphs up to --max-batch,
--dynamic-constants feeds, the engine's shape check, TF32 off for FP32 float ops, pycuda's
context popped after use (the engines themselves need TensorRT and a GPU: test_export_trt.py)."""
import types

import numpy as np
import onnx
import pytest
import torch

from passion_deploy.checkpoint import save_checkpoint
from passion_deploy.export.exporter import export_artifact
from passion_deploy.export.onnx_graph import session
from passion_deploy.export.targets.trt import build as trt_build
from passion_deploy.export.targets.trt.runtime import Engine, QdqOnnxSR, TrtSR


@pytest.fixture(scope="module")
def ckpt(tiny_w8a8, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "w8.safetensors"
    save_checkpoint(tiny_w8a8, path)
    return path


def batch_dim(model) -> str | int:
    d = model.graph.input[0].type.tensor_type.shape.dim[0]
    return d.dim_param or d.dim_value


def test_qdq_graph_takes_batches_up_to_max_batch(ckpt, tiny_w8a8, tmp_path):
    m3 = export_artifact(str(ckpt), tmp_path / "b3", "trt", ("vae_decoder",), progress=False, pipe=tiny_w8a8,
                         max_batch=3, build_engines=False)
    m1 = export_artifact(str(ckpt), tmp_path / "b1", "trt", ("vae_decoder",), progress=False, pipe=tiny_w8a8,
                         build_engines=False)
    c3 = m3["components"]["vae_decoder"]
    assert c3["fixed_input_shapes"]["latent"][0] == 1  # the engines' profile minimum: one tile
    model3 = onnx.load(str(tmp_path / "b3" / c3["onnx"]))
    assert batch_dim(model3) == "batch" and batch_dim(onnx.load(str(tmp_path / "b1" / c3["onnx"]))) == 1
    sess = session(str(tmp_path / "b3" / c3["onnx"]), plain_qdq=True)
    z = torch.randn(3, 4, *m3["pipeline"]["latent_tile"], generator=torch.Generator().manual_seed(0)).numpy()
    together = sess.run(None, {"latent": z})[0]
    one_by_one = np.concatenate([sess.run(None, {"latent": z[i:i + 1]})[0] for i in range(3)])
    assert together.shape[0] == 3
    np.testing.assert_allclose(together, one_by_one, rtol=0, atol=1e-5)


def test_dynamic_constants_artifact_feeds_t_and_the_context(ckpt, tiny_w8a8, tmp_path):
    m = export_artifact(str(ckpt), tmp_path / "d", "trt", ("unet",), fold=False, progress=False, pipe=tiny_w8a8,
                        build_engines=False)
    assert "context.safetensors" in m["files"] and set(m["components"]["unet"]["inputs"]) == {"latent", "timestep", "context"}
    rt = QdqOnnxSR(tmp_path / "d")
    feeds = rt.constant_feeds("unet", 3)
    ctx = tiny_w8a8.context.numpy()
    assert feeds["timestep"].tolist() == [999.0] * 3 and feeds["context"].shape == (3,) + ctx.shape[1:]
    assert np.array_equal(feeds["context"][2], ctx[0])
    z = torch.randn(1, 4, *rt.latent_tile, generator=torch.Generator().manual_seed(1))
    eps = rt.unet_eps(z)
    with torch.no_grad():
        ref = tiny_w8a8.unet_eps(z)
    assert 10 * torch.log10((ref.max() - ref.min()) ** 2 / ((eps - ref) ** 2).mean()) > 40


def test_an_engine_refuses_a_shape_outside_its_profile_by_name(tmp_path):
    eng = Engine.__new__(Engine)
    eng.path, eng.max_batch = tmp_path / "unet.int8.engine", 2
    eng.context = types.SimpleNamespace(set_input_shape=lambda name, shape: shape[0] <= 2)
    eng.set_shape("latent", (2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"unet.int8.engine: input latent of shape \(3, 4, 8, 8\) is outside .*batch 1 to 2"):
        eng.set_shape("latent", (3, 4, 8, 8))


@pytest.mark.parametrize("float_precision, want", [("fp32", {"int8": False, "fp16": True}),
                                                   ("fp16", {"int8": True, "fp16": True})])
def test_tf32_is_off_where_float_ops_must_stay_fp32(monkeypatch, tmp_path, float_precision, want):
    seen = {}

    def fake_build(onnx_path, engine_path, shapes, max_batch, cache, progress, desc="", tf32=True):
        seen[engine_path.name.split(".")[1]] = tf32
        return {"engine": engine_path.name}
    monkeypatch.setattr(trt_build, "build_engine", fake_build)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    trt_build.build_component_engines(tmp_path, "unet", model, model, {"x": (1, 2)}, float_precision, progress=False)
    assert seen == want


def test_pycuda_context_is_popped_after_each_use():
    calls = []
    rt = TrtSR.__new__(TrtSR)
    rt._cuda_context = types.SimpleNamespace(push=lambda: calls.append("push"), pop=lambda: calls.append("pop"))
    with rt.cuda_context():
        pass
    with pytest.raises(RuntimeError):
        with rt.cuda_context():
            raise RuntimeError("an engine failed")
    assert calls == ["push", "pop", "push", "pop"]
