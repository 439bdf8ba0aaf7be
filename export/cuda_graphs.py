"""CUDA graphs for the triton runtime's components at their fixed tile (GPU only).

One-step SR runs every component at one shape (the latent tile, or the tile's image), so
each is captured once and then replayed: one launch of a few hundred kernels instead of a
Python walk over the diffusers modules. A component is captured on its first call at its
tile shape, after warm-up runs on a side stream (Triton compiles its kernels there and the
kernel layers build their epilogues, so the capture itself allocates and copies nothing
from the host). Any other shape runs eagerly. The replay's output buffer is reused by the
next replay, so callers get a copy.
"""
from __future__ import annotations

import torch

from passion_deploy.devices import cuda_available

WARMUP_RUNS = 2


class GraphCache:
    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        if not cuda_available():
            raise RuntimeError("CUDA graphs need a CUDA GPU; run the triton artifact without cuda_graphs on this machine")
        self.shapes = {c: tuple(s) for c, s in shapes.items()}
        self.captured: dict[str, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def capture(self, component: str, fn, x: torch.Tensor) -> None:
        static_in = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                fn(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn(static_in)
        self.captured[component] = (graph, static_in, static_out)

    @torch.no_grad()
    def run(self, component: str, fn, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != self.shapes.get(component) or not x.is_cuda:
            return fn(x)
        if component not in self.captured:
            self.capture(component, fn, x)
        graph, static_in, static_out = self.captured[component]
        if static_in.dtype != x.dtype:
            return fn(x)
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()
