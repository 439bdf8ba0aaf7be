"""ONNX graphs of the deploy IR: the parts every ONNX-based target shares.

- `OnnxBuilder` and `lower_ir`, the one walk over an IR graph: float ops by `lower_fp`, the
  quantized ops by the target's own `lower_quantized` (targets/onnx: integer ONNX for ONNX
  Runtime; targets/trt: explicit Q/DQ for TensorRT). `lower_float` lowers a graph traced
  without quantization: the FP32 baselines and TensorRT's FP16 engines.
- the pieces of a quantized layer that stay float in every lowering: the LET input transform,
  the exact border map of a padded conv, weight-only layers, head reshapes;
- what every integer lowering builds the same way around its own operand types: the K-group
  slices, token halves, all-ones column and folded constants of a layer plan (ir/plan.py),
  and the structure of a quantized attention core (`lower_attention`, with the shift/residual
  terms of `add_offset_products`);
- writing a model (`save_onnx`, external data beyond 2 GB) and running one (`session`).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .ir import int_algebra as ia
from .ir.graph import Graph, Node
from .ir.plan import GroupPlan, LayerPlan, fold_constants
from .ir.recipes import QAttentionRecipe, QLayerRecipe
from passion_deploy.quant.attention import reciprocal

EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin for the graph itself

OPSET = 21


INT64_MAX = np.iinfo(np.int64).max


class OnnxBuilder:
    def __init__(self, prefix: str = ""):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        base = hint.replace("/", ".")
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def init(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def scalar(self, value, dtype) -> str:
        """Shared small constants (scalars, axes lists) by value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init("k", arr)
        return self._consts[key]

    def node(self, op: str, inputs: list[str], hint: str, n_out: int = 1, domain: str = "", **attrs) -> str | list[str]:
        outs = [self.fresh(f"{hint}.{op}" if n_out == 1 else f"{hint}.{op}.{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh("n." + hint + "." + op), domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def i64(self, values) -> str:
        return self.scalar(np.asarray(values, np.int64).reshape(-1), np.int64)


def let_transform(b: OnnxBuilder, rec: QLayerRecipe, x: str, ndim: int) -> str:
    """x' = (x - o) / s, the same float expression as the fake-quant layer."""
    if rec.let_scale is None:
        return x
    shape = (-1,) + (1,) * (ndim - 2) if rec.kind == "conv" else (-1,)
    if rec.let_offset_nonzero():
        x = b.node("Sub", [x, b.init(rec.name + ".let_offset", rec.let_input_offset.reshape(shape))], rec.name)
    return b.node("Div", [x, b.init(rec.name + ".let_scale", rec.let_scale.reshape(shape))], rec.name)


def ones_map(b: OnnxBuilder, x: str, taps: np.ndarray, rec: QLayerRecipe, hint: str) -> str:
    """conv(all-ones image shaped like x's spatial dims, taps): the exact border-aware map
    (ONNX Runtime folds it to a constant when the input shape is static)."""
    shape = b.node("Shape", [x], hint, start=2)
    full = b.node("Concat", [b.i64([1, 1]), shape], hint, axis=0)
    ones = b.node("ConstantOfShape", [full], hint, value=numpy_helper.from_array(np.ones(1, np.float32)))
    return b.node("Conv", [ones, b.init(hint + ".map_taps", taps[:, None].astype(np.float32))], hint,
                  strides=list(rec.stride), pads=list(rec.padding) * 2, dilations=list(rec.dilation))


def add_constants(b: OnnxBuilder, y: str, x: str, rec: QLayerRecipe, bias: np.ndarray | None,
                  map_taps: np.ndarray | None, hint: str, spatial_dims: int = 0) -> str:
    """y + bias (per channel; `spatial_dims` axes follow the channel axis) + the border map of
    `map_taps` over x's spatial size: the constants a layer plan (ir/plan.py) folded."""
    if bias is not None:
        shape = (-1,) + (1,) * spatial_dims
        y = b.node("Add", [y, b.init(hint + ".bias", bias.astype(np.float32).reshape(shape))], hint)
    return y if map_taps is None else b.node("Add", [y, ones_map(b, x, map_taps, rec, hint)], hint)


def weight_only(b: OnnxBuilder, rec: QLayerRecipe, x: str, float_weights: bool = False) -> str:
    """Weight-only quantization: float activations times dequantized weights (the int codes are
    what the artifact stores; ONNX Runtime folds the DequantizeLinear at load). `float_weights`
    stores the grid values instead (TensorRT fuses a DQ weight only beside a DQ activation)."""
    h = rec.name
    ndim = 4 if rec.kind == "conv" else 2
    ws = []
    for gi, g in enumerate(rec.weights):
        wop = ia.weight_operand(g.codes, g.grid, "u8")
        if wop.has_residual or float_weights:
            ws.append(b.init(f"{h}.w{gi}", g.dequant().numpy()))
        else:
            ws.append(b.node("DequantizeLinear", [b.init(f"{h}.w{gi}", wop.values), b.init(f"{h}.w{gi}.step", wop.step),
                                                  b.init(f"{h}.w{gi}.zero", wop.zero)], h, axis=0))
    w = ws[0] if len(ws) == 1 else b.node("Concat", ws, h, axis=1)
    xs = let_transform(b, rec, x, ndim if rec.kind == "conv" else 3)
    bias, map_taps = fold_constants(rec, [])
    if rec.kind == "conv":
        ins = [xs, w] + ([b.init(h + ".bias", bias.astype(np.float32))] if bias is not None else [])
        y = b.node("Conv", ins, h, strides=list(rec.stride), pads=list(rec.padding) * 2, dilations=list(rec.dilation))
        return add_constants(b, y, x, rec, None, map_taps, h)
    y = b.node("MatMul", [xs, b.node("Transpose", [w], h, perm=[1, 0])], h)
    return add_constants(b, y, x, rec, bias, None, h)


# -- pieces of the integer lowerings (the targets supply the operand types) ---------------------

def shared(b: OnnxBuilder, key: tuple, make):
    """What `make()` returned the first time `key` was asked for in this graph (weights that
    several GEMMs of a layer read, e.g. both token halves)."""
    if key not in b._consts:
        b._consts[key] = make()
    return b._consts[key]


def group_input(b: OnnxBuilder, x: str, rec: QLayerRecipe, g: GroupPlan, axis: int, hint: str) -> str:
    """K-group g's input channels [k0, k1) of x along `axis` (x itself for an unsplit layer): one
    Split of x into every K-group's channels, written once per (x, axis) and shared by the groups."""
    if len(rec.weights) == 1:
        return x
    sizes = [w.k1 - w.k0 for w in rec.weights]
    if [w.k0 for w in rec.weights] != [0] + list(np.cumsum(sizes)[:-1]):
        raise ValueError(f"{rec.name}: K-groups must tile the input channels in order to be split")
    parts = shared(b, ("groups", x, axis), lambda: b.node("Split", [x, b.i64(sizes)], hint, n_out=len(sizes), axis=axis))
    return parts[g.index]


def row_inputs(b: OnnxBuilder, x: str, plan: LayerPlan, hint: str) -> list[str]:
    """One input per row block of the plan: x, or its two token halves (B, N, C) cut at N // 2
    of the actual input as the fake-quant layer cuts them (VAE attention sees any image size)."""
    if not plan.token_halves:
        return [x]
    n = b.node("Shape", [x], hint, start=1, end=2)
    half = b.node("Div", [n, b.i64([2])], hint)
    bounds = ((b.i64([0]), half), (half, b.i64([INT64_MAX])))
    return [b.node("Slice", [x, r0, r1, b.i64([1])], hint) for r0, r1 in bounds]


def add_ones_column(b: OnnxBuilder, y: str, g: GroupPlan, hint: str, spatial_dims: int = 0) -> str:
    """y's first Cout channels + offset*Dw times its extra all-ones channel (GroupPlan.ones_column:
    the per-position sum of the input operands); the channel axis has `spatial_dims` axes after it."""
    if not g.ones_column:
        return y
    main, ones = b.node("Split", [y, b.i64([g.out_channels, 1])], hint, n_out=2, axis=-1 - spatial_dims)
    coef = g.ones_coef().reshape((-1,) + (1,) * spatial_dims)
    return b.node("Add", [main, b.node("Mul", [ones, b.init(hint + ".ones_coef", coef)], hint)], hint)


# -- attention --------------------------------------------------------------------------------

def heads_of(b: OnnxBuilder, x: str, heads: int, d: int, hint: str) -> str:
    """(B, N, h*d) -> (B, h, N, d)"""
    r = b.node("Reshape", [x, b.i64([0, 0, heads, d])], hint)
    return b.node("Transpose", [r], hint, perm=[0, 2, 1, 3])


def merge_heads(b: OnnxBuilder, x: str, heads: int, d: int, hint: str) -> str:
    t = b.node("Transpose", [x], hint, perm=[0, 2, 1, 3])
    return b.node("Reshape", [t, b.i64([0, 0, heads * d])], hint)


@dataclass(frozen=True)
class AttentionOps:
    """What a target supplies to `lower_attention`.

    operands: the q, k, p, v activation operands (from int_algebra)
    quantize(b, x, op, hint): float value x -> the operand value its integer MatMul reads
    constant(b, values, op, hint): the same for a constant float tensor (folded K/V codes)
    matmul(b, a, aop, bb, bop, scale, k, hint): scale * (a^ @ b^) over k products"""

    operands: tuple
    quantize: Callable
    constant: Callable
    matmul: Callable


def lower_attention(b: OnnxBuilder, rec: QAttentionRecipe, q: str, k: str, v: str, consts: dict, ops: AttentionOps) -> str:
    """softmax(scale * Q(q*s_qk) @ Q(k*(1/s_qk))^T) -> Q(P*s_vw) @ Q(v*(1/s_vw)), per head (spec section 4),
    multiplying by the float32 reciprocals as the fake-quant does (quant.attention.reciprocal)."""
    h, heads, d = rec.name, rec.heads, rec.head_dim
    s_qk, s_vw = rec.s_qk.astype(np.float32), rec.s_vw.astype(np.float32)
    qop, kop, pop, vop = ops.operands
    qa = ops.quantize(b, b.node("Mul", [heads_of(b, q, heads, d, h), b.init(h + ".s_qk", s_qk)], h), qop, h + ".q")
    kb = _attention_b(b, rec, k, consts, reciprocal(s_qk), True, kop, ops, h + ".k")
    p = b.node("Softmax", [ops.matmul(b, qa, qop, kb, kop, rec.scale, d, h + ".qk")], h, axis=-1)
    pa = ops.quantize(b, b.node("Mul", [p, b.init(h + ".s_vw", s_vw)], h), pop, h + ".p")
    vb = _attention_b(b, rec, v, consts, reciprocal(s_vw)[:, None], False, vop, ops, h + ".v")
    return merge_heads(b, ops.matmul(b, pa, pop, vb, vop, 1.0, s_vw.size, h + ".pv"), heads, d, h)


def _attention_b(b: OnnxBuilder, rec: QAttentionRecipe, x: str, consts: dict, inv: np.ndarray, transpose: bool,
                 op, ops: AttentionOps, hint: str) -> str:
    """x * inv (the reciprocal of its LET scale) in heads layout (B, h, N, d), for K transposed to
    (B, h, d, N), as a MatMul's B operand. Transposing before quantizing is exact (per-tensor grids)
    and lets the operand feed the MatMul directly; a folded constant (cross-attention K/V) becomes
    codes, never floats."""
    heads, d = rec.heads, rec.head_dim
    if x in consts:
        c = torch.from_numpy(consts[x])
        t = c.reshape(c.shape[0], -1, heads, d).transpose(1, 2) * torch.from_numpy(inv)
        return ops.constant(b, t.transpose(-1, -2) if transpose else t, op, hint + "_codes")
    xs = b.node("Mul", [heads_of(b, x, heads, d, hint), b.init(hint + ".inv_scale", inv)], hint)
    if transpose:
        xs = b.node("Transpose", [xs], hint, perm=[0, 1, 3, 2])
    return ops.quantize(b, xs, op, hint)


def add_offset_products(b: OnnxBuilder, y: str, a, ca: float, bb, cb: float, k: int, hint: str) -> str:
    """(A + ca) @ (B + cb) from y = A @ B over k products: + cb*rowsum(A) + ca*colsum(B) + k*ca*cb.
    `a()` and `bb()` build the float A (.., M, k) and B (.., k, N), asked for only when needed."""
    if cb:
        rs = b.node("ReduceSum", [a(), b.i64([-1])], hint, keepdims=1)
        y = b.node("Add", [y, b.node("Mul", [rs, b.scalar(np.float32(cb), np.float32)], hint)], hint)
    if ca:
        cs = b.node("ReduceSum", [bb(), b.i64([-2])], hint, keepdims=1)
        y = b.node("Add", [y, b.node("Mul", [cs, b.scalar(np.float32(ca), np.float32)], hint)], hint)
    if ca and cb:
        y = b.node("Add", [y, b.scalar(np.float32(k * ca * cb), np.float32)], hint)
    return y


def lower_fp(b: OnnxBuilder, n: Node, val, g: Graph) -> str:
    """One float IR op; `val(name)` gives the ONNX name of an IR value (registering constants
    on first use, so constants that are re-laid-out here are not stored twice)."""
    op, a, hint = n.op, n.attrs, n.name or n.outputs[0]
    if op == "linear":
        wt = b.init(hint + ".wT", np.ascontiguousarray(g.consts[n.inputs[1]].T))
        y = b.node("MatMul", [val(n.inputs[0]), wt], hint)
        return b.node("Add", [y, val(n.inputs[2])], hint) if len(n.inputs) > 2 else y
    if op == "group_norm":
        groups, x = a["groups"], val(n.inputs[0])
        r = b.node("Reshape", [x, b.i64([0, groups, -1])], hint)
        r = b.node("InstanceNormalization", [r, b.scalar(np.ones(groups), np.float32), b.scalar(np.zeros(groups), np.float32)],
                   hint, epsilon=a["eps"])
        r = b.node("Reshape", [r, b.node("Shape", [x], hint)], hint)
        c = g.consts[n.inputs[1]].size
        gamma = b.init(hint + ".gamma", g.consts[n.inputs[1]].reshape(c, 1, 1))
        beta = b.init(hint + ".beta", g.consts[n.inputs[2]].reshape(c, 1, 1))
        return b.node("Add", [b.node("Mul", [r, gamma], hint), beta], hint)
    ins = [val(i) for i in n.inputs]
    if op == "conv":
        p = a["padding"]
        return b.node("Conv", ins, hint, strides=a["stride"], pads=list(p) * 2, dilations=a["dilation"])
    if op == "layer_norm":
        return b.node("LayerNormalization", ins, hint, axis=-1, epsilon=a["eps"])
    if op == "silu":
        return b.node("Mul", [ins[0], b.node("Sigmoid", ins, hint)], hint)
    if op == "geglu":
        hid, gate = b.node("Split", [ins[0]], hint, n_out=2, axis=-1, num_outputs=2)
        return b.node("Mul", [hid, b.node("Gelu", [gate], hint)], hint)
    if op in ("add", "mul", "div"):
        return b.node(op.capitalize(), ins, hint)
    if op == "affine":
        y = ins[0]
        if a["mul"] != 1.0:
            y = b.node("Mul", [y, b.scalar(a["mul"], np.float32)], hint)
        if a["add"] != 0.0:
            y = b.node("Add", [y, b.scalar(a["add"], np.float32)], hint)
        return y
    if op == "concat":
        return b.node("Concat", ins, hint, axis=a["axis"])
    if op == "pad":
        hb, wb, he, we = a["pads"]
        return b.node("Pad", [ins[0], b.i64([0, 0, hb, wb, 0, 0, he, we])], hint)
    if op == "upsample2x":
        return b.node("Resize", [ins[0], "", b.scalar([1.0, 1.0, 2.0, 2.0], np.float32)], hint, mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if op == "to_tokens":
        r = b.node("Reshape", [ins[0], b.i64([0, 0, -1])], hint)
        return b.node("Transpose", [r], hint, perm=[0, 2, 1])
    if op == "to_nchw":
        t = b.node("Transpose", [ins[0]], hint, perm=[0, 2, 1])
        return b.node("Reshape", [t, b.node("Shape", [ins[1]], hint)], hint)
    if op == "slice_channels":
        return b.node("Slice", [ins[0], b.i64([a["start"]]), b.i64([a["stop"]]), b.i64([1])], hint)
    if op == "unsqueeze_hw":
        return b.node("Unsqueeze", [ins[0], b.i64([2, 3])], hint)
    if op == "timestep_embedding":
        t = b.node("Unsqueeze", [ins[0], b.i64([1])], hint)
        e = b.node("Mul", [t, b.node("Unsqueeze", [ins[1], b.i64([0])], hint)], hint)
        sin, cos = b.node("Sin", [e], hint), b.node("Cos", [e], hint)
        return b.node("Concat", [cos, sin] if a["flip_sin_to_cos"] else [sin, cos], hint, axis=-1)
    if op == "attention":
        heads = a["heads"]
        d = g.shapes[n.inputs[0]][-1] // heads
        qh, kh, vh = (heads_of(b, x, heads, d, hint) for x in ins)
        s = b.node("MatMul", [qh, b.node("Transpose", [kh], hint, perm=[0, 1, 3, 2])], hint)
        p = b.node("Softmax", [b.node("Mul", [s, b.scalar(a["scale"], np.float32)], hint)], hint, axis=-1)
        return merge_heads(b, b.node("MatMul", [p, vh], hint), heads, d, hint)
    raise ValueError(f"no ONNX lowering for IR op {op!r}")


def _value_info(name: str, shape: tuple, dim_names: tuple[str, ...]) -> onnx.ValueInfoProto:
    dims = [d if d is not None else dim_names[i] for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


PROBE_PREFIX = "probe:"
# model metadata: each quantized layer's ONNX input tensors (None: a folded constant) and output
# tensor, so --verify can cut the layer out of the artifact's own file (export/layer_cut.py)
LAYER_VALUES_KEY = "passion.layer_values"


QUANTIZED_OPS = ("qconv", "qlinear", "qattention")


def quantized_lowering(conv: Callable, linear: Callable, attention: Callable, **kw) -> Callable:
    """lower_ir's `lower_quantized` from a lowering's three layer functions, conv(b, rec, x),
    linear(b, rec, x, x_shape) and attention(b, rec, q, k, v, consts), each also given `kw`."""

    def lower(b: OnnxBuilder, n: Node, rec, ins: list[str], g: Graph) -> str:
        if n.op == "qconv":
            return conv(b, rec, ins[0], **kw)
        if n.op == "qlinear":
            return linear(b, rec, ins[0], g.shapes[n.inputs[0]], **kw)
        return attention(b, rec, *ins, g.consts, **kw)
    return lower


def lower_ir(g: Graph, lower_quantized, probes: list[str] | None = None, input_shapes: dict[str, tuple] | None = None,
             opsets: tuple[tuple[str, int], ...] = (("", OPSET),)) -> onnx.ModelProto:
    """The walk every ONNX lowering shares: float ops by `lower_fp`, the quantized ones by
    `lower_quantized(b, node, recipe, inputs, g)`. `probes`: IR values to expose as extra outputs
    named "probe:<value>" (verification reads layer outputs); `input_shapes` overrides the
    traced input shapes (a None dim stays dynamic)."""
    b = OnnxBuilder()
    env: dict[str, str] = {}
    for name in g.inputs:
        b._names.add(name)
        env[name] = name

    def val(name: str) -> str:
        if name not in env:
            if name not in g.consts:
                raise ValueError(f"IR value {name!r} is used before it is defined")
            env[name] = b.init(name, g.consts[name])
        return env[name]

    layer_values = {}
    for n in g.nodes:
        if n.op in QUANTIZED_OPS:
            # folded K/V constants stay IR constants: the lowering turns them into integer codes,
            # never float initializers
            ins = [i if (n.op == "qattention" and k and i in g.consts) else val(i) for k, i in enumerate(n.inputs)]
            out = lower_quantized(b, n, g.recipes[n.attrs["recipe"]], ins, g)
            layer_values[n.name] = {"inputs": [None if i in g.consts else t for i, t in zip(n.inputs, ins)], "output": out}
        elif n.op == "identity":
            out = n.outputs[0]  # graph outputs keep their IR names
            b._names.add(out)
            b.nodes.append(helper.make_node("Identity", [val(n.inputs[0])], [out], name=b.fresh("n.output." + out)))
        else:
            out = lower_fp(b, n, val, g)
        env[n.outputs[0]] = out
    dyn = ("batch", "channels", "height", "width")
    shapes = {**g.inputs, **(input_shapes or {})}
    inputs = [_value_info(k, shapes[k], dyn) for k in g.inputs]
    outputs = [_value_info(k, s, dyn) for k, s in g.outputs.items()]
    for name in probes or []:
        pname = PROBE_PREFIX + name
        b.nodes.append(helper.make_node("Identity", [env[name]], [pname], name=b.fresh("n." + pname)))
        outputs.append(onnx.ValueInfoProto(name=pname))
    graph = helper.make_graph(b.nodes, g.name, inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                              producer_name="passion-deploy")
    model.ir_version = 10
    onnx.helper.set_model_props(model, {LAYER_VALUES_KEY: json.dumps(layer_values)})
    return model


def lower_float(g: Graph, probes: list[str] | None = None, input_shapes: dict[str, tuple] | None = None) -> onnx.ModelProto:
    """The ONNX model of an IR graph traced without quantization (no quantized ops)."""

    def refuse(b, n, rec, ins, g):
        raise ValueError(f"{g.name}: {n.name} is a quantized op; lower it with a target's lowering")

    return lower_ir(g, refuse, probes, input_shapes)


def save_onnx(model: onnx.ModelProto, out_dir: Path, stem: str) -> list[str]:
    """Write <stem>.onnx (+ <stem>.onnx.data beyond 2 GB) atomically; returns the file names."""
    big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    name, data = f"{stem}.onnx", f"{stem}.onnx.data"
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=out_dir))
    try:
        if big:
            onnx.save_model(model, str(tmp / name), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp / name))
        files = [data, name] if big else [name]
        for f in files:  # data first: a model file never points at missing weights
            (tmp / f).replace(out_dir / f)
        if not big and (out_dir / data).exists():
            (out_dir / data).unlink()
        return files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ONNX Runtime graph transformers that fold a Mul or Add of constants behind a Conv / MatMul into
# its weights: in the integer view (qdq/integer_view.py) they would turn the exact integer sums
# of codes into float sums of scaled products, which is not TensorRT's arithmetic.
INTEGER_VIEW_DISABLED_OPTIMIZERS = ("ConvMulFusion", "ConvAddFusion", "MatMulScaleFusion")


def session(path_or_bytes, threads: int | None = None, plain_qdq: bool = False, integer_view: bool = False):
    """An ONNX Runtime CPU session. `plain_qdq` runs DequantizeLinear -> Conv/Gemm/MatMul as
    written (dequantize, then a float op) instead of fusing them into ONNX Runtime's int8
    kernels, whose u8s8 products saturate at 16 bits on CPUs without VNNI (int_algebra): that
    is how a TensorRT Q/DQ graph's meaning is checked on a CPU. `integer_view`: the model is a
    qdq.integer_view rewrite, run without the fusions that fold its scales into the integer
    ops (INTEGER_VIEW_DISABLED_OPTIMIZERS)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if plain_qdq:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    kw = {"disabled_optimizers": list(INTEGER_VIEW_DISABLED_OPTIMIZERS)} if integer_view else {}
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"], **kw)


def session_of_model(model: onnx.ModelProto, threads: int | None = None, plain_qdq: bool = False,
                     integer_view: bool = False):
    """`session` of an in-memory model; one past protobuf's 2 GB limit goes through a temporary
    folder (ONNX Runtime reads its external data while the session is created)."""
    if sum(len(t.raw_data) for t in model.graph.initializer) <= EXTERNAL_DATA_BYTES:
        return session(model.SerializeToString(), threads, plain_qdq, integer_view)
    tmp = Path(tempfile.mkdtemp(prefix="passion-session."))
    try:
        save_onnx(model, tmp, "model")
        return session(tmp / "model.onnx", threads, plain_qdq, integer_view)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
