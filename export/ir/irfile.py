"""The deploy IR on disk: one safetensors file per component, weights packed.

Tensors: float constants of the graph under `const/`, and per recipe its packed weight codes
(int8 as bytes, int6 four codes in three bytes; packing.py), per-channel steps and zero
points, activation grids, LET scale/offset/correction and bias. The graph itself (nodes,
shapes, recipe geometry) travels as JSON in the safetensors metadata. Every backend can be
lowered from a loaded IR file; `load_ir(save_ir(g)) == g` is tested.
"""
from __future__ import annotations

from passion_deploy.errors import PassionError
import json
from pathlib import Path

import numpy as np

from passion_deploy.io_utils import atomic_path

from . import int_algebra as ia
from .graph import Graph, Node
from .packing import pack, packed_nbytes, unpack
from .recipes import QAttentionRecipe, QLayerRecipe, WeightGroup

FORMAT = "passion-deploy/deploy-ir"
FORMAT_VERSION = 1


class IRFileError(PassionError):
    pass


def _grid_meta(g: ia.Grid) -> dict:
    return {"bits": g.bits, "signed": g.signed}


def _put_grid(tensors: dict, key: str, g: ia.Grid) -> None:
    tensors[key + ".step"] = np.asarray(g.step, np.float32).reshape(-1)
    tensors[key + ".zp"] = np.asarray(g.zp, np.int32).reshape(-1)


def _get_grid(tensors: dict, key: str, meta: dict, per_channel: bool) -> ia.Grid:
    step, zp = tensors[key + ".step"], tensors[key + ".zp"].astype(np.int64)
    if not per_channel:
        step, zp = np.float32(step[0]), np.int64(zp[0])
    return ia.Grid(step, zp, meta["bits"], meta["signed"])


_OPTIONAL = ("bias", "let_scale", "let_input_offset", "let_taps")


def _layer_to(rec: QLayerRecipe, tensors: dict, key: str) -> dict:
    meta = {"type": "layer", "kind": rec.kind, "in_channels": rec.in_channels, "out_channels": rec.out_channels,
            "kernel": list(rec.kernel), "stride": list(rec.stride), "padding": list(rec.padding),
            "dilation": list(rec.dilation), "eight_bit": rec.eight_bit, "weights": [], "acts": None}
    for i, wg in enumerate(rec.weights):
        k = f"{key}.w{i}"
        tensors[k + ".codes"] = pack(wg.codes, wg.grid.bits, wg.grid.signed)
        _put_grid(tensors, k, wg.grid)
        meta["weights"].append({"k0": wg.k0, "k1": wg.k1, "shape": list(wg.codes.shape), **_grid_meta(wg.grid)})
    if rec.acts is not None:
        meta["acts"] = []
        for i, g in enumerate(rec.acts):
            _put_grid(tensors, f"{key}.a{i}", g)
            meta["acts"].append(_grid_meta(g))
    for name in _OPTIONAL:
        val = getattr(rec, name)
        if val is not None:
            tensors[f"{key}.{name}"] = np.asarray(val, np.float32)
    return meta


def _layer_from(name: str, meta: dict, tensors: dict, key: str) -> QLayerRecipe:
    groups = []
    for i, wm in enumerate(meta["weights"]):
        k = f"{key}.w{i}"
        n = int(np.prod(wm["shape"]))
        codes = unpack(tensors[k + ".codes"], n, wm["bits"], wm["signed"]).reshape(wm["shape"])
        groups.append(WeightGroup(wm["k0"], wm["k1"], codes, _get_grid(tensors, k, wm, True)))
    acts = None if meta["acts"] is None else [_get_grid(tensors, f"{key}.a{i}", am, False) for i, am in enumerate(meta["acts"])]
    rec = QLayerRecipe(name, meta["kind"], meta["in_channels"], meta["out_channels"], groups, acts, None,
                       kernel=tuple(meta["kernel"]), stride=tuple(meta["stride"]), padding=tuple(meta["padding"]),
                       dilation=tuple(meta["dilation"]), eight_bit=meta["eight_bit"])
    for opt in _OPTIONAL:
        if f"{key}.{opt}" in tensors:
            setattr(rec, opt, tensors[f"{key}.{opt}"])
    return rec


def _attn_to(rec: QAttentionRecipe, tensors: dict, key: str) -> dict:
    tensors[key + ".s_qk"] = rec.s_qk.astype(np.float32)
    tensors[key + ".s_vw"] = rec.s_vw.astype(np.float32)
    meta = {"type": "attention", "heads": rec.heads, "head_dim": rec.head_dim, "scale": rec.scale}
    for q in "qkvp":
        g = getattr(rec, q)
        _put_grid(tensors, f"{key}.{q}", g)
        meta[q] = _grid_meta(g)
    return meta


def _attn_from(name: str, meta: dict, tensors: dict, key: str) -> QAttentionRecipe:
    grids = {q: _get_grid(tensors, f"{key}.{q}", meta[q], False) for q in "qkvp"}
    return QAttentionRecipe(name, meta["heads"], meta["head_dim"], meta["scale"], tensors[key + ".s_qk"],
                            tensors[key + ".s_vw"], **grids)


def save_ir(g: Graph, path: str | Path) -> None:
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    recipes = {}
    for i, (name, rec) in enumerate(g.recipes.items()):
        key = f"recipe/{i}"
        meta = _layer_to(rec, tensors, key) if isinstance(rec, QLayerRecipe) else _attn_to(rec, tensors, key)
        recipes[name] = {"key": key, **meta}
    consts = {}
    for i, (name, arr) in enumerate(g.consts.items()):
        consts[name] = f"const/{i}"
        tensors[f"const/{i}"] = np.ascontiguousarray(arr, np.float32)
    graph = {"name": g.name, "inputs": {k: list(v) for k, v in g.inputs.items()},
             "outputs": {k: list(v) for k, v in g.outputs.items()}, "nodes": [n.to_json() for n in g.nodes],
             "shapes": {k: list(v) for k, v in g.shapes.items()}, "meta": g.meta, "consts": consts, "recipes": recipes}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "graph": json.dumps(graph)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_ir(path: str | Path) -> Graph:
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged files
        raise IRFileError(f"{path}: not a readable deploy-IR file ({e})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != str(FORMAT_VERSION):
        raise IRFileError(f"{path}: not a deploy-IR file of format version {FORMAT_VERSION}")
    gj = json.loads(meta["graph"])
    g = Graph(gj["name"], {k: tuple(v) for k, v in gj["inputs"].items()}, {k: tuple(v) for k, v in gj["outputs"].items()},
              [Node(n["op"], n["inputs"], n["outputs"], n["attrs"], n["name"]) for n in gj["nodes"]],
              {name: tensors[key] for name, key in gj["consts"].items()}, {},
              {k: tuple(v) for k, v in gj["shapes"].items()}, gj["meta"])
    for name, rm in gj["recipes"].items():
        g.recipes[name] = (_layer_from if rm["type"] == "layer" else _attn_from)(name, rm, tensors, rm["key"])
    return g


def weight_bytes(g: Graph) -> dict:
    """Bytes of the packed IR weights vs the float32 weights they replace."""
    packed = fp32 = 0
    for rec in g.recipes.values():
        if isinstance(rec, QLayerRecipe):
            for wg in rec.weights:
                packed += packed_nbytes(wg.codes.size, wg.grid.bits)
                fp32 += 4 * wg.codes.size
    return {"packed_weight_bytes": packed, "quantized_layers_fp32_bytes": fp32}
