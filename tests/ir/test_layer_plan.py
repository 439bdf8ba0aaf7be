"""The layer plan (export/ir/plan.py) on its own: executed with plain integer GEMMs in float64
(no ONNX), it must reproduce the IR's integer reference (recipes.run_layer) and the fake-quant
layer, for every target's operand encodings; its structure must follow the split rule and
int_algebra's offsets."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from passion_deploy.export.ir import int_algebra as ia
from passion_deploy.export.ir.plan import LayerPlan, fold_constants, layer_plan
from passion_deploy.export.ir.recipes import run_layer, transform_input
from passion_deploy.export.targets.onnx.lower import encoding
from passion_deploy.export.targets.triton.operands import encoding as kernel_encoding
from passion_deploy.export.qdq.lower import ENCODING as SYM
from passion_deploy.quant.layers import split_point
from layer_graphs import BITS, check, conv_case, far_from_zero_case, linear_case, weight_only_case

ENCODINGS = {"onnx": encoding("portable"), "onnx-vnni": encoding("vnni"), "trt": SYM,
             "triton": kernel_encoding("u8"), "triton-s8": kernel_encoding("s8")}


def centered_operand(x: torch.Tensor, op) -> torch.Tensor:
    """(operand - kernel zero) of float x: what the integer GEMM multiplies."""
    if isinstance(op, ia.ActOperand):
        return ia.act_operand_values(x, op).double() - op.kernel_zero
    v = x.double() / float(op.step)  # ia.SymAct: m = clip(round(x / D) - c, lo, hi)
    return torch.clamp(torch.sign(v) * torch.floor(v.abs() + 0.5) - op.shift, op.lo, op.hi)


def gemm(plan: LayerPlan, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    rec = plan.rec
    if rec.kind == "conv":
        return F.conv2d(a, w, None, rec.stride, rec.padding, rec.dilation)
    return a @ w.reshape(w.shape[0], -1).t()


def execute(plan: LayerPlan, x: torch.Tensor) -> torch.Tensor:
    """The plan run the way a target runs it: per row block and K-group an integer GEMM whose
    extra all-ones column carries the weight offsets, then the plan's bias and border map."""
    rec = plan.rec
    xs = transform_input(rec, x.double())
    ch_axis = 1 if rec.kind == "conv" else -1
    n = x.shape[1]
    row_parts = [xs[:, :split_point(n)], xs[:, split_point(n):]] if plan.token_halves else [xs]
    shape = (-1, 1, 1) if rec.kind == "conv" else (-1,)
    outs = []
    for part, row in zip(row_parts, plan.rows):
        y = 0
        for g in row.groups:
            a = centered_operand(part.narrow(ch_axis, g.k0, g.k1 - g.k0), g.act)
            values, zero, step = g.columns()
            zero = zero.astype(np.float64).reshape((-1,) + (1,) * (values.ndim - 1))
            w = torch.from_numpy(values.astype(np.float64) - zero)
            acc = gemm(plan, a, w) * float(g.act.step)  # (.., Cout[+1], ..): channels on axis 1 or -1
            acc = acc.movedim(ch_axis, -1)
            yg = acc[..., :g.out_channels] * torch.from_numpy(step[:g.out_channels].astype(np.float64))
            if g.ones_column:
                yg = yg + acc[..., g.out_channels:] * torch.from_numpy(g.ones_coef().astype(np.float64))
            y = y + yg.movedim(-1, ch_axis)
        if row.bias is not None:
            y = y + torch.from_numpy(row.bias).view(shape)
        outs.append(y)
    y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    m = plan.border_map(tuple(x.shape[2:]))  # None but for a padded conv
    return (y if m is None else y + m).float()


def act_offsets(plan: LayerPlan, enc) -> list[bool]:
    """Per GEMM of the first row block: whether its activation operand has an offset from j."""
    pairs = zip(plan.rows[0].groups, plan.rec.weights)
    return [enc.act_taps(g.act, w.dequant().double()) is not None for g, w in pairs]


def weight_offset_flags(rec, enc_name: str) -> list[bool]:
    """Per K-group, whether int_algebra gives its weights an offset from the operand (the all-ones column)."""
    if enc_name == "trt":
        return [ia.sym_weight(g.codes, g.grid).has_shift for g in rec.weights]
    plan = layer_plan(rec, 4 if rec.kind == "conv" else 2, ENCODINGS[enc_name])
    pairs = zip(rec.weights, plan.rows[0].groups)
    return [ia.weight_operand(g.codes, g.grid, pg.weight.dtype).has_residual for g, pg in pairs]


@pytest.mark.parametrize("enc", list(ENCODINGS))
@pytest.mark.parametrize("let", [True, False])
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("bits", list(BITS))
@pytest.mark.parametrize("geom", ["3x3s1", "3x3s2pad0", "1x1"])
def test_conv_plan_reproduces_the_layer(geom, bits, split, let, enc):
    layer, x, ref, rec = conv_case(geom, bits, split, let)
    plan = layer_plan(rec, 4, ENCODINGS[enc])
    y = execute(plan, x)
    check(y.numpy(), run_layer(rec, x).numpy())
    check(y.numpy(), ref)
    assert not plan.token_halves and len(plan.rows) == 1
    # a border map only where padding makes the LET correction or an activation offset (trt's
    # shift of 8-bit grids) depend on the position
    offsets = act_offsets(plan, ENCODINGS[enc])
    assert (plan.map_taps is not None) == (any(rec.padding) and (let or any(offsets)))
    if not (let or any(offsets)):
        np.testing.assert_array_equal(plan.rows[0].bias, rec.bias)


@pytest.mark.parametrize("enc", list(ENCODINGS))
@pytest.mark.parametrize("let", [True, False])
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("bits", list(BITS))
@pytest.mark.parametrize("shape", [(3, 8), (1, 10, 8), (1, 7, 8)])
def test_linear_plan_reproduces_the_layer(shape, bits, split, let, enc):
    layer, x, ref, rec = linear_case(shape, bits, split, let)
    plan = layer_plan(rec, len(shape), ENCODINGS[enc])
    y = execute(plan, x)
    check(y.numpy(), run_layer(rec, x).numpy())
    check(y.numpy(), ref)
    assert plan.map_taps is None
    # a linear's constants all fold into each row's bias: fake-quant bias, LET correction W o and
    # the offsets of that row's own activation operands
    for row in plan.rows:
        want = rec.bias.astype(np.float64) + (rec.let_taps if let else 0)
        for g, w in zip(row.groups, rec.weights):
            taps = ENCODINGS[enc].act_taps(g.act, w.dequant().double())
            want = want + (0 if taps is None else taps.numpy())
        np.testing.assert_allclose(row.bias, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("enc", list(ENCODINGS))
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("shape", [(3, 8), (1, 10, 8)])
def test_split_rule_rows_and_groups(shape, split, enc):
    """Token halves are row blocks with their own grid for every K-group; channel halves (2-D
    inputs, convs) are K-groups with their own grid each; unsplit layers have one of each."""
    _, _, _, rec = linear_case(shape, "w8a8", split)
    e = ENCODINGS[enc]
    plan = layer_plan(rec, len(shape), e)
    acts = [e.act(g) for g in rec.acts]
    assert plan.token_halves == (split and len(shape) == 3)
    assert len(plan.rows) == (2 if plan.token_halves else 1)
    assert plan.row_spans(11) == ([(0, 5), (5, 11)] if plan.token_halves else [(0, 11)])  # the fake-quant's cut
    for ri, row in enumerate(plan.rows):
        assert [(g.k0, g.k1) for g in row.groups] == [(w.k0, w.k1) for w in rec.weights]
        if plan.token_halves:
            assert row.act == acts[ri] and all(g.act == acts[ri] for g in row.groups)
        elif split:
            assert row.act is None and [g.act for g in row.groups] == acts
        else:
            assert row.act == acts[0]
    if plan.token_halves:  # both halves read one weight operand per K-group and weight type
        for g0, g1 in zip(*(r.groups for r in plan.rows)):
            assert g0.key != g1.key or g0.weight is g1.weight


@pytest.mark.parametrize("enc", list(ENCODINGS))
@pytest.mark.parametrize("geom", ["3x3s1", "1x1"])
def test_offsets_far_from_zero(geom, enc):
    """Grids far from 0: weight offsets need the all-ones column exactly where int_algebra says
    so, and the activation offsets (residual or shift) fold into the map or the bias."""
    layer, x, rec, _ = far_from_zero_case(geom)
    e = ENCODINGS[enc]
    plan = layer_plan(rec, 4, e)
    groups = plan.rows[0].groups
    assert [g.ones_column for g in groups] == weight_offset_flags(rec, enc)
    assert any(g.ones_column for g in groups)
    cols = [g.columns() for g in groups if g.ones_column]
    for values, zero, step in cols:  # the all-ones channel: values 1, zero 0, step 1
        assert np.all(values[-1] == 1) and zero[-1] == 0 and step[-1] == 1
    assert any(act_offsets(plan, e))  # inputs in [1, 2]: the grid needs an offset
    assert (plan.map_taps is not None) == any(rec.padding)  # no LET: only the activation offsets
    with torch.no_grad():
        check(execute(plan, x).numpy(), layer(x).numpy())
    check(execute(plan, x).numpy(), run_layer(rec, x).numpy())


def test_fold_constants_and_weight_only():
    """fold_constants: per-tap terms go to the map of a padded conv, else into the bias."""
    _, _, rec, _ = weight_only_case()
    with pytest.raises(ValueError):
        layer_plan(rec, 4, SYM)
    bias, map_taps = fold_constants(rec, [])
    np.testing.assert_array_equal(bias, rec.bias)
    np.testing.assert_allclose(map_taps, rec.let_taps)
    extra = np.ones_like(rec.let_taps, dtype=np.float64)
    np.testing.assert_allclose(fold_constants(rec, [extra])[1], rec.let_taps + 1)
    _, _, _, unpadded = conv_case("3x3s2pad0", "w8a8", False)
    bias, map_taps = fold_constants(unpadded, [])
    assert map_taps is None
    np.testing.assert_allclose(bias, unpadded.bias + unpadded.let_taps.reshape(unpadded.out_channels, -1).sum(1))
