"""The deploy IR graph: a small, explicit, fixed-shape graph of one exported component.

Values are named; nodes are plain (op, inputs, outputs, attrs). Floating-point ops keep the
meaning of the PyTorch code they came from; quantized ops point at integer recipes.

Ops (x, y: float tensors; attrs in brackets):
    conv          x [weight, bias, stride, padding, dilation]        float conv, NCHW
    linear        x [weight, bias]                                   x @ W^T + b, last axis
    qconv/qlinear x [recipe]                                         quantized layer (recipes.py)
    group_norm    x [gamma, beta, groups, eps]     layer_norm  x [gamma, beta, eps]
    silu, gelu    x                                                  gelu: exact (erf)
    add, mul, div x, y                                              y may be a constant
    affine        x [mul, add]                                       x * mul + add (scalars)
    concat        xs [axis]         geglu   x -> first half * gelu(second half), last axis
    pad           x [pads]          zero padding, ONNX order (begins..., ends...) on H, W
    upsample2x    x                 nearest neighbour
    to_tokens     x                 (B, C, H, W) -> (B, H*W, C)
    to_nchw       x, like           (B, H*W, C) -> shape of `like` (B, C, H, W)
    slice_channels x [start, stop]
    attention     q, k, v [heads, scale]        softmax(q k^T * scale) v per head; (B, N, h*d)
    qattention    q, k, v [recipe]              quantized core of spec section 4
    timestep_embedding t, freqs [flip_sin_to_cos]  sinusoidal embedding (dynamic mode only)
    identity      x                 names a graph output
    unsqueeze_hw  x                 (B, C) -> (B, C, 1, 1)

Constants live in `consts` (numpy arrays) and are referenced by name like values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .recipes import QAttentionRecipe, QLayerRecipe


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    name: str = ""

    def to_json(self) -> dict:
        return {"op": self.op, "inputs": self.inputs, "outputs": self.outputs, "attrs": self.attrs, "name": self.name}


@dataclass
class Graph:
    name: str
    inputs: dict[str, tuple] = field(default_factory=dict)  # name -> shape (None for a dynamic dim)
    outputs: dict[str, tuple] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    recipes: dict[str, QLayerRecipe | QAttentionRecipe] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)  # traced shape of every value
    meta: dict = field(default_factory=dict)

    def quantized_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op in ("qconv", "qlinear", "qattention")]

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs}

    def summary(self) -> dict:
        ops: dict[str, int] = {}
        for n in self.nodes:
            ops[n.op] = ops.get(n.op, 0) + 1
        return {"nodes": len(self.nodes), "ops": dict(sorted(ops.items())), "recipes": len(self.recipes),
                "const_bytes": int(sum(a.nbytes for a in self.consts.values()))}
