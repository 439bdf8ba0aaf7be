"""The int8_narrow mode's graph, for CPUs without VNNI: each quantized conv lowered as the int8
graph does (int8_graph.py) where its integer operands cannot saturate the int16 pair sums of
AVX2's int8 instruction, and every other quantized layer as the fake-quant graph does
(fq_graph.py: rounding and one f32 Conv/MatMul), layer by layer (`int8_layers` decides;
`lower_graph_narrow` is the dispatcher over the two lowerings' own per-layer functions).

Linears and attention cores stay f32 even where they cannot saturate, by measurement (sd21 W6A6
UNet, ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 VNNI EPYC, OpenVINO 2026.4.1, PERF_COUNT): there the
plugin's int8 FullyConnected is oneDNN's `jit_gemm_I8` (1401 ms for 320 K-group GEMMs, against
1257 ms for the f32 graph's 160 `gemm_mlas_f32` ones) and an int8 attention core is two separate
`jit_gemm` MatMuls and a Softmax (959 ms for 32 cores), where the f32 one runs fused; its int8
convs (`jit_avx2_I8`) took 978 ms against 2016 ms of f32 ones. With only the convs int8 the UNet
ran 1.29x as fast as with every layer that cannot saturate int8 (3376 against 4367 ms,
alternating, median of 5).

Without VNNI, oneDNN multiplies u8 by s8 with vpmaddubsw, which adds the two products of each
adjacent pair into int16 with saturation. 6-bit codes cannot reach that bound (u8 activation
operand <= 63, weights int8: 2 * 63 * 127 < 32767); full-range 8-bit codes can. PassionSR keeps
the first and last layers at 8 bits, so a W6A6 graph has a few such layers: they run in f32.

The graph is compiled with the low-precision transformations on (they make the int8 layers int8
kernels). They act on FakeQuantize nodes, which only the int8 layers' Q/DQ pairs become: a
fake-quant layer's Div -> Round -> Clip -> Mul is no Q/DQ pair, so its Conv/MatMul stays f32 on
f32 inputs (checked on the compiled graph: `f32_layer_kernels`, ovcore.check_compiled). Its Divs
are guarded as in the dequant graph (fq_graph.guard_divisions), the int8 layers' are left as the
int8 mode leaves them.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from ...ir.graph import Graph
from ...ir.plan import layer_plan
from ...ir.recipes import QAttentionRecipe, QLayerRecipe
from ...onnx_graph import lower_ir, quantized_lowering
from . import NARROW as MODE
from . import fq_graph, int8_graph

I16_MIN, I16_MAX = -(1 << 15), (1 << 15) - 1


@dataclass(frozen=True)
class Gemm:
    """One integer GEMM of a layer as the int8 graph makes it: the ranges of the values its two
    operands hold (the A side the activation, the B side the weights or attention's K / V)."""

    what: str
    a_dtype: str
    a: tuple[int, int]
    b_dtype: str
    b: tuple[int, int]


def layer_gemms(rec: QLayerRecipe | QAttentionRecipe, ndim: int) -> list[Gemm]:
    """The integer operands of layer `rec` in the int8 graph (input rank `ndim`, which decides a
    split linear's token halves): per K-group GEMM of each row block, the u8 activation operand
    (ia.ActOperand: its codes lo..hi, and its zero point, which a padded tap of a conv holds) and
    the int8 weight values (ia.sym_weight: the layer's codes less each channel's shift); for an
    attention core, Q against K and P against V (int8_graph.ZeroFreeAct, V with its column of
    codes 1 where it is shifted)."""
    if isinstance(rec, QAttentionRecipe):
        q, k, p, v = (int8_graph.zero_free_act(g) for g in (rec.q, rec.k, rec.p, rec.v))
        vb = (min(v.lo, 1), max(v.hi, 1)) if v.shift else (v.lo, v.hi)
        return [Gemm("q.k", q.dtype, (q.lo, q.hi), k.dtype, (k.lo, k.hi)), Gemm("p.v", p.dtype, (p.lo, p.hi), v.dtype, vb)]
    plan = layer_plan(rec, ndim, int8_graph.ENCODING)
    out = []
    for ri, row in enumerate(plan.rows):
        for g in row.groups:
            a = g.act
            lo, hi = (min(a.lo, a.kernel_zero), max(a.hi, a.kernel_zero)) if rec.kind == "conv" else (a.lo, a.hi)
            w = g.weight.values.astype(int)
            out.append(Gemm(f"r{ri}.g{g.index}", a.dtype, (lo, hi), g.weight.dtype, (int(w.min()), int(w.max()))))
    return out


def cannot_saturate(rec: QLayerRecipe | QAttentionRecipe, ndim: int) -> bool:
    """Whether every integer GEMM of layer `rec` (layer_gemms) is exact on a CPU without VNNI.

    There oneDNN's int8 kernels multiply a u8 operand by an s8 one with vpmaddubsw, which adds the
    two products of each adjacent pair into int16 with saturation (then vpmaddwd widens to int32).
    With the u8 side in [0, a_hi] and the s8 side in [b_lo, b_hi], a pair sum lies in
    [2 a_hi min(b_lo, 0), 2 a_hi max(b_hi, 0)]: the GEMM cannot saturate iff that is inside
    [-32768, 32767]. The u8 side is the A operand (the activation; Q; P); an s8 A is made u8 by
    oneDNN adding 128 to it (its s8 x s8 scheme, with a compensation term: assumed, not read in its
    source), so it counts as [lo + 128, hi + 128]. A u8 B operand (an attention K or V starting at
    code 0) may in turn be taken as s8 less 128: it counts as [lo - 128, hi].
    For 6-bit codes: a u8 activation on [0, 63] and weights within int8 give at most
    2 * 63 * 127 = 16002; full-range 8-bit ones 2 * 255 * 127 = 64770.

    Measured (OpenVINO 2026.4.1, AMD EPYC with AVX-512 VNNI, ONEDNN_MAX_CPU_ISA=AVX2, tiny-w6a6,
    every layer int8, --verify's per-layer gate): every 6-bit layer passes (all 119 UNet layers, 14
    of them int8 attention cores; all 6-bit VAE layers); of the 8-bit ones vae_decoder's
    post_quant_conv fails (50 dB, 379 unexplained elements) and vae_encoder's quant_conv (4 dB),
    three others happened to pass. A single Q/DQ conv with 8-bit weight codes was off by up to
    5.6e4 codes, one with codes inside [-64, 63] exact (2 * 255 * 64 = 32640)."""
    for gm in layer_gemms(rec, ndim):
        a_lo, a_hi = (gm.a[0] + 128, gm.a[1] + 128) if gm.a_dtype == "s8" else gm.a
        b_lo, b_hi = (gm.b[0] - 128, gm.b[1]) if gm.b_dtype == "u8" else gm.b
        if a_lo < 0 or a_hi > 255 or 2 * a_hi * max(b_hi, 0) > I16_MAX or 2 * a_hi * min(b_lo, 0) < I16_MIN:
            return False
    return True


def int8_layers(g: Graph) -> dict[str, bool]:
    """{quantized layer: lowered as int8} for every quantized op of `g` with quantized activations:
    the convs whose operands cannot saturate (cannot_saturate), no linear and no attention core
    (slower as int8 than as f32 without VNNI: module docstring). Weight-only layers have no
    integer GEMM and are not listed."""
    out = {}
    for n in g.nodes:
        if n.op not in ("qconv", "qlinear", "qattention"):
            continue
        rec = g.recipes[n.attrs["recipe"]]
        if n.op != "qattention" and rec.acts is None:
            continue
        ndim = 4 if n.op == "qconv" else len(g.shapes[n.inputs[0]])
        out[n.name] = n.op == "qconv" and cannot_saturate(rec, ndim)
    return out


def lower_graph_narrow(g: Graph, probes: list[str] | None = None) -> onnx.ModelProto:
    """The int8_narrow mode's ONNX of IR graph `g` (module docstring): per quantized layer the int8
    graph's lowering or the fake-quant graph's, then the int8 graph's layout rewrites and the
    fake-quant layers' division guards."""
    static = int8_graph.static_inputs(g)
    as_int8 = int8_layers(g)
    int8 = int8_graph.int8_lowering(static)
    fq = quantized_lowering(fq_graph.lower_qconv, fq_graph.lower_qlinear, fq_graph.lower_qattention)
    fq_nodes: set[str] = set()

    def lower(b, n, rec, ins, graph):
        if as_int8.get(n.name, False):
            return int8(b, n, rec, ins, graph)
        start = len(b.nodes)
        out = fq(b, n, rec, ins, graph)
        fq_nodes.update(node.name for node in b.nodes[start:])
        return out

    model = fq_graph.guard_divisions(lower_ir(g, lower, probes), only=fq_nodes)
    return int8_graph.int8_layout(model, static)


def narrow_op_count(g: Graph) -> int:
    """The convs and matmuls lower_graph_narrow runs on quantized activations: one per K-group of
    an int8 conv/linear, one per fake-quant conv/linear, two per attention core."""
    as_int8 = int8_layers(g)
    return sum(2 if n.op == "qattention" else len(g.recipes[n.attrs["recipe"]].weights) if as_int8[n.name] else 1
               for n in g.nodes if n.name in as_int8)
