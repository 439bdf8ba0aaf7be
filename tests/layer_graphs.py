"""One-layer IR graphs and their checks, shared by the ONNX lowering tests (onnx and trt targets)."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from passion_deploy.export.ir.graph import Graph, Node
from passion_deploy.export.ir.recipes import attention_recipe, layer_recipe
from passion_deploy.quant.layers import QuantConv, QuantLinear
from passion_deploy.quant.quantizer import QuantSpec
from calib_helpers import calibrated_layer, observed_attention

BITS = {"w8a8": (8, 8), "w6a6": (6, 6)}


def run_onnx(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def single(op, rec, inputs: dict, out_shape, consts=None, dynamic_hw=False):
    shape = (lambda t: tuple(t.shape[:2]) + (None, None)) if dynamic_hw else (lambda t: tuple(t.shape))
    g = Graph("layer", inputs={k: shape(v) for k, v in inputs.items()}, outputs={"y": tuple(out_shape[:2]) + (None,) * (len(out_shape) - 2)},
              consts=consts or {}, recipes={rec.name: rec})
    g.shapes = {k: tuple(v.shape) for k, v in inputs.items()}
    names = list(inputs) + list((consts or {}).keys())
    g.nodes = [Node(op, names, ["h"], {"recipe": rec.name}, rec.name), Node("identity", ["h"], ["y"])]
    return g


def check(y, ref, tol=3e-6):
    err = np.abs(y - ref).max()
    assert err <= tol * np.abs(ref).max(), f"max abs err {err:.3g} vs scale {np.abs(ref).max():.3g}"


CONVS = {"3x3s1": dict(kernel_size=3, padding=1), "3x3s2": dict(kernel_size=3, stride=2, padding=1),
         "1x1": dict(kernel_size=1), "3x3s2pad0": dict(kernel_size=3, stride=2)}


def conv_case(geom: str, bits: str, split: bool, let: bool = True):
    """A calibrated conv (LET on unless `let` is False), its input, its fake-quant output and its recipe."""
    torch.manual_seed(0)
    wb, ab = BITS[bits]
    layer = QuantConv(nn.Conv2d(8, 6, **CONVS[geom]), wspec=QuantSpec(wb), aspec=QuantSpec(ab), split=split, use_let=let,
                      let_form="consistent", s_alpha=0.5, only_weight=False)
    x = torch.randn(1, 8, 11, 9) * 2 + 0.3
    calibrated_layer(layer, x, let=let)
    with torch.no_grad():
        ref = layer(x).numpy()
    return layer, x, ref, layer_recipe("conv", layer)


def linear_case(shape: tuple, bits: str, split: bool, let: bool = True):
    """A calibrated linear, LET on unless `let` is False (token halves with different ranges for 3-D inputs)."""
    torch.manual_seed(1)
    wb, ab = BITS[bits]
    layer = QuantLinear(nn.Linear(8, 12), wspec=QuantSpec(wb), aspec=QuantSpec(ab), split=split, use_let=let,
                        let_form="consistent", s_alpha=0.5, only_weight=False)
    x = torch.randn(*shape) * 2 - 0.2
    if len(shape) == 3:
        x[:, shape[1] // 2:] *= 4
    calibrated_layer(layer, x, let=let)
    with torch.no_grad():
        ref = layer(x).numpy()
    return layer, x, ref, layer_recipe("lin", layer)


def attention_case(bits: int, cross: bool, const_kv: bool, wide_p: bool):
    """(recipe, one-node graph, feeds, fake-quant output, v) of a quantized attention core; with
    `wide_p` the P*s_vw range starts well above 0 (near-uniform attention: zp > 0)."""
    attn, proc, hidden, ctx = observed_attention(bits, cross, tokens=12)
    with torch.no_grad():
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
    return rec, g, feeds, ref, v


def attention_cases(test):
    """Parametrize `test(bits, cross, const_kv, wide_p)` over the attention grid every lowering is
    checked on: 8 and 6 bits, self and cross attention, K/V as inputs or folded constants, P's grid
    at 0 or well above it (attention_case's arguments)."""
    for name, values in (("wide_p", [False, True]), ("const_kv", [False, True]), ("cross", [False, True]), ("bits", [8, 6])):
        test = pytest.mark.parametrize(name, values)(test)  # innermost first, as stacked decorators apply
    return test


def check_attention(y, ref, rec, v):
    """Scores agree to float rounding; a P code may flip where P*s_vw/D sits within rounding of a
    half step, moving an output by at most one P step times |v|/s_vw."""
    bound = 2 * float(rec.p.step) * float(v.abs().max() / torch.from_numpy(rec.s_vw).min())
    assert np.abs(y - ref).max() <= max(bound, 3e-6 * np.abs(ref).max())
    assert (np.abs(y - ref) > 3e-6 * np.abs(ref).max()).mean() < 0.05


def far_from_zero_case(geom: str = "3x3s1"):
    """A split 8-bit conv whose grids lie far from 0: weight channel 1 all positive, inputs in
    [1, 2]. Returns (layer, x, recipe, graph)."""
    torch.manual_seed(2)
    layer = QuantConv(nn.Conv2d(6, 5, **CONVS[geom]), wspec=QuantSpec(8), aspec=QuantSpec(8), split=True, use_let=False,
                      let_form="consistent", s_alpha=0.5, only_weight=False)
    with torch.no_grad():
        layer.weight[1] = layer.weight[1].abs() + 0.05
    x = torch.rand(1, 6, 7, 8) + 1.0
    calibrated_layer(layer, x, let=False)
    rec = layer_recipe("c", layer)
    return layer, x, rec, single("qconv", rec, {"x": x}, (1, 5, 7, 8))


def weight_only_case():
    """A split weight-only (W6, float activations) LET conv. Returns (layer, x, recipe, graph)."""
    torch.manual_seed(3)
    layer = QuantConv(nn.Conv2d(6, 5, 3, padding=1), wspec=QuantSpec(6), aspec=QuantSpec(8), split=True, use_let=True,
                      let_form="consistent", s_alpha=0.5, only_weight=True)
    x = torch.randn(1, 6, 7, 8)
    calibrated_layer(layer, x)
    rec = layer_recipe("c", layer)
    return layer, x, rec, single("qconv", rec, {"x": x}, (1, 5, 7, 8))
