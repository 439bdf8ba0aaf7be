"""LET conv/linear layers (spec section 3): exact equivalence with quantizers off, split halves."""
import pytest
import torch
from torch import nn

from passion_deploy.quant.layers import QuantConv, QuantLinear
from passion_deploy.quant.quantizer import QuantSpec, fake_quantize
from passion_deploy.quant.wrap import set_quant_state

KW = dict(wspec=QuantSpec(8), aspec=QuantSpec(8), use_let=True, s_alpha=0.5, only_weight=False)


def randomise_let(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = layer.let_scale.numel()
    layer.let_scale.data = torch.exp(torch.randn(n, generator=g) * 0.7)
    layer.let_offset.data = torch.randn(n, generator=g) * 2.0


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 1, 0)])
@pytest.mark.parametrize("split", [False, True])
def test_let_conv_equals_fp_borders_included(k, stride, pad, split):
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 5, k, stride=stride, padding=pad)
    layer = QuantConv(conv, split=split, let_form="consistent", **KW)
    randomise_let(layer)
    set_quant_state(layer, weight=False, act=False)
    x = torch.randn(2, 6, 9, 7) * 3 + 1
    with torch.no_grad():
        y, ref = layer(x), conv(x)
    assert rel_err(y, ref) < 1e-5
    # the offset really is non-trivial at the border: the correction map is not constant there
    corr = layer.let_correction(x)
    if pad:
        assert not torch.allclose(corr[..., 0, 0], corr[..., corr.shape[-2] // 2, corr.shape[-1] // 2])


def test_let_conv1d_equals_fp():
    torch.manual_seed(2)
    conv = nn.Conv1d(4, 3, 3, padding=1)
    layer = QuantConv(conv, split=False, let_form="consistent", **KW)
    randomise_let(layer)
    set_quant_state(layer, weight=False, act=False)
    x = torch.randn(2, 4, 11)
    with torch.no_grad():
        assert rel_err(layer(x), conv(x)) < 1e-5


@pytest.mark.parametrize("shape", [(3, 8), (2, 5, 8)])
def test_let_linear_equals_fp(shape):
    torch.manual_seed(3)
    lin = nn.Linear(8, 6)
    layer = QuantLinear(lin, split=True, let_form="consistent", **KW)
    randomise_let(layer)
    set_quant_state(layer, weight=False, act=False)
    x = torch.randn(*shape) * 2
    with torch.no_grad():
        assert rel_err(layer(x), lin(x)) < 1e-5


def test_reference_form_linear_adds_twice_the_offset():
    # PassionSR's public code: x' = (x + o)/s with + W o, i.e. Wx + 2Wo + b without quantization
    torch.manual_seed(4)
    lin = nn.Linear(8, 6)
    layer = QuantLinear(lin, split=False, let_form="reference", **KW)
    randomise_let(layer)
    set_quant_state(layer, weight=False, act=False)
    x = torch.randn(4, 8)
    with torch.no_grad():
        expected = lin(x) + 2 * (lin.weight @ layer.let_offset)
        assert rel_err(layer(x), expected) < 1e-5


def _calibrated(layer, x):
    layer.a_quant[0].observer = layer.a_quant[1].observer = "minmax"
    for q in list(layer.w_quant) + [layer.b_quant]:
        q.observer = "minmax"
    with torch.no_grad():
        layer(x)
    for q in layer.quantizers():
        q.observer = None


def test_split_token_halves_for_3d_linear_inputs():
    """3-D (B, N, C) inputs: the two activation quantizers cover the first and second half of the tokens."""
    torch.manual_seed(5)
    lin = nn.Linear(8, 4)
    layer = QuantLinear(lin, split=True, let_form="consistent", **{**KW, "use_let": False})
    x = torch.randn(1, 7, 8)
    x[:, 3:] *= 50  # second token half has a much larger range
    _calibrated(layer, x)
    assert layer.a_quant[0].x_max.item() == pytest.approx(x[:, :3].max().item())
    assert layer.a_quant[1].x_max.item() == pytest.approx(x[:, 3:].max().item())
    # manual: token halves by activation quantizers, input-channel halves by weight quantizers
    xa = torch.cat([fake_quantize(x[:, :3], layer.a_quant[0].x_min, layer.a_quant[0].x_max, QuantSpec(8)),
                    fake_quantize(x[:, 3:], layer.a_quant[1].x_min, layer.a_quant[1].x_max, QuantSpec(8))], dim=1)
    w = lin.weight
    wq = torch.cat([fake_quantize(w[:, :4], layer.w_quant[0].x_min[:, None], layer.w_quant[0].x_max[:, None], QuantSpec(8)),
                    fake_quantize(w[:, 4:], layer.w_quant[1].x_min[:, None], layer.w_quant[1].x_max[:, None], QuantSpec(8))], dim=1)
    bq = fake_quantize(lin.bias, layer.b_quant.x_min, layer.b_quant.x_max, QuantSpec(8))
    with torch.no_grad():
        assert torch.allclose(layer(x), xa @ wq.T + bq, atol=1e-5)


def test_split_channel_halves_for_conv():
    torch.manual_seed(6)
    conv = nn.Conv2d(6, 3, 3, padding=1)
    layer = QuantConv(conv, split=True, let_form="consistent", **{**KW, "use_let": False})
    x = torch.randn(2, 6, 5, 5)
    x[:, 3:] *= 20
    _calibrated(layer, x)
    assert layer.a_quant[0].x_max.item() == pytest.approx(x[:, :3].max().item())
    assert layer.a_quant[1].x_max.item() == pytest.approx(x[:, 3:].max().item())
    assert layer.w_quant[0].x_max.shape == (3,)


def test_quantized_let_conv_close_to_fp_and_differs_from_it():
    torch.manual_seed(7)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    layer = QuantConv(conv, split=True, let_form="consistent", **KW)
    x = torch.randn(2, 8, 12, 12)
    layer.let_observer = True
    _calibrated(layer, x)
    layer.let_observer = False
    with torch.no_grad():
        y, ref = layer(x), conv(x)
    sqnr = 10 * torch.log10(ref.pow(2).mean() / (y - ref).pow(2).mean()).item()
    assert 25 < sqnr < 80  # quantized (not exact) but close at 8 bits
