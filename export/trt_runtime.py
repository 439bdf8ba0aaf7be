"""Run a `trt` artifact: its TensorRT engines on a GPU, or its Q/DQ ONNX on a CPU to check it.

    TrtSR       the `<component>.int8.engine` files (TensorRT; device buffers are torch CUDA
                tensors, or pycuda allocations when this torch has no CUDA). An engine runs
                only with the TensorRT version and GPU model it was built with: loading
                checks both against the manifest and says what to rebuild.
    QdqOnnxSR   the same artifact's `<component>.qdq.onnx` in ONNX Runtime's CPU provider,
                DequantizeLinear -> Conv/Gemm/MatMul unfused (runtime.session): the meaning
                of the graph TensorRT compiles, for --verify and passion-sr on machines
                without TensorRT. Not a speed path.

Both run every component at the artifact's fixed tile (the engines' shapes), so they expose
`fixed_vae_latent_tile`: the runner tiles the VAE at exactly that size.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from . import artifact
from .runtime import OnnxSR

_noted = False


def _note_once(text: str) -> None:
    global _noted
    if not _noted:
        print(text, file=sys.stderr)
        _noted = True


class QdqOnnxSR(OnnxSR):
    backend = "trt-qdq-onnx"
    target = "trt"
    plain_qdq = True

    def __init__(self, model_dir, threads: int | None = None, load_sessions: bool = True, **_):
        super().__init__(model_dir, threads, load_sessions, check_isa=False)
        self.fixed_vae_latent_tile = self.latent_tile

    @property
    def description(self) -> str:
        parts = ", ".join(sorted(self.sessions))
        return (f"TensorRT Q/DQ graph of {self.manifest['quant_config_name']} in ONNX Runtime (CPU, dequantized float ops: "
                f"a check of the graph, not a speed path) from {self.dir} [{parts}]")

    def _run(self, comp: str, name: str, x: torch.Tensor) -> torch.Tensor:
        want = tuple(self.manifest["components"][comp]["fixed_input_shapes"][name][2:])
        if tuple(x.shape[2:]) != want:
            raise ValueError(f"{self.dir}: the trt artifact's {comp} runs on fixed {want[0]}x{want[1]} inputs "
                             f"(the engines' tile), got {tuple(x.shape[2:])}; tile the input to that size")
        return super()._run(comp, name, x)

    def lower(self, g, probes: list[str]):
        from .qdq_lower import lower_graph_qdq

        comp = self.manifest["components"].get(g.name, {})
        shapes = {k: tuple(v) for k, v in comp["fixed_input_shapes"].items()} if "fixed_input_shapes" in comp else None
        return lower_graph_qdq(g, shapes, probes=probes)


class Engine:
    """One deserialized engine and its execution context; call with {input name: tensor}."""

    def __init__(self, path: Path, built: dict):
        import tensorrt as trt

        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise artifact.ArtifactError(f"{path}: TensorRT {trt.__version__} could not load this engine (built with "
                                         f"TensorRT {built['version']} on {built['gpu']}); rebuild it with passion-export --target trt")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def __call__(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        """CUDA float32 tensors in, the first output as a CUDA float32 tensor (torch's stream)."""
        keep = []
        for name in self.inputs:
            t = feeds[name].to("cuda", torch.float32).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.outputs:
            y = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, y.data_ptr())
            outs.append(y)
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT's execute_async_v3 failed (its log above says why)")
        return outs[0]

    def run_host(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The same with pycuda device buffers, for a torch without CUDA."""
        import pycuda.driver as cuda

        stream = cuda.Stream()
        bufs = []
        for name in self.inputs:
            a = np.ascontiguousarray(feeds[name], np.float32)
            d = cuda.mem_alloc(a.nbytes)
            cuda.memcpy_htod_async(d, a, stream)
            bufs.append(d)
            self.context.set_input_shape(name, a.shape)
            self.context.set_tensor_address(name, int(d))
        host = []
        for name in self.outputs:
            h = cuda.pagelocked_empty(tuple(self.context.get_tensor_shape(name)), np.float32)
            d = cuda.mem_alloc(h.nbytes)
            bufs.append(d)
            host.append((h, d))
            self.context.set_tensor_address(name, int(d))
        if not self.context.execute_async_v3(stream.handle):
            raise RuntimeError("TensorRT's execute_async_v3 failed (its log above says why)")
        for h, d in host:
            cuda.memcpy_dtoh_async(h, d, stream)
        stream.synchronize()
        return host[0].copy()


def check_built_here(m: dict, where: str) -> None:
    """Engines are specific to the TensorRT version and GPU model that built them."""
    import tensorrt as trt

    from .trt_build import gpu_name

    built = m["tensorrt"]
    here = {"version": trt.__version__, "gpu": gpu_name()}
    diff = [f"{k} {built[k]} (here: {here[k]})" for k in ("version", "gpu") if built[k] != here[k]]
    if diff:
        raise artifact.ArtifactError(f"{where}: its engines were built with a different {' and '.join(diff)}, and an engine runs "
                                     f"only where it was built; rebuild them here with passion-export --target trt")


class TrtSR(OnnxSR):
    """The artifact's INT8 engines (or its FP16 baseline engines with kind="fp16")."""

    backend = "trt"
    target = "trt"
    layer_tables = False  # per-layer values live inside fused TensorRT kernels

    def __init__(self, model_dir, kind: str = "int8", **_):
        super().__init__(model_dir, load_sessions=False, check_isa=False)
        m = self.manifest
        if not m.get("engines"):
            raise artifact.ArtifactError(f"{self.dir}: has no TensorRT engines (exported where TensorRT or a GPU was missing); "
                                         "rerun passion-export --target trt on a GPU machine with TensorRT")
        check_built_here(m, str(self.dir))
        self.kind = kind
        self.on_torch = torch.cuda.is_available()
        if not self.on_torch:  # pycuda buffers, in the device's primary context (the one TensorRT uses)
            import pycuda.driver as cuda

            cuda.init()
            self._cuda_context = cuda.Device(0).retain_primary_context()
            self._cuda_context.push()
        self.sessions = {c: Engine(self.dir / e[kind]["engine"], m["tensorrt"]) for c, e in m["engines"].items()}
        self.fixed_vae_latent_tile = self.latent_tile

    @property
    def description(self) -> str:
        t = self.manifest["tensorrt"]
        return (f"TensorRT {t['version']} {self.kind.upper()} engines of {self.manifest['quant_config_name']} on {t['gpu']} "
                f"(float ops {t['float_precision'].upper()}) from {self.dir} [{', '.join(sorted(self.sessions))}]")

    def component_fn(self, comp: str):
        """A CUDA-tensor-in, CUDA-tensor-out callable (benchmarks time this, without host copies)."""
        engine, name = self.sessions[comp], list(self.manifest["components"][comp]["inputs"])[0]
        extra = {k: torch.from_numpy(np.asarray(v)).cuda() for k, v in self.extra_feeds(comp).items()}
        return lambda x: engine({name: x, **extra})

    def _run(self, comp: str, name: str, x: torch.Tensor) -> torch.Tensor:
        engine = self.sessions[comp]
        if self.on_torch:
            with torch.no_grad():
                return self.component_fn(comp)(x).float().cpu()
        feeds = {name: x.detach().float().cpu().numpy(), **self.extra_feeds(comp)}
        return torch.from_numpy(engine.run_host(feeds))


def open_trt(model_dir: str | os.PathLike, **kwargs):
    """TrtSR where this machine can run the engines, else QdqOnnxSR (and a note saying so)."""
    from .trt_build import missing_for_engines

    m = artifact.read_manifest(model_dir)
    missing = missing_for_engines()
    if m.get("engines") and not missing:
        return TrtSR(model_dir, **kwargs)
    why = "the artifact has no engines" if not m.get("engines") else f"this machine lacks {' and '.join(missing)}"
    _note_once(f"passion-deploy: {model_dir}: {why}, so its TensorRT Q/DQ graph runs in ONNX Runtime on the CPU "
               "(exact semantics, no TensorRT speed)")
    return QdqOnnxSR(model_dir, **{k: v for k, v in kwargs.items() if k == "threads"})
