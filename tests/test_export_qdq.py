"""The trt target's explicit-quantization ONNX: TensorRT's graph rules on every emitted graph,
and its meaning checked without TensorRT: ONNX Runtime runs it with DequantizeLinear -> op
unfused (export.runtime.session(plain_qdq=True)), against the fake-quant layers and components."""
import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from passion_deploy.export import int_algebra as ia
from passion_deploy.export.qdq_lower import lower_graph_qdq
from passion_deploy.export.qdq_rules import qdq_violations, quantized_op_count
from passion_deploy.export.recipes import attention_recipe, layer_recipe
from passion_deploy.export.runtime import session
from passion_deploy.export.trace import trace_unet, trace_vae_decoder, trace_vae_encoder
from passion_deploy.quant.layers import QuantConv, QuantLinear
from passion_deploy.quant.quantizer import QuantSpec
from calib_helpers import calibrated_layer, observed_attention
from layer_graphs import BITS, CONVS, check, single


def run_qdq(model, feeds):
    assert qdq_violations(model) == []
    onnx.checker.check_model(model, full_check=True)
    return session(model.SerializeToString(), plain_qdq=True).run(None, feeds)[0]


@pytest.mark.parametrize("geom", list(CONVS))
@pytest.mark.parametrize("bits", list(BITS))
@pytest.mark.parametrize("split", [False, True])
def test_qconv_qdq_matches_fake_quant(geom, bits, split):
    torch.manual_seed(0)
    wb, ab = BITS[bits]
    layer = QuantConv(nn.Conv2d(8, 6, **CONVS[geom]), wspec=QuantSpec(wb), aspec=QuantSpec(ab), split=split, use_let=True,
                      let_form="consistent", s_alpha=0.5, only_weight=False)
    x = torch.randn(1, 8, 11, 9) * 2 + 0.3
    calibrated_layer(layer, x)
    with torch.no_grad():
        ref = layer(x).numpy()
    rec = layer_recipe("conv", layer)
    model = lower_graph_qdq(single("qconv", rec, {"x": x}, ref.shape))
    check(run_qdq(model, {"x": x.numpy()}), ref)
    assert quantized_op_count(model) == len(rec.weights)  # one integer conv per split half


@pytest.mark.parametrize("shape", [(3, 8), (1, 10, 8), (1, 7, 8)])
@pytest.mark.parametrize("bits", list(BITS))
@pytest.mark.parametrize("split", [False, True])
def test_qlinear_qdq_matches_fake_quant(shape, bits, split):
    torch.manual_seed(1)
    wb, ab = BITS[bits]
    layer = QuantLinear(nn.Linear(8, 12), wspec=QuantSpec(wb), aspec=QuantSpec(ab), split=split, use_let=True,
                        let_form="consistent", s_alpha=0.5, only_weight=False)
    x = torch.randn(*shape) * 2 - 0.2
    if len(shape) == 3:
        x[:, shape[1] // 2:] *= 4  # token halves with different ranges
    calibrated_layer(layer, x)
    with torch.no_grad():
        ref = layer(x).numpy()
    model = lower_graph_qdq(single("qlinear", layer_recipe("lin", layer), {"x": x}, ref.shape))
    check(run_qdq(model, {"x": x.numpy()}), ref)
    assert all(n.op_type != "MatMul" for n in model.graph.node)  # linears are Gemm(transB=1): weight axis 0


def test_shifts_are_exact_for_one_signed_channels_and_positive_activations():
    """Grids far from 0 (a one-signed weight channel, inputs in [1, 2]) need the largest shifts."""
    torch.manual_seed(2)
    layer = QuantConv(nn.Conv2d(6, 5, 3, padding=1), wspec=QuantSpec(8), aspec=QuantSpec(8), split=True, use_let=False,
                      let_form="consistent", s_alpha=0.5, only_weight=False)
    with torch.no_grad():
        layer.weight[1] = layer.weight[1].abs() + 0.05
    x = torch.rand(1, 6, 7, 8) + 1.0
    calibrated_layer(layer, x, let=False)
    rec = layer_recipe("c", layer)
    assert ia.sym_act(rec.acts[0]).shift > 128 and ia.sym_weight(rec.weights[0].codes, rec.weights[0].grid).has_shift
    with torch.no_grad():
        check(run_qdq(lower_graph_qdq(single("qconv", rec, {"x": x}, (1, 5, 7, 8))), {"x": x.numpy()}), layer(x).numpy())


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
    torch.manual_seed(3)
    layer = QuantConv(nn.Conv2d(6, 5, 3, padding=1), wspec=QuantSpec(6), aspec=QuantSpec(8), split=True, use_let=True,
                      let_form="consistent", s_alpha=0.5, only_weight=True)
    x = torch.randn(1, 6, 7, 8)
    calibrated_layer(layer, x)
    model = lower_graph_qdq(single("qconv", layer_recipe("c", layer), {"x": x}, (1, 5, 7, 8)))
    assert quantized_op_count(model) == 0
    with torch.no_grad():
        check(run_qdq(model, {"x": x.numpy()}), layer(x).numpy(), 1e-5)


@pytest.mark.parametrize("bits", [8, 6])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("const_kv", [False, True])
@pytest.mark.parametrize("wide_p", [False, True])
def test_qattention_qdq_matches_fake_quant(bits, cross, const_kv, wide_p):
    attn, proc, hidden, ctx = observed_attention(bits, cross, tokens=12)
    with torch.no_grad():  # P*s_vw range starting at 0, or well above it
        proc.p_quant.x_min.copy_(0.3 * proc.p_quant.x_max if wide_p else torch.zeros(()))
    rec = attention_recipe("attn", attn, proc)
    with torch.no_grad():
        src = hidden if ctx is None else ctx
        q, k, v = attn.to_q(hidden), attn.to_k(src), attn.to_v(src)
        ref = attn.batch_to_head_dim(proc.attention(*(attn.head_to_batch_dim(t) for t in (q, k, v)), attn.scale)).numpy()
    if const_kv:
        g = single("qattention", rec, {"q": q}, ref.shape, consts={"k": k.numpy(), "v": v.numpy()})
        feeds = {"q": q.numpy()}
    else:
        g = single("qattention", rec, {"q": q, "k": k, "v": v}, ref.shape)
        feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    model = lower_graph_qdq(g)
    assert quantized_op_count(model) == 2  # QK^T and PV
    y = run_qdq(model, feeds)
    # as for the onnx target: a P code may flip where P*s_vw/D sits within rounding of a half step
    bound = 2 * float(rec.p.step) * float(v.abs().max() / torch.from_numpy(rec.s_vw).min())
    assert np.abs(y - ref).max() <= max(bound, 3e-6 * np.abs(ref).max())
    assert (np.abs(y - ref) > 3e-6 * np.abs(ref).max()).mean() < 0.05


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


def test_tiny_components_follow_the_rules_and_track_fake_quant(tiny_w8a8, calib_batches):
    """Every component of the calibrated tiny W8A8 pipeline, at a fixed input shape, run on the
    reference's own input: within the flipped-code level of the integer onnx target (> 40 dB)."""
    x = calib_batches[0]
    with torch.no_grad():
        z = tiny_w8a8.encode(x)
        z0 = tiny_w8a8.denoise(z)
        cases = {"unet": (trace_unet(tiny_w8a8, z), "latent", z), "vae_encoder": (trace_vae_encoder(tiny_w8a8, x), "image", x),
                 "vae_decoder": (trace_vae_decoder(tiny_w8a8, z0), "latent", z0)}
    for comp, ((g, ref), name, inp) in cases.items():
        model = lower_graph_qdq(g, {name: tuple(inp.shape)})
        assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == list(inp.shape)
        recs = [(g.recipes[n.attrs["recipe"]], len(g.shapes[n.inputs[0]])) for n in g.nodes if n.op in ("qconv", "qlinear")]
        # one integer op per K-group, and per token half where a split linear's activations are token halves
        n_layers = sum(len(r.weights) * (2 if r.act_split_on_tokens(nd) else 1) for r, nd in recs)
        n_attn = sum(1 for n in g.nodes if n.op == "qattention")
        assert quantized_op_count(model) == n_layers + 2 * n_attn, comp
        assert psnr(run_qdq(model, {name: inp.numpy()}), ref.numpy()) > 40, comp
