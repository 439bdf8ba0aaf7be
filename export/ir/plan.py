"""The layer plan: how one quantized conv/linear layer becomes integer GEMMs, computed once per
layer from its recipe and a target's operand encoding, and consumed by every target's lowering.

A layer's integer form (spec sections 3 and 6), for each row block r:

    y[r] = sum over K-groups g of  GEMM(activation operand a_rg, weight operand w_rg)
           (+ offset_g * Dw * the GEMM's extra all-ones column)  + bias_r  (+ map)

- K-groups are the recipe's weight groups (split layers: input channels [0, C/2), [C/2, C)).
- Row blocks: one, or the two token halves of a split 3-D linear input (dim 1 is the token
  axis there, so the activation halves are row blocks with their own grids, not K-groups).
- a_rg is the row's grid for token halves, else the group's (channel halves) or the only one.
- w_rg is an `ia.WeightOperand`: jw = (values - zero) + offset. A channel with offset != 0
  needs the per-position sum of its input operands, which one extra all-ones output
  column/channel of the same GEMM yields exactly.
- The constants: the fake-quant bias, the LET correction and the activation operands' own
  offsets (`Encoding.act_taps`: the residual or shift times the valid-tap weight sums). Where
  they do not depend on the position (linear layers, convs without padding) they fold into
  one bias per row block; a padded conv keeps their per-tap kernel, whose conv over an
  all-ones image (`ia.ones_conv_map`) is the exact border map. Its value at an output pixel
  depends only on which taps fall in the padding (`border_class` of its row and column), so a
  target may keep it as one small table per layer for every input size (`border_table`).

Every zero point, shift and residual comes from int_algebra through the `Encoding`; this
module only composes them.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from passion_deploy.quant.layers import split_point

from . import int_algebra as ia
from .recipes import QLayerRecipe, WeightGroup


@dataclass(frozen=True)
class Encoding:
    """A target's operand types, each an int_algebra formula.

    act:      activation grid -> operand (ia.ActOperand, ia.SymAct, ...)
    weight:   (K-group, the activation operand it meets) -> ia.WeightOperand
    act_taps: (activation operand, dequantized K-group weights) -> per-tap constant of the
              operand's offset from j (None when it has none)"""

    act: Callable[[ia.Grid], Any]
    weight: Callable[[WeightGroup, Any], ia.WeightOperand]
    act_taps: Callable[[Any, torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True, eq=False)
class GroupPlan:
    """One GEMM of a row block: K-group `index`, input channels [k0, k1)."""

    index: int
    k0: int
    k1: int
    act: Any  # the activation operand
    weight: ia.WeightOperand

    @property
    def ones_column(self) -> bool:
        """Some channel has a weight offset: the GEMM gets an extra all-ones output column."""
        return self.weight.has_residual

    @property
    def out_channels(self) -> int:
        return self.weight.values.shape[0]

    @property
    def key(self) -> str:
        """GEMMs of one layer with the same key use the same weight operand (token halves)."""
        return f"g{self.index}.{self.weight.dtype}"

    def ones_coef(self) -> np.ndarray:
        """What the all-ones column's output is multiplied by, per channel: offset * Dw."""
        return (self.weight.residual * self.weight.step.astype(np.float64)).astype(np.float32)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values, zero, step) in the layer's layout (Cout, Cin_g, *kernel), with the all-ones
        output channel (zero 0, step 1) appended when `ones_column`."""
        w = self.weight
        if not self.ones_column:
            return w.values, w.zero, w.step
        ones = np.ones((1,) + w.values.shape[1:], w.values.dtype)
        return (np.concatenate([w.values, ones]), np.append(w.zero, np.zeros(1, w.zero.dtype)),
                np.append(w.step, np.float32(1.0)))


@dataclass(frozen=True, eq=False)
class RowPlan:
    """One row block: its GEMMs (one per K-group) and the constant every output row adds."""

    groups: tuple[GroupPlan, ...]
    bias: np.ndarray | None  # float64 (Cout,)

    @property
    def act(self) -> Any | None:
        """The operand all of the row's GEMMs read (quantize once, then slice K), or None when
        the K-groups have their own grids (channel halves: slice, then quantize)."""
        first = self.groups[0].act
        return first if all(g.act is first for g in self.groups) else None


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """A quantized conv/linear layer as integer GEMMs: row blocks of K-group GEMMs, a bias per
    row block and, for a padded conv, the per-tap kernel of its border map."""

    rec: QLayerRecipe
    token_halves: bool  # the rows are the two token halves of a split (B, N, C) input
    rows: tuple[RowPlan, ...]
    map_taps: np.ndarray | None  # padded conv: (Cout, *kernel) per-tap constants, float64

    def row_spans(self, n: int) -> list[tuple[int, int]]:
        """[start, end) along dim 1 (n long) of each row block: the token halves, cut where the
        fake-quant layer cuts them, or all n rows."""
        if not self.token_halves:
            return [(0, n)]
        return [(0, split_point(n)), (split_point(n), n)]

    def border_map(self, in_spatial: tuple[int, ...]) -> torch.Tensor | None:
        """(Cout, *out_spatial) float64 map of a padded conv for one input size."""
        if self.map_taps is None:
            return None
        rec = self.rec
        return ia.ones_conv_map(torch.from_numpy(self.map_taps), in_spatial, rec.stride, rec.padding, rec.dilation)

    def border_table(self) -> torch.Tensor | None:
        """The border map in compact form: (Cout, C_1, ..., C_d) float64, C_i = border_classes(
        padding_i), where entry [n, c_1, ..., c_d] is the map's value at every output position
        whose axis-i class (`border_class`) is c_i, for every input size. Sizes of one layer
        differ only in which class each output row/column has, so the table is built once.

        Each value comes from the dense map's own arithmetic (`ia.ones_conv_map`), on the
        smallest input where its combination of classes occurs. F.conv2d's float64 sums can
        differ in the last bit between input sizes (its summation order follows the image
        size), which the float32 epilogue's rounding removes: tests/ir/test_border_maps.py holds
        the expanded float32 table equal to the float32 dense map for many sizes."""
        if self.map_taps is None:
            return None
        rec = self.rec
        if any(d != 1 for d in rec.dilation):
            raise ValueError(f"{rec.name}: the compact border map is derived for dilation 1")
        axes = [_class_witnesses(k, s, p) for k, s, p in zip(rec.kernel, rec.stride, rec.padding)]
        taps = torch.from_numpy(self.map_taps)
        # classes no output row can have (a stride may skip some overhangs) stay 0, never read
        table = torch.zeros((rec.out_channels,) + tuple(border_classes(p) for p in rec.padding), dtype=torch.float64)
        maps: dict[tuple[int, ...], torch.Tensor] = {}  # input size -> its dense map
        for combo in itertools.product(*(sorted(a.items()) for a in axes)):
            classes = tuple(c for c, _ in combo)
            size = tuple(n for _, (n, _) in combo)
            if size not in maps:
                maps[size] = ia.ones_conv_map(taps, size, rec.stride, rec.padding, rec.dilation)
            table[(slice(None),) + classes] = maps[size][(slice(None),) + tuple(o for _, (_, o) in combo)]
        return table


def border_classes(padding: int) -> int:
    """Classes of output rows (or columns) along one axis padded by `padding`: the taps a row
    loses to the padding at the start (0..padding) times those it loses at the end (0..padding)."""
    return (padding + 1) ** 2


def border_class(o, n: int, kernel: int, stride: int, padding: int):
    """Class of output row `o` (an int or an integer tensor) of an axis of input length `n`:
    (taps in the leading padding) * (padding + 1) + (taps in the trailing padding). Output row o
    reads input rows o*stride - padding + [0, kernel), so the valid taps, and with them the border
    map's value, depend on these two counts only. Each is at most `padding` for any output row
    (the output size formula keeps the last window's overhang within the padding); the kernel
    computes the same two maxima from (oh, ow) to index the table."""
    start = o * stride - padding
    if isinstance(o, torch.Tensor):
        return (-start).clamp(min=0) * (padding + 1) + (start + kernel - n).clamp(min=0)
    return max(0, -start) * (padding + 1) + max(0, start + kernel - n)


def _class_witnesses(kernel: int, stride: int, padding: int) -> dict[int, tuple[int, int]]:
    """For each class `border_class` can give along one axis: (input length, output row) of its
    smallest occurrence. A row has at most `padding` taps cut at either end, so the lengths up
    to kernel + 2 * (padding + stride) reach every class (one with a cut at each end needs a
    short input; an uncut row, input kernel + stride past the first uncut start)."""
    found: dict[int, tuple[int, int]] = {}
    for n in range(1, kernel + 2 * (padding + stride) + 1):
        for o in range(max(0, (n + 2 * padding - kernel) // stride + 1)):
            found.setdefault(border_class(o, n, kernel, stride, padding), (n, o))
    return found


def fold_constants(rec: QLayerRecipe, taps: list[np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(bias, map_taps) from the fake-quant bias, the LET correction and `taps` (more per-tap
    constants): summed into the bias where no padding makes them depend on the position."""
    terms = ([] if rec.let_taps is None else [rec.let_taps.astype(np.float64)]) + list(taps)
    bias = None if rec.bias is None else rec.bias.astype(np.float64)
    if not terms:
        return bias, None
    total = sum(terms)
    if rec.kind == "conv" and any(rec.padding):
        return bias, total
    const = total.reshape(rec.out_channels, -1).sum(1)  # every tap of every window is valid
    return (const if bias is None else bias + const), None


def _row_grid_indices(rec: QLayerRecipe, x_ndim: int) -> list[list[int]]:
    """Per row block, the activation grid each K-group reads (the split rule of spec section 3)."""
    n = len(rec.weights)
    if rec.act_split_on_tokens(x_ndim):
        return [[r] * n for r in range(2)]
    return [[g if len(rec.acts) == 2 else 0 for g in range(n)]]


def layer_plan(rec: QLayerRecipe, x_ndim: int, enc: Encoding) -> LayerPlan:
    """The plan of a layer with activation grids, for an input of rank `x_ndim` (which decides
    whether a split linear's activation halves are token halves)."""
    if rec.acts is None:
        raise ValueError(f"{rec.name}: weight-only layers have no integer plan")
    acts = [enc.act(g) for g in rec.acts]
    dequant = [wg.dequant().double() for wg in rec.weights]
    weights: dict[str, ia.WeightOperand] = {}  # one operand object per key, shared by row blocks
    rows, map_taps = [], None
    for grid_idx in _row_grid_indices(rec, x_ndim):
        groups, taps = [], []
        for gi, (wg, ai) in enumerate(zip(rec.weights, grid_idx)):
            g = GroupPlan(gi, wg.k0, wg.k1, acts[ai], enc.weight(wg, acts[ai]))
            groups.append(replace(g, weight=weights.setdefault(g.key, g.weight)))
            t = enc.act_taps(acts[ai], dequant[gi])
            if t is not None:
                taps.append(t.double().numpy())
        bias, row_map = fold_constants(rec, taps)
        map_taps = row_map  # only convs have a map, and a conv has one row block
        rows.append(RowPlan(tuple(groups), bias))
    return LayerPlan(rec, rec.act_split_on_tokens(x_ndim), tuple(rows), map_taps)
