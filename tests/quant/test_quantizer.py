"""LBQ quantizer on hand-computed cases (spec section 2): ties, clamping, 6/8 bit, all modes."""
import pytest
import torch

from passion_deploy.quant.quantizer import LBQuantizer, QuantSpec, fake_quantize, round_half_away


def fq(x, lo, hi, **spec):
    return fake_quantize(torch.tensor(x), torch.tensor(lo), torch.tensor(hi), QuantSpec(**spec)).tolist()


def test_round_half_away_from_zero():
    v = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, -0.49])
    assert round_half_away(v).tolist() == [1, 2, 3, -1, -2, -3, 0, 0]


def test_asym_unsigned_8bit():
    # D = (14.9375 + 1) / 255 = 0.0625 exactly, zp = R(-1 / 0.0625) = -16
    x = [0.03125, -0.03125, 0.09375, 100.0, -5.0, 1.0]
    assert fq(x, -1.0, 14.9375, bits=8) == [0.0625, -0.0625, 0.125, 14.9375, -1.0, 1.0]


def test_asym_unsigned_6bit():
    # D = 15.75 / 63 = 0.25, zp = 0, codes 0..63
    assert fq([0.125, -0.125, 20.0, 0.375], 0.0, 15.75, bits=6) == [0.25, 0.0, 15.75, 0.5]


def test_symmetric_6bit():
    # D = max(|2|, |-3|) / 2^5 = 0.09375, codes -32..31
    x = [0.046875, -0.046875, 3.0, -3.0, 0.1]
    assert fq(x, -3.0, 2.0, bits=6, sym=True) == [0.09375, -0.09375, 2.90625, -3.0, 0.09375]


def test_asym_signed_8bit():
    # D = 0.0625, zp = R((14.9375 - 1) / (2 * 0.0625)) = R(111.5) = 112, codes -128..127
    x = [0.03125, 100.0, -5.0]
    assert fq(x, -1.0, 14.9375, bits=8, sign=True) == [0.0625, 14.9375, -1.0]


def test_sym_implies_signed_grid():
    assert QuantSpec(8, sym=True).qmin == -128 and QuantSpec(8, sym=True).qmax == 127
    assert QuantSpec(6).qmin == 0 and QuantSpec(6).qmax == 63
    with pytest.raises(ValueError):
        QuantSpec(9)


def test_straight_through_gradients():
    q = LBQuantizer(QuantSpec(8))
    q.x_min.data.fill_(-1.0)
    q.x_max.data.fill_(14.9375)
    q.initialized.fill_(True)
    x = torch.tensor([0.3, 0.71, 100.0, -5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]  # identity inside the range, zero where clamped
    assert q.x_max.grad is not None and q.x_min.grad is not None


def test_per_channel_weight_ranges_and_observer():
    q = LBQuantizer(QuantSpec(8), channels=2)
    w = torch.tensor([[[-1.0, 1.0, 0.3]], [[0.0, 100.0, 0.3]]])
    q.observer = "minmax"
    out = q(w)
    assert q.x_min.tolist() == [-1.0, 0.0] and q.x_max.tolist() == [1.0, 100.0]
    # each channel has its own step: 2/255 and 100/255; 0.3 lands on different grid points
    d0, d1 = 2 / 255, 100 / 255
    assert (out[0] - w[0]).abs().max() <= d0 / 2 + 1e-6
    assert out[1, 0, 2].item() == pytest.approx(d1)  # 0.3 / d1 = 0.77 -> code 1
    assert out[1, 0, 0].item() == 0.0


def test_activation_ema():
    q = LBQuantizer(QuantSpec(8))
    q.observer = "ema"
    q(torch.tensor([-1.0, 1.0]))
    q(torch.tensor([-3.0, 5.0]))
    assert q.x_min.item() == pytest.approx(0.95 * -1 + 0.05 * -3)
    assert q.x_max.item() == pytest.approx(0.95 * 1 + 0.05 * 5)


def test_uncalibrated_quantizer_refuses():
    with pytest.raises(RuntimeError, match="calibration"):
        LBQuantizer(QuantSpec(8))(torch.zeros(3))
