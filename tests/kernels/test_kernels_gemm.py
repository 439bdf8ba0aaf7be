"""Activation quantization and the integer (implicit) GEMM kernels in Triton's interpreter.

Each case checks three things: the kernel's int32 parts equal the int64 reference bit for bit,
its output equals the reference's float64 output to float rounding, and the whole layer
(quantize + GEMM) equals the fake-quant QuantLinear / QuantConv and the IR's `run_layer`.
Shapes are tiny (the interpreter is slow) but never multiples of the blocks."""
import numpy as np
import pytest
import torch
from torch import nn

from passion_deploy.kernels import use_interpreter_without_gpu

use_interpreter_without_gpu()
pytest.importorskip("triton", reason="the kernels need triton (pip install triton)")

from passion_deploy.export.ir import int_algebra as ia  # noqa: E402
from passion_deploy.export.ir import packing  # noqa: E402
from passion_deploy.export.ir.plan import layer_plan  # noqa: E402
from passion_deploy.export.ir.recipes import layer_recipe, run_layer  # noqa: E402
from passion_deploy.export.targets.triton.layers import KernelLayer  # noqa: E402
from passion_deploy.export.targets.triton.operands import encoding, kernel_act, pack_weights, taps_last  # noqa: E402
from passion_deploy.kernels import reference as ref  # noqa: E402
from passion_deploy.kernels.act_quant import act_quant  # noqa: E402
from passion_deploy.kernels.gemm import qgemm  # noqa: E402
from passion_deploy.kernels.operands import WEIGHT_DTYPE  # noqa: E402
from passion_deploy.quant.layers import QuantConv, QuantLinear  # noqa: E402
from passion_deploy.quant.quantizer import LBQuantizer, QuantSpec  # noqa: E402
from calib_helpers import calibrated_layer  # noqa: E402

SPECS = {"w8a8": QuantSpec(8), "w6a6": QuantSpec(6), "w8a8-sym": QuantSpec(8, sym=True),
         "w6a6-signed": QuantSpec(6, sign=True)}
BLOCK = (64, 32, 32)  # one N tile and few M tiles: the interpreter pays per program
SMALL = (16, 16, 32)  # several tiles in M and N, to exercise the tile offsets


def make(kind, spec, split, cin, cout=19, one_signed=False, **kw):
    torch.manual_seed(0)
    mod = nn.Conv2d(cin, cout, **kw) if kind == "conv" else nn.Linear(cin, cout)
    if one_signed:  # weight zero point outside int8: the B' residual path
        with torch.no_grad():
            mod.weight[2] = mod.weight[2].abs() * 0.2 + 0.5  # zp beyond int8 at 6 bits too
    cls = QuantConv if kind == "conv" else QuantLinear
    return cls(mod, wspec=SPECS[spec], aspec=SPECS[spec], split=split, use_let=True, let_form="consistent",
               s_alpha=0.5, only_weight=False)


def assert_close(y, want, rel):
    y, want = y.double(), want.double()
    err = (y - want).abs().max().item()
    assert err <= rel * want.abs().max().item(), f"max abs err {err} vs scale {want.abs().max().item()}"


def ref_weights(rec):
    """The reference's weights: int_algebra's operands of the recipe's codes, in the layer's own
    layout (never through the packed bytes the kernel reads)."""
    out = []
    for g in rec.weights:
        op = ia.weight_operand(np.asarray(g.codes).astype(np.int64), g.grid, WEIGHT_DTYPE)
        out.append(ref.RefWeights(g.k0, g.k1, op.values, op.zero, op.residual, op.step))
    return out


def check_ints(codes, a_ops, rec, acc, rs, spatial=None):
    """Kernel int32 parts == int64 reference; returns the reference's float64 output."""
    kw = {} if spatial is None else dict(spatial=spatial, stride=rec.stride[0], padding=rec.padding[0])
    ex, sums, y = ref.qgemm_ref(codes, a_ops, ref_weights(rec), **kw)
    assert torch.equal(acc.long(), ex), "int32 accumulators differ from the int64 reference"
    assert torch.equal(rs.long(), sums), "row sums differ from the int64 reference"
    return y


# -- activation quantization ----------------------------------------------------------------

def grid(lo, hi, spec):
    q = LBQuantizer(spec)
    q.x_min.data.fill_(lo)
    q.x_max.data.fill_(hi)
    q.initialized.fill_(True)
    return ia.grid_of(q)


@pytest.mark.parametrize("dtype", ["u8", "s8"])
@pytest.mark.parametrize("case", ["let-split", "div-rows", "mul", "wide"])
def test_act_quant_matches_reference_and_fake_quant(dtype, case):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 23, 13, generator=g) * 3
    spec = QuantSpec(8) if dtype == "u8" else QuantSpec(6)
    grids = [grid(-4.0, 5.0, spec)]
    kw = {}
    if case == "let-split":
        grids.append(grid(-1.0, 7.5, spec))
        kw = dict(pre="let", scale=torch.rand(13, generator=g) + 0.5, offset=torch.randn(13, generator=g))
    elif case == "div-rows":
        kw = dict(pre="div", scale=torch.rand(23, generator=g) + 0.5, vec_on_rows=True)
    elif case == "mul":
        kw = dict(pre="mul", scale=torch.rand(13, generator=g) + 0.5)
    else:  # a range that excludes 0: the operand zero point does not fit 8 bits
        x = torch.rand(2, 23, 13, generator=g) * 9 + 39  # some values clamp on both sides
        grids = [grid(40.0, 47.0, spec)]
    ir_ops = [ia.act_operand(gr, dtype) for gr in grids]
    assert ir_ops[0].wide == (case == "wide")
    ops = [kernel_act(op) for op in ir_ops]
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # strided input (channel stride != 1)
    codes = act_quant(xt, ops, c_split=6 if len(ops) == 2 else None, block=(16, 8), **kw)
    assert codes.dtype == (torch.uint8 if dtype == "u8" else torch.int8)
    want = ref.act_quant_ref(x, ops, 6, **kw)
    assert torch.equal(codes.long(), want)
    # grid values j = operand - zero + residual are the fake-quant's codes q + zp, per half,
    # and the kernels' reference operands are int_algebra's
    xs = ref.pre_op(x, kw.get("pre", "none"), kw.get("scale"), kw.get("offset"), kw.get("vec_on_rows", False))
    bounds = [(0, 6), (6, 13)] if len(ops) == 2 else [(0, 13)]
    for (c0, c1), op, ir_op, gr in zip(bounds, ops, ir_ops, grids):
        j = ia.quant_codes(xs[..., c0:c1], gr) + float(gr.zp)
        assert torch.equal(codes[..., c0:c1].long() - op.kernel_zero + op.residual, j.long())
        assert torch.equal(want[..., c0:c1], ia.act_operand_values(xs[..., c0:c1], ir_op).long())


def test_act_quant_rejects_bad_shapes():
    op = kernel_act(ia.act_operand(grid(-1.0, 1.0, QuantSpec(8))))
    with pytest.raises(ValueError, match=r"\(B, P, C\)"):
        act_quant(torch.zeros(3, 4), [op])
    with pytest.raises(ValueError, match="split point"):
        act_quant(torch.zeros(1, 3, 4), [op, op])
    with pytest.raises(ValueError, match="scale of shape"):
        act_quant(torch.zeros(1, 3, 4), [op], pre="div", scale=torch.ones(3))


# -- weight packing in the kernel's layout ----------------------------------------------------

@pytest.mark.parametrize("spec", ["w6a6", "w8a8-sym"])
def test_packed_weights_unpack_to_the_int_algebra_operands(spec):
    layer = make("conv", spec, True, 7, kernel_size=3, padding=1)
    calibrated_layer(layer, torch.randn(1, 7, 5, 5))
    rec = layer_recipe("c", layer)
    pw = pack_weights(layer_plan(rec, 4, encoding()))
    for gi, g in enumerate(rec.weights):
        codes = taps_last(g.codes.astype(np.int64))
        n, taps, cg = codes.shape
        cpad = -cg % 4 if g.grid.bits == 6 else 0
        blob = pw.data[gi].numpy()[:, :, : packing.packed_nbytes(cg + cpad, g.grid.bits)]
        u = packing.unpack(blob.reshape(-1), n * taps * (cg + cpad), g.grid.bits, g.grid.signed)
        u = u.reshape(n, taps, cg + cpad)[:, :, :cg].astype(np.int64) - g.grid.qmin
        op = ia.weight_operand(codes, g.grid, "s8")
        np.testing.assert_array_equal(u + pw.offset, op.values.astype(np.int64))
        np.testing.assert_array_equal(pw.colsum[gi].numpy(), op.values.astype(np.int64).reshape(n, -1).sum(1))


# -- linear layers ----------------------------------------------------------------------------

LINEAR_CASES = {
    # name: (spec, split, input shape, activation dtype, block, special)
    "w8a8-2d-u8": ("w8a8", False, (13, 21), "u8", BLOCK, None),
    "w8a8-split-channels-tiles": ("w8a8", True, (37, 40), "u8", SMALL, None),
    "w6a6-split-tokens-s8": ("w6a6", True, (2, 11, 21), "s8", BLOCK, None),
    "w6a6-signed-3d": ("w6a6-signed", False, (2, 5, 17), "u8", BLOCK, None),
    "w8a8-residuals": ("w8a8", False, (9, 21), "u8", BLOCK, "residuals"),
    "w8a8-fp16": ("w8a8", True, (2, 7, 18), "u8", BLOCK, "fp16"),
    # int6 words across K blocks: 75-channel halves are 18 whole 3-byte words and one with 3
    # codes, read in K blocks of 32 (3 blocks, the last 11 channels) and of 64 or 128
    "w6a6-split-deep-k-bk32": ("w6a6", True, (9, 150), "u8", (16, 32, 32), None),
    "w6a6-deep-k-bk64": ("w6a6", False, (2, 5, 150), "s8", (16, 16, 64), None),
    "w6a6-signed-bk128": ("w6a6-signed", False, (7, 130), "u8", (16, 32, 128), None),
}


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_kernel(case):
    spec, split, shape, dtype, block, special = LINEAR_CASES[case]
    layer = make("linear", spec, split, shape[-1], one_signed=special == "residuals")
    x = torch.randn(*shape) * 2 - 0.2
    if special == "residuals":
        x = torch.rand(*shape) + 5.0  # all positive: activation grid outside the operand type
    calibrated_layer(layer, x, let=special != "residuals")
    rec = layer_recipe("lin", layer)
    kl = KernelLayer(rec, act_dtype=dtype, block=block, act_block=(64, 32))
    acts = [kernel_act(ia.act_operand(g, dtype)) for g in rec.acts]
    if special == "residuals":
        assert acts[0].residual != 0 and kl.weights.has_residual
    out_dtype = torch.float16 if special == "fp16" else torch.float32
    y, parts = kl(x, out_dtype, store_int=True)
    assert y.dtype == out_dtype and y.shape == shape[:-1] + (19,)
    x3 = x.reshape(1, -1, shape[-1]) if x.dim() != 3 else x
    if rec.act_split_on_tokens(x.dim()):
        h = shape[1] // 2
        halves = [((0, h), [0]), ((h, shape[1]), [1])]  # indices of the activation operands
    else:
        halves = [((0, x3.shape[1]), list(range(len(acts))))]
    y_ref = []
    rows = kl.plan(x.dim()).rows
    for ((r0, r1), idx), (codes, acc, rs), row in zip(halves, parts, rows, strict=True):
        xs = ref.pre_op(x3[:, r0:r1], "let", torch.from_numpy(rec.let_scale), torch.from_numpy(rec.let_input_offset))
        assert torch.equal(codes.long(), ref.act_quant_ref(xs, [acts[i] for i in idx], rec.weights[0].k1))
        gemm_idx = idx if len(idx) == len(rec.weights) else idx * len(rec.weights)
        y_ref.append(check_ints(codes, [acts[i] for i in gemm_idx], rec, acc, rs) + torch.from_numpy(row.bias))
    y_ref = torch.cat(y_ref, dim=1).reshape(*shape[:-1], -1)
    rel = 1e-3 if out_dtype == torch.float16 else 2e-6
    assert_close(y, y_ref, rel)
    with torch.no_grad():
        assert_close(y, layer(x), rel)
    assert_close(y, run_layer(rec, x), rel)


def test_linear_kernel_checks_shapes():
    layer = make("linear", "w8a8", False, 8)
    calibrated_layer(layer, torch.randn(3, 8))
    kl = KernelLayer(layer_recipe("lin", layer))
    (row,) = kl.launches[False]
    with pytest.raises(ValueError, match="input channels"):
        qgemm(torch.zeros(1, 3, 9, dtype=torch.uint8), row.gemm, kl.weights, row.epilogue)
    with pytest.raises(ValueError, match="uint8/int8"):
        qgemm(torch.zeros(1, 3, 8), row.gemm, kl.weights, row.epilogue)
    with pytest.raises(ValueError, match="one s8 activation operand"):
        qgemm(torch.zeros(1, 3, 8, dtype=torch.int8), row.gemm, kl.weights, row.epilogue)


# -- convolutions ---------------------------------------------------------------------------------

CONV_CASES = {
    # name: (spec, split, geometry, input shape, activation dtype, special)
    "3x3s1-w8a8-split-u8": ("w8a8", True, dict(kernel_size=3, padding=1), (2, 7, 9, 7), "u8", None),
    "3x3s2-w6a6-s8": ("w6a6", False, dict(kernel_size=3, padding=1, stride=2), (1, 7, 9, 7), "s8", None),
    "3x3s2-w6a6-split-even": ("w6a6", True, dict(kernel_size=3, padding=1, stride=2), (1, 6, 8, 6), "u8", None),
    "1x1-w8a8-sym-split": ("w8a8-sym", True, dict(kernel_size=1), (1, 9, 5, 7), "u8", None),
    "3x3s1-residuals": ("w8a8", False, dict(kernel_size=3, padding=1), (1, 7, 6, 5), "u8", "residuals"),
    "3x3s1-w6a6-residuals-fp16": ("w6a6", True, dict(kernel_size=3, padding=1), (1, 7, 6, 5), "s8", "residuals"),
    # every tap's row of 6-bit codes ends in a partial word (75 = 4 * 18 + 3), over 3 K blocks
    "3x3s1-w6a6-deep-k": ("w6a6", False, dict(kernel_size=3, padding=1), (1, 75, 5, 4), "u8", None),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_kernel(case):
    spec, split, geom, shape, dtype, special = CONV_CASES[case]
    layer = make("conv", spec, split, shape[1], one_signed=special == "residuals", **geom)
    x = torch.randn(*shape) * 2 + 0.3
    if special == "residuals":
        x = torch.rand(*shape) + 5.0  # zp beyond 8 bits: padded taps need the activation-residual map
    calibrated_layer(layer, x, let=special != "residuals")
    rec = layer_recipe("conv", layer)
    kl = KernelLayer(rec, act_dtype=dtype, block=BLOCK, act_block=(64, 32))
    acts = [kernel_act(ia.act_operand(g, dtype)) for g in rec.acts]
    if special == "residuals":
        assert all(a.residual != 0 for a in acts) and kl.weights.has_residual
    out_dtype = torch.float16 if case.endswith("fp16") else torch.float32
    y, codes, acc, rs = kl(x, out_dtype, store_int=True)
    with torch.no_grad():
        fq = layer(x)
    assert y.shape == fq.shape and y.dtype == out_dtype
    spatial = tuple(shape[2:])
    ops = acts if len(acts) == len(rec.weights) else acts * len(rec.weights)
    ep = kl.conv_epilogue
    dense = kl.plans[False].border_map(spatial)  # the reference adds the plan's dense map
    dense = None if dense is None else dense.reshape(dense.shape[0], -1).t().float()
    assert (dense is None) == (ep.border is None)
    y_ref = check_ints(codes, ops, rec, acc, rs, spatial)
    y_ref = y_ref + (0 if ep.bias is None else ep.bias.double()) + (0 if dense is None else dense.double())
    y_ref = y_ref.view(shape[0], *fq.shape[2:], -1).permute(0, 3, 1, 2)
    rel = 1e-3 if out_dtype == torch.float16 else 2e-6
    assert_close(y, y_ref, rel)
    assert_close(y, fq, rel)
    assert_close(y, run_layer(rec, x), rel)
    if any(rec.padding):  # the border rows really differ: the map is not a per-channel constant
        assert dense is not None and not torch.allclose(dense[0], dense[dense.shape[0] // 2])
