"""The trt target's explicit-quantization ONNX: TensorRT's graph rules on every emitted graph,
and its meaning checked without TensorRT: ONNX Runtime runs it with DequantizeLinear -> op
unfused (export.onnx_graph.session(plain_qdq=True)), against the fake-quant layers and components."""
import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from passion_deploy.export.ir import int_algebra as ia
from passion_deploy.export.qdq.lower import lower_graph_qdq
from passion_deploy.export.qdq.rules import qdq_violations, quantized_op_count
from passion_deploy.export.ir.recipes import layer_recipe
from passion_deploy.export.onnx_graph import session
from passion_deploy.quant.layers import QuantConv, QuantLinear
from passion_deploy.quant.quantizer import QuantSpec
from calib_helpers import calibrated_layer
from layer_graphs import (BITS, CONVS, attention_case, attention_cases, check, check_attention, conv_case, far_from_zero_case,
                          linear_case, single, weight_only_case)


def run_qdq(model, feeds):
    assert qdq_violations(model) == []
    onnx.checker.check_model(model, full_check=True)
    return session(model.SerializeToString(), plain_qdq=True).run(None, feeds)[0]


def checked_layer(op: str, rec, x, ref):
    """A one-layer graph of `op` lowered to Q/DQ and checked against the fake-quant output; the model
    is returned for the test's own checks of its structure."""
    model = lower_graph_qdq(single(op, rec, {"x": x}, ref.shape))
    check(run_qdq(model, {"x": x.numpy()}), ref)
    return model


@pytest.mark.parametrize("geom", list(CONVS))
@pytest.mark.parametrize("bits", list(BITS))
@pytest.mark.parametrize("split", [False, True])
def test_qconv_qdq_matches_fake_quant(geom, bits, split):
    _, x, ref, rec = conv_case(geom, bits, split)
    model = checked_layer("qconv", rec, x, ref)
    assert quantized_op_count(model) == len(rec.weights)  # one integer conv per split half


@pytest.mark.parametrize("shape", [(3, 8), (1, 10, 8), (1, 7, 8)])
@pytest.mark.parametrize("bits", list(BITS))
@pytest.mark.parametrize("split", [False, True])
def test_qlinear_qdq_matches_fake_quant(shape, bits, split):
    _, x, ref, rec = linear_case(shape, bits, split)
    model = checked_layer("qlinear", rec, x, ref)
    assert all(n.op_type != "MatMul" for n in model.graph.node)  # linears are Gemm(transB=1): weight axis 0


def test_shifts_are_exact_for_one_signed_channels_and_positive_activations():
    """Grids far from 0 (a one-signed weight channel, inputs in [1, 2]) need the largest shifts."""
    layer, x, rec, g = far_from_zero_case()
    assert ia.sym_act(rec.acts[0]).shift > 128 and ia.sym_weight(rec.weights[0].codes, rec.weights[0].grid).has_shift
    with torch.no_grad():
        check(run_qdq(lower_graph_qdq(g), {"x": x.numpy()}), layer(x).numpy())


def test_w6a6_layers_need_no_compensation():
    """6-bit grids around 0 sit inside int8 as they are: no shift, no ones channel, no maps."""
    torch.manual_seed(4)
    layer = QuantConv(nn.Conv2d(8, 6, 3, padding=1), wspec=QuantSpec(6), aspec=QuantSpec(6), split=False, use_let=False,
                      let_form="consistent", s_alpha=0.5, only_weight=False)
    x = torch.randn(1, 8, 9, 9)
    calibrated_layer(layer, x, let=False)
    model = lower_graph_qdq(single("qconv", layer_recipe("c", layer), {"x": x}, (1, 6, 9, 9)))
    ops = [n.op_type for n in model.graph.node]
    assert "Sub" not in ops and "Slice" not in ops and "ConstantOfShape" not in ops
    clip = [n for n in model.graph.node if n.op_type == "Clip"]
    assert len(clip) == 1  # the 64-code clamp before Q
    w = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".w")][0]
    assert w.dtype == np.int8 and w.shape[0] == 6 and -32 <= w.min() and w.max() <= 63


def test_weight_only_layer_keeps_float_weights():
    layer, x, _, g = weight_only_case()
    model = lower_graph_qdq(g)
    assert quantized_op_count(model) == 0
    with torch.no_grad():
        check(run_qdq(model, {"x": x.numpy()}), layer(x).numpy(), 1e-5)


@attention_cases
def test_qattention_qdq_matches_fake_quant(bits, cross, const_kv, wide_p):
    rec, g, feeds, ref, v = attention_case(bits, cross, const_kv, wide_p)
    model = lower_graph_qdq(g)
    assert quantized_op_count(model) == 2  # QK^T and PV
    check_attention(run_qdq(model, feeds), ref, rec, v)


# -- the rules checker catches each kind of violation -----------------------------------------

def _one_conv_model(zero=0, w_axis=0, w_scale_shape=(4,), act_scale=(), pair=True, float_weight=False):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 5, 5])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.full(act_scale, 0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(zero, np.int8), "z"),
             numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32 if float_weight else np.int8), "w"),
             numpy_helper.from_array(np.full(w_scale_shape, 0.2, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q")]
    nodes.append(helper.make_node("DequantizeLinear", ["xq" if pair else "x", "s", "z"], ["xd"], name="dq"))
    if float_weight:
        nodes.append(helper.make_node("Conv", ["xd", "w"], ["y"], name="conv"))
    else:
        nodes.append(helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=w_axis))
        nodes.append(helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv"))
    g = helper.make_graph(nodes, "t", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("broken,needle", [
    (dict(), None),
    (dict(zero=3), "nonzero zero point"),
    (dict(w_axis=1), "axis 0"),
    (dict(act_scale=(3,)), "not a scalar"),
    (dict(pair=False), "without its QuantizeLinear"),
    (dict(float_weight=True), "beside a float one"),
])
def test_rules_checker_finds_each_violation(broken, needle):
    bad = qdq_violations(_one_conv_model(**broken))
    if needle is None:
        assert bad == []
    else:
        assert any(needle in b for b in bad), bad


# -- whole tiny components -----------------------------------------------------------------------

def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return 10 * np.log10(float(b.max() - b.min()) ** 2 / mse) if mse else float("inf")


def test_tiny_components_follow_the_rules_and_track_fake_quant(tiny_traced):
    """Every component of the calibrated tiny W8A8 pipeline, at a fixed input shape, run on the
    reference's own input: within the flipped-code level of the integer onnx target (> 40 dB)."""
    for comp, (g, ref, name, inp) in tiny_traced.items():
        model = lower_graph_qdq(g, {name: tuple(inp.shape)})
        assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == list(inp.shape)
        recs = [(g.recipes[n.attrs["recipe"]], len(g.shapes[n.inputs[0]])) for n in g.nodes if n.op in ("qconv", "qlinear")]
        # one integer op per K-group, and per token half where a split linear's activations are token halves
        n_layers = sum(len(r.weights) * (2 if r.act_split_on_tokens(nd) else 1) for r, nd in recs)
        n_attn = sum(1 for n in g.nodes if n.op == "qattention")
        assert quantized_op_count(model) == n_layers + 2 * n_attn, comp
        # the leaner graph (issue 16): at a fixed tile every Conv left is an integer conv (border
        # maps are constant tables), and Slices cut only token halves (2 per token-split linear)
        ops = [n.op_type for n in model.graph.node]
        assert "ConstantOfShape" not in ops and ops.count("Conv") == sum(
            len(r.weights) for r, _ in recs if r.kind == "conv"), comp
        layer_names = tuple(f"n.{r.name}." for r, _ in recs)
        layer_slices = [n for n in model.graph.node if n.op_type == "Slice" and n.name.startswith(layer_names)]
        assert len(layer_slices) == 2 * sum(1 for r, nd in recs if r.act_split_on_tokens(nd)), comp
        assert psnr(run_qdq(model, {name: inp.numpy()}), ref.numpy()) > 40, comp


def run_view(view, feeds):
    """The integer view is a CPU check, not a graph for TensorRT: its Q feeds a Cast, against the rules."""
    return session(view.SerializeToString(), plain_qdq=True).run(None, feeds)[0]


def test_integer_view_accumulates_like_tensorrt():
    """The CPU check's view of a Q/DQ graph (qdq/integer_view.py): every DQ -> Gemm becomes a sum of
    integer codes scaled once, as TensorRT's fused int8 kernel computes it. On a wide layer with
    large shifts (inputs in [1, 2]) its error against the fake-quant layer is below that of the
    graph run as written (rounded float products summed), and the artifact's graph is unchanged."""
    from passion_deploy.export.qdq.integer_view import integer_view

    plain_err, view_err = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        layer = QuantLinear(nn.Linear(1024, 32), wspec=QuantSpec(8), aspec=QuantSpec(8), split=False, use_let=True,
                            let_form="consistent", s_alpha=0.5, only_weight=False)
        x = torch.rand(1, 16, 1024) + 1.0
        calibrated_layer(layer, x, seed=seed)
        with torch.no_grad():
            ref = layer(x).numpy()
        model = lower_graph_qdq(single("qlinear", layer_recipe("l", layer), {"x": x}, ref.shape))
        before = model.SerializeToString()
        view = integer_view(model)
        assert model.SerializeToString() == before
        producer = {o: n.op_type for n in view.graph.node for o in n.output}
        gemms = [n for n in view.graph.node if n.op_type == "Gemm"]
        assert gemms and all(producer[i] == "Cast" for n in gemms for i in n.input)
        scale = np.abs(ref).max()
        plain_err.append(np.abs(run_qdq(model, {"x": x.numpy()}) - ref).max() / scale)
        view_err.append(np.abs(run_view(view, {"x": x.numpy()}) - ref).max() / scale)
    assert all(v <= p for v, p in zip(view_err, plain_err)) and sum(view_err) < 0.5 * sum(plain_err), (view_err, plain_err)


@pytest.mark.parametrize("geom", ["3x3s1", "3x3s2"])
def test_integer_view_of_convs_and_attention_matches_fake_quant(geom):
    from passion_deploy.export.qdq.integer_view import integer_view

    _, x, ref, rec = conv_case(geom, "w8a8", split=True)
    view = integer_view(lower_graph_qdq(single("qconv", rec, {"x": x}, ref.shape)))
    assert not any(n.op_type == "DequantizeLinear" for n in view.graph.node
                   if any(c.op_type == "Conv" and n.output[0] in c.input for c in view.graph.node))
    check(run_view(view, {"x": x.numpy()}), ref)
    rec, g, feeds, ref, v = attention_case(8, cross=True, const_kv=True, wide_p=True)
    view = integer_view(lower_graph_qdq(g))
    assert sum(n.op_type == "MatMul" for n in view.graph.node) == 2
    check_attention(run_view(view, feeds), ref, rec, v)


def test_lean_graph_of_a_split_conv_with_shifts():
    """The leaner Q/DQ graph (issue 16): a split 8-bit conv with activation shifts and a one-signed
    weight channel is one Sub of a per-channel shift vector, one Split into the halves, per half
    Q/DQ -> Conv (the bias inside the first half's Conv) and one Split of the all-ones channel,
    and no Slice at all; it still follows the rules and matches the fake-quant layer."""
    layer, x, rec, g = far_from_zero_case()
    model = lower_graph_qdq(g)
    ops = [n.op_type for n in model.graph.node]
    assert "Slice" not in ops
    assert ops.count("Sub") == 1
    convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) >= 2]
    int_convs = [n for n in convs if quantized_op_count_of(model, n)]
    assert len(int_convs) == 2 and sum(len(n.input) == 3 for n in int_convs) == 1  # the bias rides in one
    ones_splits = [n for n in model.graph.node if n.op_type == "Split" and n.input[0] in {c.output[0] for c in int_convs}]
    assert len(ones_splits) == sum(ia.sym_weight(w.codes, w.grid).has_shift for w in rec.weights) >= 1
    assert ops.count("Split") == 1 + len(ones_splits)
    with torch.no_grad():
        check(run_qdq(model, {"x": x.numpy()}), layer(x).numpy())


def quantized_op_count_of(model, node) -> bool:
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return all(producer.get(i) == "DequantizeLinear" for i in node.input[:2])


@pytest.mark.parametrize("geom", ["3x3s1", "3x3s2", "3x3s2pad0"])
@pytest.mark.parametrize("size", [(11, 9), (16, 16)])
def test_fixed_tile_border_maps_are_constants(geom, size):
    """At a fixed tile the LET border map is a compact constant table expanded by two Gathers
    (qdq/static_maps.py): no ConstantOfShape and no float Conv left, a table of a few rows and
    columns, and the same output as the size-generic graph."""
    from passion_deploy.export.qdq.static_maps import compact

    layer, _, _, rec = conv_case(geom, "w8a8", split=False)
    x = torch.randn(1, 8, *size) * 2 + 0.3
    with torch.no_grad():
        ref = layer(x).numpy()
    g = single("qconv", rec, {"x": x}, ref.shape)
    generic = lower_graph_qdq(g)
    fixed = lower_graph_qdq(g, {"x": tuple(x.shape)})
    has_map = any(n.op_type == "ConstantOfShape" for n in generic.graph.node)
    assert has_map or geom == "3x3s2pad0"  # an unpadded conv has no border
    ops = [n.op_type for n in fixed.graph.node]
    assert "ConstantOfShape" not in ops and ops.count("Conv") == quantized_op_count(fixed)
    assert ops.count("Gather") == (2 if has_map else 0)
    if has_map:
        table = [numpy_helper.to_array(t) for t in fixed.graph.initializer if t.name.endswith(".table")][0]
        assert table.shape[2] <= 3 and table.shape[3] <= 3
    np.testing.assert_allclose(run_qdq(fixed, {"x": x.numpy()}), run_qdq(generic, {"x": x.numpy()}), rtol=0, atol=2e-6 * np.abs(ref).max())
    check(run_qdq(fixed, {"x": x.numpy()}), ref)
    dense = np.random.default_rng(0).normal(size=(3, 7, 5)).astype(np.float32)
    dense[:, 2:5] = dense[:, 2:3]  # rows 2-4 equal, like an interior
    table, rows, cols = compact(dense)
    assert table.shape == (3, 5, 5) and np.array_equal(table[:, rows][:, :, cols], dense)
