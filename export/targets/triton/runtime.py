"""Run a `triton` artifact: the checkpoint's diffusers pipeline with its integer layers on the kernels.

Loading rebuilds the pipeline from the source checkpoint (the artifact's source
pipeline), then, for every exported component, reads the deploy IR and replaces

- each quantized conv/linear with a `KernelModule` (layers.py: activation
  quantization + integer implicit GEMM with the fused epilogue, from the layer's recipe),
- each quantized attention processor with a `KernelAttnProcessor` (kernels/attention.py),
- each layer the IR folded (t = 999 and the fixed context: time projections, cross-attention
  K/V) with the IR's constant; the time embedding MLP that fed only those returns zeros.

Everything else (norms, SiLU, GEGLU, up/down-sampling, residual adds) stays the diffusers
PyTorch code: FP16 on a GPU, FP32 on a CPU, where the kernels run in Triton's interpreter
(slow, but the same integer arithmetic). On a GPU each component is captured in a CUDA graph
at the artifact's fixed tile on its first call at that shape (cuda_graphs.py).

Components the artifact does not contain keep the checkpoint's fake-quant modules.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import numpy as np
import torch

from passion_deploy.models.components import component

from ...runtime import ArtifactRuntime, TimingVariant
from . import TARGET
from .modules import install_kernels, interpreter_overflow_checks, kernels_device


class TritonSR(ArtifactRuntime):
    """The artifact's pipeline with its integer layers on the Triton kernels. Host tensors in,
    float32 host tensors out, like every runtime; `cuda_graphs=False` runs eagerly on a GPU too."""

    contract = TARGET

    def __init__(self, model_dir: str | os.PathLike, cuda_graphs: bool = True, fp16: bool | None = None,
                 overflow_checks: bool = False):
        device = kernels_device()
        gpu = device.type == "cuda"
        super().__init__(model_dir, device, torch.float16 if (gpu if fp16 is None else fp16) else torch.float32)
        pipe = self.source_pipeline()
        pipe.to(self.device, self.compute_dtype).eval()
        self.pipe = pipe
        self._source = None  # self.pipe gets kernels in it: the reference is loaded afresh when asked
        self.installed = {c: install_kernels(pipe, c, self.dir / self.manifest["components"][c]["ir"], self.device,
                                             self.compute_dtype) for c in self.components}
        self.overflow_checks = overflow_checks  # in Triton's interpreter only (see interpreter_overflow_checks)
        self.graphs = None
        if gpu and cuda_graphs:
            from ...cuda_graphs import GraphCache

            self.graphs = GraphCache(self.tile_shapes())

    @property
    def description(self) -> str:
        m = self.manifest
        where = (f"CUDA ({torch.cuda.get_device_name(self.device)}), {str(self.compute_dtype).replace('torch.', '')}"
                 + (", CUDA graphs" if self.graphs else "")) if self.device.type == "cuda" else "Triton CPU interpreter, float32"
        return f"Triton kernels {m['quant_config_name']} on {where} from {self.dir} [{', '.join(sorted(self.installed))}]"

    def component_fn(self, name: str):
        """The component as a function of a device tensor in compute_dtype (what benchmarks time);
        components the artifact lacks keep the checkpoint's fake-quant modules in self.pipe."""
        fn = component(name).fn(self.pipe)
        if self.graphs is not None and name in self.installed:
            return lambda x: self.graphs.run(name, fn, x)
        return fn

    def kernel_context(self):
        """Where the kernels are called: Triton's interpreter settings for this runtime (none on a GPU)."""
        return nullcontext() if self.device.type == "cuda" else interpreter_overflow_checks(self.overflow_checks)

    @property
    def timing_baselines(self) -> tuple[str, ...]:
        # the float model at this runtime's precision; an FP32 ONNX Runtime baseline would put a CPU
        # number next to a GPU one
        return ("torch_fp16",) if self.compute_dtype == torch.float16 else ("torch_fp32",)

    def timing_variants(self, name: str, x: torch.Tensor) -> list[TimingVariant]:
        fn = self.component_fn(name)

        def run(x):
            with self.kernel_context():
                return fn(x)
        return [TimingVariant("triton", lambda: run, x.to(self.device, self.compute_dtype),
                              {"weight_bytes_on_disk": self.manifest["components"][name]["ir_file_bytes"]})]

    def timing_settings(self) -> dict:
        gpu = self.device.type == "cuda"
        settings = {"device": str(self.device), "compute_dtype": str(self.compute_dtype).replace("torch.", ""),
                    "cuda_graphs": self.graphs is not None, "triton_interpreter": not gpu}
        if not gpu:
            settings["note"] = ("no GPU: the kernels ran in Triton's CPU interpreter; these timings measure the "
                                "interpreter, not the kernels")
        return settings

    def run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        with self.kernel_context():
            return super().run(name, x)

    @torch.no_grad()
    def run_layers(self, name: str, layer_inputs: dict[str, list[list[np.ndarray]]]) -> dict[str, list[np.ndarray]]:
        """Each named kernel layer / attention core of the runtime's own modules run on each given
        input (token or NCHW layout as the IR holds it; an attention core takes (B, N, C) q, k, v)."""
        from passion_deploy.models.components import component as component_of

        root = getattr(self.pipe, component_of(name).root)
        out = {}
        with self.kernel_context():
            for layer, feeds in layer_inputs.items():
                mod = root.get_submodule(layer)
                proc = getattr(mod, "processor", None)
                res = []
                for xs in feeds:
                    ts = [torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device, self.compute_dtype) for a in xs]
                    if callable(getattr(proc, "attention", None)):
                        q, k, v = (mod.head_to_batch_dim(t) for t in ts)
                        y = mod.batch_to_head_dim(proc.attention(q, k, v, mod.scale))
                    else:
                        y = mod(ts[0])
                    res.append(y.float().cpu().numpy())
                out[layer] = res
        return out
