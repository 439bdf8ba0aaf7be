"""The openvino target's int8 graph (export/targets/openvino/int8_graph.py): built for what the CPU
plugin runs natively (u8 activations with PassionSR's zero points, int8 weights, no all-ones output
channel, one int8 GEMM per K-group), every quantized conv/matmul an int8 primitive, no reference
kernel in the tiny UNet, and its quantizers within a few boundary codes of the fake-quant."""
import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino")

from passion_deploy.export import artifact  # noqa: E402
from passion_deploy.export.targets.openvino import ovcore, profile  # noqa: E402
from passion_deploy.export.targets.openvino.int8_graph import int8_op_count, lower_graph_int8  # noqa: E402

VNNI = artifact.cpu_has_vnni()
needs_vnni = pytest.mark.skipif(not VNNI, reason="OpenVINO's int8 kernels are exact only with VNNI (spec section 6)")


def _compiled(model, tmp_path, stem):
    from passion_deploy.export.targets.openvino.ovcore import convert

    return ovcore.core().compile_model(convert(model, tmp_path, stem), "CPU", ovcore.compile_config("f32", "int8", 2))


def test_int8_graph_has_no_shift_ops_and_no_ones_channel(tiny_traced):
    """Activations are u8 with their own zero point (no Sub of a shift before a conv/linear
    quantizer), every weight tensor has exactly the layer's output channels (no all-ones channel to
    split off), and there is one Conv/MatMul per K-group: fewer nodes than the Q/DQ graph."""
    from onnx import numpy_helper

    from passion_deploy.export.qdq.lower import lower_graph_qdq

    for comp, (g, _ref, _name, _inp) in tiny_traced.items():
        model = lower_graph_int8(g)
        inits = {t.name: t for t in model.graph.initializer}
        recs = {r.name: r for r in g.recipes.values() if hasattr(r, "weights") and r.acts is not None}
        for n in model.graph.node:
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.input[0].endswith(".w"):
                layer = n.input[0].rsplit(".g", 1)[0]
                assert numpy_helper.to_array(inits[n.input[0]]).shape[0] == recs[layer].out_channels, n.input[0]
            if n.op_type == "QuantizeLinear" and ".act" in n.name:
                assert inits[n.input[2]].data_type == 2, n.name  # uint8 zero point
        assert not [n for n in model.graph.node if n.op_type == "Split" and n.input[0].endswith("Conv")], comp
        gemms = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul") and n.input[0].split(".")[-1].startswith(
            ("DequantizeLinear", "Mul"))]
        assert len(gemms) >= int8_op_count(g) > 0, comp
        assert len(model.graph.node) < len(lower_graph_qdq(g).graph.node), comp


@needs_vnni
def test_every_quantized_gemm_is_an_int8_primitive_and_tracks_fake_quant(tiny_traced, tmp_path):
    """Every quantized conv/linear K-group compiles to an int8 primitive (the attention cores' int8
    MatMuls run inside the fused MHA kernel: the next test). When the count included separate
    attention MatMuls it found 236 of 238 after the whole suite had run in one process (cause not
    found); counting the conv/linear GEMMs, it passed there (whole suite, 2026-12-07)."""
    from passion_deploy.metrics import psnr

    for comp, (g, ref, name, inp) in tiny_traced.items():
        c = _compiled(lower_graph_int8(g), tmp_path, comp)
        n_int, _ = ovcore.int8_primitives(c)
        assert n_int >= int8_op_count(g), comp
        out = c({name: inp.numpy()})[0]
        assert psnr(torch.from_numpy(out), ref, peak=float(ref.max() - ref.min())) >= 45, comp


@needs_vnni
def test_no_node_of_the_tiny_unet_runs_a_reference_kernel(tiny_traced, tmp_path, monkeypatch):
    """No node of the compiled tiny UNet runs a `ref_*` kernel (the Q/DQ graph had hundreds: the
    all-ones channels' VariadicSplits; before channel_copies_as_convs, 11 K-group Splits and 6 skip
    Concats laid out channels-last), only those are rewritten (34 one-hot Convs here), and the
    rewrite is exact: the output is bit for bit the one of the graph without it (measured)."""
    from passion_deploy.export.targets.openvino import int8_graph

    g, _ref, name, inp = tiny_traced["unet"]
    model = lower_graph_int8(g)
    one_hot = sum(n.name.endswith(".select") or ".place" in n.name for n in model.graph.node)
    c = _compiled(model, tmp_path, "unet")
    assert profile.reference_nodes(c) == []
    monkeypatch.setattr(int8_graph, "reference_copies", lambda _m: set())
    plain = _compiled(lower_graph_int8(g), tmp_path, "unet_plain")
    n_plain = len(profile.reference_nodes(plain))  # 17 here; the plugin's layout choice may differ elsewhere
    assert n_plain > 0 and one_hot >= 2 * n_plain  # every rewritten Split / Concat has two or more parts
    np.testing.assert_array_equal(c({name: inp.numpy()})[0], plain({name: inp.numpy()})[0])


@needs_vnni
def test_every_attention_core_of_the_tiny_unet_runs_as_one_fused_int8_kernel(tiny_traced, tmp_path):
    """Each attention core (scores, softmax, P's quantizer, P @ V) compiles to one node, the
    plugin's MHA kernel, with int8 MatMuls, so the N x N scores never go to memory
    (int8_graph.lower_qattention). A separate node between the two MatMuls (an offset sum that
    needs P, a quantizer the tokenizer cannot take) splits the core into several nodes, and
    float operands make it a float kernel: either fails this."""
    from passion_deploy.export.targets.openvino.int8_graph import fused_attention_kernels

    g, _ref, _name, _inp = tiny_traced["unet"]
    cores = sum(n.op == "qattention" for n in g.nodes)
    kernels = fused_attention_kernels(_compiled(lower_graph_int8(g), tmp_path, "unet"))
    assert cores > 0 and len(kernels) == cores
    assert all(k.lower().endswith("_i8") for k in kernels), kernels


def test_channel_copies_as_convs_is_exact_and_leaves_input_splits():
    """The one-hot 1x1 Convs give the Split's and the Concat's values bit for bit (ONNX Runtime, f32,
    random values over many binades), and a Split of a graph input stays a Split."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from passion_deploy.export.targets.openvino.int8_graph import channel_copies_as_convs

    sizes = numpy_helper.from_array(np.array([3, 5], np.int64), "sizes")
    nodes = [helper.make_node("Split", ["x", "sizes"], ["x0", "x1"], axis=1, name="in.Split"),
             helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Split", ["r", "sizes"], ["a", "b"], axis=1, name="mid.Split"),
             helper.make_node("Concat", ["b", "a", "x1"], ["y"], axis=1, name="skip.Concat")]
    vi = lambda n, c: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, 4, 6])
    model = helper.make_model(helper.make_graph(nodes, "t", [vi("x", 8)], [vi("y", 13), vi("x0", 3)], [sizes]),
                              opset_imports=[helper.make_opsetid("", 17)])
    scales = 10.0 ** np.arange(-20, 28, 2).reshape(1, 1, 4, 6)  # values from 1e-20 to 1e26
    x = (np.random.default_rng(0).standard_normal((1, 8, 4, 6)) * scales).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    want = run(model)
    pristine = type(model)()
    pristine.CopyFrom(model)  # the rewrite edits its model in place
    new = channel_copies_as_convs(model)
    assert [n.op_type for n in new.graph.node].count("Split") == 1 and "Concat" not in [n.op_type for n in new.graph.node]
    for w, got in zip(want, run(new)):
        np.testing.assert_array_equal(got, w)
    # copies wider than max_channels stay copies: the 8-channel Split and the 13-channel Concat at 4
    kept = [n.op_type for n in channel_copies_as_convs(pristine, max_channels=4).graph.node]
    assert kept.count("Split") == 2 and kept.count("Concat") == 1 and "Conv" not in kept


def test_compiled_unet_keeps_no_dense_dequantization_constants(tiny_traced, tmp_path):
    """The token halves' grids reach the plugin's GEMMs as a per-half (batch-axis) dequantization,
    not per token: the compiled tiny UNet's f32 constants stay below twice its int8 weights. With
    per-token step and zero-point vectors the plugin folded them with the per-channel weight scales
    into (tokens x Cout) constants: 10.3 MB of f32 beside 0.87 MB of int8 weights here, 39.7 MB in the
    UNet exported at its 32x32 tile (measured)."""
    g, _ref, _name, _inp = tiny_traced["unet"]
    c = _compiled(lower_graph_int8(g), tmp_path, "unet")
    size = {"f32": 4, "i8": 1, "u8": 1}
    by = {}
    for op in c.get_runtime_model().get_ordered_ops():
        ri = op.get_rt_info()
        if ri["layerType"].astype(str) == "Const" and op.get_output_partial_shape(0).is_static:
            prec = ri["outputPrecisions"].astype(str)
            n = int(np.prod([d.get_length() for d in op.get_output_partial_shape(0)]))
            by[prec] = by.get(prec, 0) + n * size.get(prec, 4)
    assert by.get("i8", 0) > 5e5 and by.get("f32", 0) < 2 * by["i8"], by


@needs_vnni
def test_boundary_codes_are_few_and_one_step(tiny_traced):
    """The plugin's quantizers give the fake-quant's codes except at rounding boundaries: at most one
    step, at most 1 in 10^4 of the codes (measured: 9 of 1.8e6 on a random input at the 32x32 tile)."""
    from passion_deploy.export.targets.openvino.boundary import boundary_codes

    g, _ref, name, inp = tiny_traced["unet"]
    rep = boundary_codes(g, inp.numpy(), ovcore.compile_config("f32", "int8", 2))
    total = sum(r["codes"] for r in rep.values())
    moved = sum(r["moved"] for r in rep.values())
    assert len(rep) > 50 and total > 10**5
    assert max(r["max_step"] for r in rep.values()) <= 1 and moved <= total * 1e-4


def test_perf_profile_sums_by_node_and_exec_type(tmp_path):
    """The profile passion-bench records: times by 'node type / exec type' that add up to the total,
    and the reference-kernel count (a Split along the last axis runs one: measured)."""
    from onnx import TensorProto, helper, numpy_helper

    from passion_deploy.export.targets.openvino.ovcore import convert

    inits = [numpy_helper.from_array(np.array([8, 8], np.int64), "sizes")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Split", ["r", "sizes"], ["a", "b"], axis=2),
             helper.make_node("Add", ["a", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = convert(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path, "split")
    p = profile.compiled_profile(model, ovcore.compile_config("f32"), {"x": np.ones((1, 64, 16), np.float32)}, runs=3)
    assert abs(sum(r["ms"] for r in p["by_type"].values()) - p["total_ms"]) < 1e-2
    assert p["reference_kernel_nodes"] == sum(r["nodes"] for k, r in p["by_type"].items() if " / ref" in k) >= 1


@needs_vnni
def test_a_unet_only_artifact_runs_its_unet_without_the_source_pipeline(tmp_path, monkeypatch):
    """`--components unet`: the runtime runs the UNet from the artifact alone (IR, manifest, stored
    context), with every way to the source checkpoint made to raise; its output is the fake-quant
    UNet's (checked after, with the checkpoint loaded)."""
    import io
    from contextlib import redirect_stderr

    from passion_deploy import checkpoint
    from passion_deploy.cli import export as export_cli
    from passion_deploy.export.runtime import component
    from passion_deploy.export.targets.openvino.runtime import OpenVinoSR
    from passion_deploy.metrics import psnr

    out = tmp_path / "unet_only"
    with redirect_stderr(io.StringIO()):
        assert export_cli.main(["--target", "openvino", "--ov-mode", "int8", "--components", "unet", "--ckpt", "tiny-w8a8",
                                "--out", str(out), "--no-progress", "--bench-runs", "0"]) == 0

    def refuse(*_a, **_k):
        raise AssertionError("the source pipeline was loaded")

    with monkeypatch.context() as mp:
        mp.setattr(artifact, "load_source_pipeline", refuse)
        mp.setattr(checkpoint, "load_checkpoint", refuse)
        rt = OpenVinoSR(out)
        assert rt.components == ["unet"]
        x = torch.randn((1, 4) + tuple(rt.latent_tile), generator=torch.Generator().manual_seed(0))
        y = rt.run("unet", x)
    with torch.no_grad():
        ref = component("unet").fn(rt.source_pipeline())(x)
    assert psnr(y, ref, peak=float(ref.max() - ref.min())) >= 45
