"""Integer ONNX lowering: every quantized layer kind against its fake-quant layer, run by ONNX
Runtime's CPU provider; the float graph against PyTorch; the tracer against the pipeline."""
import numpy as np
import pytest
import torch
from torch import nn

from passion_deploy.export import int_algebra as ia
from passion_deploy.export.artifact import cpu_has_vnni
from passion_deploy.export.irfile import load_ir, save_ir
from passion_deploy.export.onnx_lower import lower_graph
from passion_deploy.export.recipes import attention_recipe, layer_recipe
from passion_deploy.export.trace import trace_unet, trace_vae_decoder, trace_vae_encoder
from passion_deploy.quant.layers import QuantConv, QuantLinear
from passion_deploy.quant.quantizer import QuantSpec
from calib_helpers import calibrated_layer, observed_attention
from layer_graphs import BITS, CONVS, check, run_onnx, single

def isas(wbits, abits):
    # int8 weights on 8x8 layers saturate without VNNI: only test that ISA where it is exact
    return ["portable"] + (["vnni"] if cpu_has_vnni() or wbits <= 6 or abits <= 6 else [])


@pytest.mark.parametrize("geom", list(CONVS))
@pytest.mark.parametrize("bits", list(BITS))
@pytest.mark.parametrize("split", [False, True])
def test_qconv_onnx_matches_fake_quant(geom, bits, split):
    torch.manual_seed(0)
    wb, ab = BITS[bits]
    layer = QuantConv(nn.Conv2d(8, 6, **CONVS[geom]), wspec=QuantSpec(wb), aspec=QuantSpec(ab), split=split, use_let=True,
                      let_form="consistent", s_alpha=0.5, only_weight=False)
    x = torch.randn(1, 8, 11, 9) * 2 + 0.3
    calibrated_layer(layer, x)
    with torch.no_grad():
        ref = layer(x).numpy()
    rec = layer_recipe("conv", layer)
    for isa in isas(wb, ab):
        y = run_onnx(lower_graph(single("qconv", rec, {"x": x}, ref.shape), isa), {"x": x.numpy()})
        check(y, ref)
    # the graph is shape-generic: the same model runs a different spatial size
    x2 = torch.randn(1, 8, 6, 14)
    with torch.no_grad():
        check(run_onnx(lower_graph(single("qconv", rec, {"x": x}, ref.shape, dynamic_hw=True)), {"x": x2.numpy()}), layer(x2).numpy())


@pytest.mark.parametrize("shape", [(3, 8), (1, 10, 8), (1, 7, 8)])
@pytest.mark.parametrize("bits", list(BITS))
@pytest.mark.parametrize("split", [False, True])
def test_qlinear_onnx_matches_fake_quant(shape, bits, split):
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
    rec = layer_recipe("lin", layer)
    for isa in isas(wb, ab):
        check(run_onnx(lower_graph(single("qlinear", rec, {"x": x}, ref.shape), isa), {"x": x.numpy()}), ref)


@pytest.mark.parametrize("geom", ["3x3s1", "1x1"])
def test_residual_paths_one_signed_channel_and_positive_activations(geom):
    torch.manual_seed(2)
    layer = QuantConv(nn.Conv2d(6, 5, **CONVS[geom]), wspec=QuantSpec(8), aspec=QuantSpec(8), split=True, use_let=False,
                      let_form="consistent", s_alpha=0.5, only_weight=False)
    with torch.no_grad():
        layer.weight[1] = layer.weight[1].abs() + 0.05
    x = torch.rand(1, 6, 7, 8) + 1.0
    calibrated_layer(layer, x, let=False)
    rec = layer_recipe("c", layer)
    assert ia.act_operand(rec.acts[0]).wide
    assert ia.weight_operand(rec.weights[0].codes, rec.weights[0].grid, "u8").has_residual
    with torch.no_grad():
        check(run_onnx(lower_graph(single("qconv", rec, {"x": x}, (1, 5, 7, 8))), {"x": x.numpy()}), layer(x).numpy())


def test_weight_only_layer():
    torch.manual_seed(3)
    layer = QuantConv(nn.Conv2d(6, 5, 3, padding=1), wspec=QuantSpec(6), aspec=QuantSpec(8), split=True, use_let=True,
                      let_form="consistent", s_alpha=0.5, only_weight=True)
    x = torch.randn(1, 6, 7, 8)
    calibrated_layer(layer, x)
    rec = layer_recipe("c", layer)
    assert rec.acts is None
    with torch.no_grad():
        check(run_onnx(lower_graph(single("qconv", rec, {"x": x}, (1, 5, 7, 8))), {"x": x.numpy()}), layer(x).numpy(), 1e-5)


@pytest.mark.parametrize("bits", [8, 6])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("const_kv", [False, True])
@pytest.mark.parametrize("wide_p", [False, True])
def test_qattention_onnx_matches_fake_quant(bits, cross, const_kv, wide_p):
    attn, proc, hidden, ctx = observed_attention(bits, cross, tokens=12)
    with torch.no_grad():  # P*s_vw range starting at 0, or well above it (near-uniform attention: zp > 0)
        proc.p_quant.x_min.copy_(0.3 * proc.p_quant.x_max if wide_p else torch.zeros(()))
    rec = attention_recipe("attn", attn, proc)
    assert (int(rec.p.zp) > 0) == wide_p and (ia.act_operand(rec.p).wide == (wide_p and bits == 8))
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
    for isa in isas(bits, bits):
        y = run_onnx(lower_graph(g, isa), feeds)
        # scores agree to float rounding; a P code may flip where P*s_vw/D sits within rounding
        # of a half step, moving an output by at most one P step times |v|/s_vw
        bound = 2 * float(rec.p.step) * float(v.abs().max() / torch.from_numpy(rec.s_vw).min())
        assert np.abs(y - ref).max() <= max(bound, 3e-6 * np.abs(ref).max())
        assert (np.abs(y - ref) > 3e-6 * np.abs(ref).max()).mean() < 0.05


# -- whole components on the tiny preset ------------------------------------------------------

@pytest.fixture(scope="module")
def probes(tiny_w8a8, calib_batches):
    x = calib_batches[0]
    with torch.no_grad():
        z = tiny_w8a8.encode(x)
        z0 = tiny_w8a8.denoise(z)
    return x, z, z0


def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return 10 * np.log10(float(b.max() - b.min()) ** 2 / mse) if mse else float("inf")


@pytest.fixture(scope="module")
def graphs(tiny_w8a8, probes):
    """Each tiny component traced once (quantized, constants folded): (graph, traced output, input name, input)."""
    x, z, z0 = probes
    with torch.no_grad():
        return {"unet": (*trace_unet(tiny_w8a8, z), "latent", z),
                "vae_encoder": (*trace_vae_encoder(tiny_w8a8, x), "image", x),
                "vae_decoder": (*trace_vae_decoder(tiny_w8a8, z0), "latent", z0)}


def test_tracer_reproduces_the_pipeline_bit_for_bit(tiny_w8a8, probes, graphs):
    x, z, z0 = probes
    with torch.no_grad():
        assert torch.equal(graphs["unet"][1], tiny_w8a8.unet_eps(z))
        assert torch.equal(graphs["vae_encoder"][1], tiny_w8a8.encode(x))
        assert torch.equal(graphs["vae_decoder"][1], tiny_w8a8.decode(z0))


def test_fp_graph_matches_pytorch(tiny_w8a8, probes):
    """The FP32 baseline: the same graph with the FP weights, equal to PyTorch to float precision."""
    from passion_deploy.export.fp_model import fp_copy

    x, z, z0 = probes
    fp = fp_copy(tiny_w8a8)
    with torch.no_grad():
        cases = [(trace_unet, z, "latent", fp.unet_eps(z)), (trace_vae_encoder, x, "image", fp.encode(x)),
                 (trace_vae_decoder, z0, "latent", fp.decode(z0))]
        for fn, inp, name, ref in cases:
            g, traced = fn(tiny_w8a8, inp, quantized=False)
            assert not g.recipes and torch.allclose(traced, ref, atol=1e-5)
            y = run_onnx(lower_graph(g), {name: inp.numpy()})
            check(y, ref.numpy(), 1e-5)


def test_integer_components_track_fake_quant(graphs):
    """Each integer component on the reference's input. Layers are exact in isolation (tests
    above); here float-rounding differences in the surrounding ops flip a few activation codes,
    so the bar is the level such flips produce on this model, far above quantization error."""
    for comp, (g, ref, name, inp) in graphs.items():
        y = run_onnx(lower_graph(g), {name: inp.numpy()})
        assert psnr(y, ref.numpy()) > 40, comp


def test_dynamic_constants_match_folded(tiny_w8a8, probes, graphs):
    """--dynamic-constants keeps the time MLP, time projections and cross-attention K/V as graph
    ops fed by timestep and context inputs; with t=999 and the empty prompt it computes what
    the folded graph computes (the traced reference is bit-identical to the pipeline)."""
    _, z, _ = probes
    gf = graphs["unet"][0]
    with torch.no_grad():
        gd, ref = trace_unet(tiny_w8a8, z, fold=False)
        assert torch.equal(ref, tiny_w8a8.unet_eps(z))
    assert set(gd.inputs) == {"latent", "timestep", "context"} and set(gf.inputs) == {"latent"}
    assert len(gd.recipes) > len(gf.recipes)  # time MLP, time projections, cross K/V projections
    yf = run_onnx(lower_graph(gf), {"latent": z.numpy()})
    yd = run_onnx(lower_graph(gd), {"latent": z.numpy(), "timestep": np.array([999.0], np.float32),
                                    "context": tiny_w8a8.context.numpy()})
    assert psnr(yd, yf) > 40


def test_ir_file_round_trip(probes, graphs, tmp_path):
    _, z, _ = probes
    g = graphs["unet"][0]
    save_ir(g, tmp_path / "unet.ir.safetensors")
    g2 = load_ir(tmp_path / "unet.ir.safetensors")
    assert [n.to_json() for n in g2.nodes] == [n.to_json() for n in g.nodes]
    for name, rec in g.recipes.items():
        rec2 = g2.recipes[name]
        if hasattr(rec, "weights"):
            for a, b in zip(rec.weights, rec2.weights):
                np.testing.assert_array_equal(a.codes, b.codes)
                np.testing.assert_array_equal(a.grid.zp, b.grid.zp)
    y1 = run_onnx(lower_graph(g), {"latent": z.numpy()})
    y2 = run_onnx(lower_graph(g2), {"latent": z.numpy()})
    np.testing.assert_array_equal(y1, y2)
