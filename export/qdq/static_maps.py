"""Border maps of a fixed-tile Q/DQ graph as constants: no float Conv left for TensorRT to run.

A padded LET conv's constant map (the LET correction and shift terms summed over the valid taps,
onnx_graph.ones_map) is written as Conv(ConstantOfShape(1, 1, H, W), taps), which serves any
input size. At the fixed tile of a trt artifact H and W are known, so the map is a constant of
the graph; left as it is, TensorRT runs it as an FP32 conv per layer (52 of the sd21 UNet's).

The map only varies near the border: output rows (columns) that lose the same taps to the
padding hold the same values. So it is stored compactly and expanded by two Gathers:

    table (1, Cout, R, C)  -> Gather(row_class (Ho,), axis 2) -> Gather(col_class (Wo,), axis 3)

R and C count the distinct rows and columns of the dense map (3 for a 3x3 conv with padding 1
at stride 1), so a 512 px decoder tile's map takes Cout * 9 floats, not Cout * 512 * 512. The
dense map comes from int_algebra.ones_conv_map (its one owner) in float64, rounded once, and the
Gathers reproduce it exactly: rows and columns are only merged where they are equal.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper, shape_inference

from ..ir import int_algebra as ia


def _static_shape(info: dict, name: str) -> tuple[int, ...] | None:
    t = info.get(name)
    if t is None or not t.type.tensor_type.HasField("shape"):
        return None
    dims = t.type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims) else None


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def compact(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(table (Cout, R, C), rows (Ho,), cols (Wo,)) with table[:, rows][:, :, cols] == dense."""
    _, rows = np.unique(dense.transpose(1, 0, 2).reshape(dense.shape[1], -1), axis=0, return_inverse=True)
    by_row = np.stack([dense[:, rows == r][:, 0] for r in range(rows.max() + 1)], axis=1)  # (Cout, R, Wo)
    _, cols = np.unique(by_row.transpose(2, 0, 1).reshape(dense.shape[2], -1), axis=0, return_inverse=True)
    table = np.stack([by_row[:, :, cols == c][:, :, 0] for c in range(cols.max() + 1)], axis=2)
    return table, rows.reshape(-1).astype(np.int64), cols.reshape(-1).astype(np.int64)


def fold_border_maps(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every Conv(ConstantOfShape, taps) whose ones image has a static shape with the
    compact table and two Gathers (module docstring). Other graphs come back unchanged."""
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    info = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    nodes, tables = [], []
    for n in g.node:
        src = producer.get(n.input[0]) if n.op_type == "Conv" else None
        ones_shape = _static_shape(info, n.input[0]) if src is not None and src.op_type == "ConstantOfShape" else None
        if ones_shape is None or len(ones_shape) != 4 or n.input[1] not in inits or len(n.input) > 2:
            nodes.append(n)
            continue
        taps = torch.from_numpy(numpy_helper.to_array(inits[n.input[1]]).astype(np.float64))[:, 0]  # (Cout, kh, kw)
        pads = _attr(n, "pads", [0, 0, 0, 0])
        if pads[:2] != pads[2:]:
            nodes.append(n)  # the lowering writes symmetric pads only
            continue
        dense = ia.ones_conv_map(taps, ones_shape[2:], tuple(_attr(n, "strides", [1, 1])), tuple(pads[:2]),
                                 tuple(_attr(n, "dilations", [1, 1]))).numpy().astype(np.float32)
        table, rows, cols = compact(dense)
        name = n.output[0]
        tables += [numpy_helper.from_array(table[None], name + ".table"),
                   numpy_helper.from_array(rows, name + ".rows"), numpy_helper.from_array(cols, name + ".cols")]
        nodes += [helper.make_node("Gather", [name + ".table", name + ".rows"], [name + ".by_row"], axis=2,
                                   name=name + ".gather_rows"),
                  helper.make_node("Gather", [name + ".by_row", name + ".cols"], [name], axis=3, name=name + ".gather_cols")]
    if not tables:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(tables)
    # the Shape -> Concat -> ConstantOfShape chains that fed the maps now feed nothing
    used = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    while True:
        dead = [n for n in out.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            out.graph.node.remove(n)
        used = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    keep = [t for t in out.graph.initializer if t.name in used]  # the taps went with their Convs
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out
