"""Cut one quantized layer out of an artifact's own ONNX graph, for --verify's per-layer gate.

Every ONNX lowering records, in the model's metadata (onnx_graph.LAYER_VALUES_KEY), the tensors
each quantized conv / linear / attention core reads and writes. `cut_layer(model, values)` keeps
exactly the nodes between those input tensors and the output tensor (with their initializers):
the layer as the artifact's file computes it, fed whatever input the check gives it, so its
error does not depend on what earlier layers did. Graphs written before that record existed get
it by lowering the IR again (`layer_values_of`: the lowering is deterministic, so the names are
the file's).
"""
from __future__ import annotations

import json

import onnx
from onnx import TensorProto, helper

from .onnx_graph import LAYER_VALUES_KEY


class LayerCutError(ValueError):
    """A layer that cannot be separated from the rest of the graph (names a missing tensor)."""


def layer_values(model: onnx.ModelProto) -> dict | None:
    """{layer: {"inputs": [tensor or None], "output": tensor}} recorded in the model, or None."""
    for p in model.metadata_props:
        if p.key == LAYER_VALUES_KEY:
            return json.loads(p.value)
    return None


def cut_layer(model: onnx.ModelProto, values: dict, name: str = "") -> onnx.ModelProto:
    """The sub-model computing `values["output"]` from the non-constant `values["inputs"]`
    (float32 graph inputs named as the tensors, shapes left to the feed)."""
    inputs = [i for i in values["inputs"] if i is not None]
    out = values["output"]
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name for t in g.initializer}
    keep: set[int] = set()
    todo = [out]
    seen: set[str] = set()
    while todo:
        t = todo.pop()
        if t in seen or t == "" or t in inputs or t in inits:
            continue
        seen.add(t)
        n = producer.get(t)
        if n is None:
            raise LayerCutError(f"{name}: tensor {t!r} is neither produced inside the layer nor one of its inputs")
        if id(n) not in keep:
            keep.add(id(n))
            todo.extend(n.input)
    nodes = [n for n in g.node if id(n) in keep]
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, f"{g.name}.{name}",
                              [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [t for t in g.initializer if t.name in used])
    m = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="passion-deploy layer cut")
    m.ir_version = model.ir_version
    return m
