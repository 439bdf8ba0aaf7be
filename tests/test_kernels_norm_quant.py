"""GroupNorm + SiLU + quantize fusion in Triton's interpreter, against torch's GroupNorm and
SiLU followed by the fake-quant conv layer's own LET transform and activation quantizers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from passion_deploy.kernels import use_interpreter_without_gpu

use_interpreter_without_gpu()
pytest.importorskip("triton", reason="the kernels need triton (pip install triton)")

from passion_deploy.export import int_algebra as ia  # noqa: E402
from passion_deploy.export.recipes import layer_recipe  # noqa: E402
from passion_deploy.kernels.norm_quant import groupnorm_silu_quant  # noqa: E402
from passion_deploy.quant.layers import QuantConv  # noqa: E402
from passion_deploy.quant.quantizer import QuantSpec  # noqa: E402
from calib_helpers import calibrated_layer  # noqa: E402


@pytest.mark.parametrize("bits,split,let,dtype", [(8, True, True, "u8"), (6, False, False, "s8")])
def test_groupnorm_silu_quant_matches_the_fake_quant_input(bits, split, let, dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 5, 7) * 3 + 1
    norm = nn.GroupNorm(3, 12, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        h = F.silu(norm(x))
    layer = QuantConv(nn.Conv2d(12, 5, 3, padding=1), wspec=QuantSpec(bits), aspec=QuantSpec(bits), split=split,
                      use_let=let, let_form="consistent", s_alpha=0.5, only_weight=False)
    calibrated_layer(layer, h, let=let)
    rec = layer_recipe("conv", layer)
    ops = [ia.act_operand(g, dtype) for g in rec.acts]
    kw = dict(let_scale=torch.from_numpy(rec.let_scale), let_offset=torch.from_numpy(rec.let_input_offset)) if let else {}
    codes = groupnorm_silu_quant(x, 3, norm.weight.detach(), norm.bias.detach(), norm.eps, ops,
                                 rec.weights[0].k1 if split else None, block=64, **kw)
    assert codes.shape == (2, 35, 12) and codes.dtype == (torch.uint8 if dtype == "u8" else torch.int8)
    # grid values the fake-quant layer computes from torch's GroupNorm + SiLU (+ LET)
    with torch.no_grad():
        hs = layer.transform_input(h) if let else h
    hs = hs.flatten(2).transpose(1, 2)
    bounds = [(g.k0, g.k1) for g in rec.weights] if split else [(0, 12)]
    for (c0, c1), op, grid in zip(bounds, ops, rec.acts):
        want = ia.quant_codes(hs[..., c0:c1], grid) + float(grid.zp)
        got = codes[..., c0:c1].long() - op.kernel_zero + op.residual
        diff = (got - want.long()).abs()
        # the group statistics are summed in another order than torch's: only values within
        # rounding of a half step may land on the neighbouring code
        assert diff.max() <= 1 and diff.float().mean() < 0.01


def test_groupnorm_silu_quant_checks_shapes():
    op = ia.act_operand(ia.Grid(np.float32(0.1), np.int64(-10), 8, False))
    with pytest.raises(ValueError, match="groups"):
        groupnorm_silu_quant(torch.zeros(1, 10, 2, 2), 3, torch.ones(10), torch.zeros(10), 1e-5, [op])
