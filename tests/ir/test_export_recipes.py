"""Deploy-IR recipes and the integer algebra, each layer kind against its fake-quant layer.

`run_layer` / `run_attention` compute with integer operands, zero points and compensation
terms only (int_algebra); they must reproduce the fake-quant function to float precision."""
import numpy as np
import pytest
import torch
from torch import nn

from passion_deploy.export.ir import int_algebra as ia
from passion_deploy.export.ir.recipes import layer_recipe, run_attention, run_layer
from passion_deploy.quant.layers import QuantConv, QuantLinear
from passion_deploy.quant.quantizer import QuantSpec
from calib_helpers import attention_probe, calibrated_layer

SPECS = {
    "w8a8": (QuantSpec(8), QuantSpec(8)),
    "w6a6": (QuantSpec(6), QuantSpec(6)),
    "w8a8-sym": (QuantSpec(8, sym=True), QuantSpec(8, sym=True)),
    "w6a6-signed": (QuantSpec(6, sign=True), QuantSpec(6, sign=True)),
}


def make(kind, spec, split, let=True, let_form="consistent", **kw):
    torch.manual_seed(0)
    wspec, aspec = SPECS[spec]
    mod = nn.Conv2d(6, 5, **kw) if kind == "conv" else nn.Linear(8, 6)
    cls = QuantConv if kind == "conv" else QuantLinear
    return cls(mod, wspec=wspec, aspec=aspec, split=split, use_let=let, let_form=let_form, s_alpha=0.5, only_weight=False)


def assert_close(y, ref, tol=2e-6):
    err = (y - ref).abs().max().item()
    assert err <= tol * ref.abs().max().item(), f"max abs err {err} vs scale {ref.abs().max().item()}"


CONVS = {"3x3s1": dict(kernel_size=3, padding=1), "3x3s2": dict(kernel_size=3, stride=2, padding=1),
         "1x1": dict(kernel_size=1), "3x3pad0": dict(kernel_size=3)}


@pytest.mark.parametrize("geom", list(CONVS))
@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("isa", ["portable", "vnni"])
def test_conv_recipe_matches_fake_quant(geom, spec, split, isa):
    layer = make("conv", spec, split, **CONVS[geom])
    x = torch.randn(2, 6, 9, 7) * 2 + 0.3
    calibrated_layer(layer, x)
    rec = layer_recipe("conv", layer)
    assert rec.let_taps is not None and len(rec.weights) == (2 if split else 1)
    with torch.no_grad():
        assert_close(run_layer(rec, x, isa), layer(x))


@pytest.mark.parametrize("shape", [(3, 8), (2, 10, 8), (1, 7, 8)])
@pytest.mark.parametrize("spec", list(SPECS))
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("let_form", ["consistent", "reference"])
def test_linear_recipe_matches_fake_quant(shape, spec, split, let_form):
    layer = make("linear", spec, split, let_form=let_form)
    x = torch.randn(*shape) * 2 - 0.2
    calibrated_layer(layer, x)
    rec = layer_recipe("lin", layer)
    with torch.no_grad():
        assert_close(run_layer(rec, x), layer(x))


def test_token_split_uses_two_activation_grids():
    layer = make("linear", "w8a8", True)
    x = torch.randn(1, 10, 8)
    x[:, 5:] *= 10  # second token half has a much wider range
    calibrated_layer(layer, x)
    rec = layer_recipe("lin", layer)
    assert rec.act_split_on_tokens(3)
    assert rec.acts[1].step > 5 * rec.acts[0].step
    with torch.no_grad():
        assert_close(run_layer(rec, x), layer(x))


def test_conv_without_let_and_zero_offset_has_no_correction():
    layer = make("conv", "w8a8", False, let=False, kernel_size=3, padding=1)
    x = torch.randn(1, 6, 8, 8)
    calibrated_layer(layer, x, let=False)
    rec = layer_recipe("c", layer)
    assert rec.let_scale is None and rec.let_taps is None
    with torch.no_grad():
        assert_close(run_layer(rec, x), layer(x))


def test_one_signed_weight_channel_and_out_of_range_activation_grid():
    """Residual paths: a channel whose weights are all positive (weight zero point outside the
    operand type: + B' * window sums) and an all-positive activation range (zp > 0: pad taps
    corrected by a static map)."""
    layer = make("conv", "w8a8", True, kernel_size=3, padding=1)
    with torch.no_grad():
        layer.weight[2] = layer.weight[2].abs() + 0.05
    x = torch.rand(1, 6, 8, 8) + 1.0  # all positive
    calibrated_layer(layer, x, let=False)
    rec = layer_recipe("c", layer)
    aop = ia.act_operand(rec.acts[0])
    assert aop.wide and aop.residual != 0
    for isa in ("portable", "vnni"):
        wop = ia.weight_operand(rec.weights[0].codes, rec.weights[0].grid, "u8" if isa == "portable" else "s8")
        assert wop.has_residual and wop.residual[2] != 0 and not wop.residual[[0, 1, 3, 4]].any()
        with torch.no_grad():
            assert_close(run_layer(rec, x, isa), layer(x))


@pytest.mark.parametrize("bits", [8, 6])
@pytest.mark.parametrize("cross", [False, True])
def test_attention_recipe_matches_fake_quant(bits, cross):
    rec, q, k, v, ref = attention_probe(bits, cross, tokens=12)
    with torch.no_grad():
        for isa in ("portable", "vnni"):
            out = run_attention(rec, q, k, v, isa)
            # scores agree to float rounding; a P code may flip where P*s_vw/D sits within
            # rounding of a half step, which moves an output by at most one P step times |v|
            bound = float(rec.p.step) * float(v.abs().max() / torch.from_numpy(rec.s_vw).min()) * 2
            assert (out - ref).abs().max().item() <= max(bound, 1e-6 * ref.abs().max().item())
            assert ((out - ref).abs() > 1e-5 * ref.abs().max()).float().mean() < 0.05


@pytest.mark.parametrize("spec", list(SPECS))
def test_act_operand_reproduces_grid_values(spec):
    aspec = SPECS[spec][1]
    for lo, hi in [(-3.0, 5.0), (0.5, 4.0), (-6.0, -2.0), (0.0, 1.0)]:
        from passion_deploy.quant.quantizer import LBQuantizer
        qz = LBQuantizer(aspec)
        qz.x_min.data.fill_(lo)
        qz.x_max.data.fill_(hi)
        qz.initialized.fill_(True)
        grid = ia.grid_of(qz)
        x = torch.linspace(lo - 2, hi + 2, 1001)
        j = ia.quant_codes(x, grid) + float(grid.zp)
        for dtype in ("u8", "s8"):
            op = ia.act_operand(grid, dtype)
            a = ia.act_operand_values(x, op)
            lo_t, hi_t = ia.DTYPE_RANGE[dtype]
            assert a.min() >= lo_t and a.max() <= hi_t
            assert lo_t <= op.kernel_zero <= hi_t
            torch.testing.assert_close(a - op.kernel_zero + op.residual, j, rtol=0, atol=0)
            assert (op.residual != 0) == op.wide


def test_weight_operand_and_signed_shift():
    rng = np.random.default_rng(0)
    for bits, signed in [(8, False), (6, False), (8, True), (6, True)]:
        lo = -(1 << (bits - 1)) if signed else 0
        codes = rng.integers(lo, lo + (1 << bits), (4, 10))
        zp = np.array([-(1 << bits) + 1, 0, -3, 400]) if not signed else np.array([0, 3, -7, 300])
        grid = ia.Grid(np.ones(4, np.float32), zp, bits, signed)
        j = codes + zp[:, None]
        for dtype in ("u8", "s8"):
            op = ia.weight_operand(codes, grid, dtype)
            rebuilt = op.values.astype(np.int64) - op.zero.astype(np.int64)[:, None] + op.residual[:, None]
            np.testing.assert_array_equal(rebuilt, j)
            assert op.residual[3] != 0 and not op.residual[:3].any()
        sw = ia.sym_weight(codes, grid)
        assert sw.values.dtype == np.int8
        np.testing.assert_array_equal(sw.values.astype(np.int64) + sw.shift[:, None], j)
        if bits == 6:  # a 6-bit grid containing 0 needs no shift
            assert sw.shift[1] == 0


@pytest.mark.parametrize("bits,signed,zp", [(8, False, -37), (8, False, 0), (8, False, 400), (6, False, -20),
                                            (6, False, 90), (8, True, 5), (6, True, -3)])
def test_symmetric_act_operand_reproduces_the_grid(bits, signed, zp):
    """TensorRT's int8 (zero point 0): clip(round(x/D - c), lo, hi) + c == the fake-quant's j."""
    grid = ia.Grid(np.float32(0.05), np.int64(zp), bits, signed)
    op = ia.sym_act(grid)
    assert -128 <= op.lo <= op.hi <= 127 and op.hi - op.lo == (1 << bits) - 1
    if bits == 6 and -64 <= zp <= 64:
        assert op.shift == 0  # 6-bit grids around 0 fit int8 as they are: no compensation
    if bits == 8:
        assert op.shift == int(grid.jmin()) + 128  # the spec's c = zp + 2^(b-1) for unsigned grids
    x = torch.linspace(float(grid.jmin()) - 20, float(grid.jmax()) + 20, 4001) * 0.05
    j = ia.quant_codes(x, grid) + zp
    m = torch.clamp(torch.round(x / 0.05 - op.shift), op.lo, op.hi)
    keep = ((x / 0.05).frac().abs() - 0.5).abs() > 1e-3  # ties round differently (half-even vs half-away)
    torch.testing.assert_close((m + op.shift)[keep], j[keep], rtol=0, atol=0)


def test_kernel_choice_respects_int16_saturation():
    a8 = ia.act_operand(ia.Grid(np.float32(0.1), np.int64(-100), 8, False))
    a6 = ia.act_operand(ia.Grid(np.float32(0.1), np.int64(-10), 6, False))
    assert a8.max_abs == 255 and a6.max_abs == 63
    assert ia.choose_weight_dtype(a8, 8, "portable") == "u8"
    assert ia.choose_weight_dtype(a8, 6, "portable") == "s8"  # 2*255*32 fits int16
    assert ia.choose_weight_dtype(a6, 8, "portable") == "s8"  # 2*63*128 fits int16
    assert ia.choose_weight_dtype(a8, 8, "vnni") == "s8"
    with pytest.raises(ValueError, match="unknown ISA"):
        ia.choose_weight_dtype(a8, 8, "avx9")


def test_ones_conv_map_is_exact_at_borders():
    taps = torch.arange(1.0, 10.0).view(1, 3, 3)
    m = ia.ones_conv_map(taps, (4, 5), (1, 1), (1, 1), (1, 1))
    assert m[0, 1, 1] == 45  # interior: all nine taps
    assert m[0, 0, 0] == 5 + 6 + 8 + 9  # corner: the four taps that see the image
