"""Artifacts whose components are ONNX files run in ONNX Runtime sessions (CPU).

`OrtRuntime` is what the onnx target's integer ONNX and the trt target's Q/DQ ONNX (its check
on machines without TensorRT) share: one session per component, batches run one item at a
time (the graphs are exported at batch 1), the constant inputs fed, and per-layer values for
--verify from the same IR lowered again with those values as extra outputs. A target's runtime
says how its graphs are lowered (`lower`) and whether Q/DQ pairs run unfused (`plain_qdq`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .ir.irfile import load_ir
from .onnx_graph import session, session_of_model
from .runtime import ArtifactRuntime, TimingVariant


class OrtRuntime(ArtifactRuntime):
    plain_qdq = False  # see onnx_graph.session
    integer_view = False  # the sessions run qdq.integer_view rewrites (onnx_graph.session)

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None, load_sessions: bool = True):
        super().__init__(model_dir)
        self.threads = threads
        self.sessions = {c: self.open_session(c) for c in self.components} if load_sessions else {}

    def open_session(self, name: str):
        return session(self.dir / self.manifest["components"][name]["onnx"], self.threads, self.plain_qdq)

    def lower(self, g, probes: list[str]):
        """The artifact's lowering of IR graph g, with `probes` as extra outputs."""
        raise NotImplementedError

    def artifact_fn(self, name: str):
        sess, main, feeds = self.sessions[name], self.main_input(name), self.constant_feeds(name)

        def run(x: torch.Tensor) -> torch.Tensor:
            outs = [sess.run(None, {main: x[i:i + 1].detach().float().numpy(), **feeds})[0] for i in range(x.shape[0])]
            return torch.from_numpy(np.concatenate(outs, axis=0))
        return run

    def component_model(self, name: str):
        """The component's ONNX model as this runtime's sessions run it (the artifact's file)."""
        import onnx

        return onnx.load(str(self.dir / self.manifest["components"][name]["onnx"]))

    def run_layers(self, name: str, layer_inputs: dict[str, list[list[np.ndarray]]]) -> dict[str, list[np.ndarray]]:
        """Each named quantized layer cut out of the component's own model (export/layer_cut.py)
        and run on each of the given inputs (one list of input arrays per probe, batch 1)."""
        from .layer_cut import cut_layer, layer_values

        def model_and_names():
            model = self.component_model(name)
            values = layer_values(model)
            if values is None:  # an artifact written before graphs recorded their layers: the same lowering names them
                values = layer_values(self.lower(load_ir(self.dir / self.manifest["components"][name]["ir"]), []))
            return model, values

        def session_of(layer):
            model, values = self.once(("layer names", name), model_and_names)
            v = values[layer]
            return (session_of_model(cut_layer(model, v, layer), self.threads, self.plain_qdq, self.integer_view),
                    [i for i in v["inputs"] if i is not None])

        out = {}
        for layer, feeds in layer_inputs.items():
            sess, names = self.once(("layer cut", name, layer), lambda: session_of(layer))
            out[layer] = [sess.run(None, dict(zip(names, (np.ascontiguousarray(a, np.float32) for a in xs))))[0] for xs in feeds]
        return out


def session_variant(name: str, model: Path, main: str, constants: dict, x: torch.Tensor, threads: int | None,
                    fields: dict) -> TimingVariant:
    """ONNX model `model` timed in an ONNX Runtime CPU session on host input x (fed as `main`,
    with the model's constant inputs). The session opens in the warm-up, so its load counts in
    the memory sampled there."""
    def load():
        sess = session(model, threads)
        return lambda x: sess.run(None, {main: x.numpy(), **constants})
    return TimingVariant(name, load, x, fields, onnx_file=Path(model))
