"""One-layer IR graphs and their checks, shared by the ONNX lowering tests (onnx and trt targets)."""
import numpy as np
import onnxruntime as ort

from passion_deploy.export.graph import Graph, Node

BITS = {"w8a8": (8, 8), "w6a6": (6, 6)}


def run_onnx(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def single(op, rec, inputs: dict, out_shape, consts=None, dynamic_hw=False):
    shape = (lambda t: tuple(t.shape[:2]) + (None, None)) if dynamic_hw else (lambda t: tuple(t.shape))
    g = Graph("layer", inputs={k: shape(v) for k, v in inputs.items()}, outputs={"y": tuple(out_shape[:2]) + (None,) * (len(out_shape) - 2)},
              consts=consts or {}, recipes={rec.name: rec})
    g.shapes = {k: tuple(v.shape) for k, v in inputs.items()}
    names = list(inputs) + list((consts or {}).keys())
    g.nodes = [Node(op, names, ["h"], {"recipe": rec.name}, rec.name), Node("identity", ["h"], ["y"])]
    return g


def check(y, ref, tol=3e-6):
    err = np.abs(y - ref).max()
    assert err <= tol * np.abs(ref).max(), f"max abs err {err:.3g} vs scale {np.abs(ref).max():.3g}"


CONVS = {"3x3s1": dict(kernel_size=3, padding=1), "3x3s2": dict(kernel_size=3, stride=2, padding=1),
         "1x1": dict(kernel_size=1), "3x3s2pad0": dict(kernel_size=3, stride=2)}
