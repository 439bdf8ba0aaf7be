"""Run a `trt` artifact: its TensorRT engines on a GPU, or its Q/DQ ONNX on a CPU to check it.

    TrtSR       the `<component>.int8.engine` files (TensorRT; device buffers are torch CUDA
                tensors, or pycuda allocations when this torch has no CUDA). An engine runs
                only with the TensorRT version and GPU model it was built with: loading
                checks both against the manifest and says what to rebuild.
    QdqOnnxSR   the same artifact's `<component>.qdq.onnx` in ONNX Runtime's CPU provider,
                each DequantizeLinear -> Conv/Gemm/MatMul run as TensorRT's fused int8 kernel
                computes it (integer codes summed exactly, scaled once: qdq/integer_view.py),
                never by ONNX Runtime's own int8 kernels (onnx_graph.session, plain_qdq): the
                meaning of the graph TensorRT compiles, for --verify and passion-sr on machines
                without TensorRT. Not a speed path.

Both run every component at the artifact's fixed tile (the engines' shapes), so they expose
`fixed_vae_latent_tile`: the runner tiles the VAE at exactly that size.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from passion_deploy.devices import cuda_available

from ... import artifact
from ...onnx_graph import session_of_model
from ...ort_runtime import OrtRuntime
from ...runtime import ArtifactRuntime, TimingVariant
from . import TARGET

_noted = False


def _note_once(text: str) -> None:
    global _noted
    if not _noted:
        print(text, file=sys.stderr)
        _noted = True


class QdqOnnxSR(OrtRuntime):
    contract = TARGET
    plain_qdq = True

    def __init__(self, model_dir, threads: int | None = None, load_sessions: bool = True, **_):
        super().__init__(model_dir, threads, load_sessions)
        require_fixed_shapes(self)
        self.fixed_vae_latent_tile = self.latent_tile

    @property
    def description(self) -> str:
        parts = ", ".join(sorted(self.sessions))
        return (f"TensorRT Q/DQ graph of {self.manifest['quant_config_name']} in ONNX Runtime (CPU, integer codes summed in float as TensorRT sums them: "
                f"a check of the graph, not a speed path) from {self.dir} [{parts}]")

    def check_input(self, name: str, x: torch.Tensor) -> None:
        check_fixed_shape(self, name, x)

    integer_view = True

    def component_model(self, name: str):
        """The component's Q/DQ graph with TensorRT's integer accumulation (qdq/integer_view.py)."""
        import onnx

        from ...qdq.integer_view import integer_view

        return integer_view(onnx.load(str(self.dir / self.manifest["components"][name]["onnx"])))

    def open_session(self, name: str):
        return session_of_model(self.component_model(name), self.threads, plain_qdq=True, integer_view=True)

    def lower(self, g, probes: list[str]):
        from ...qdq.integer_view import integer_view
        from ...qdq.lower import lower_graph_qdq

        comp = self.manifest["components"].get(g.name, {})
        shapes = {k: tuple(v) for k, v in comp["fixed_input_shapes"].items()} if "fixed_input_shapes" in comp else None
        return integer_view(lower_graph_qdq(g, shapes, probes=probes))


def require_fixed_shapes(rt: ArtifactRuntime) -> None:
    """Refuse at load, in one sentence, a manifest without what this runtime reads at every call
    (each component's fixed input shapes): an artifact of another target relabelled `trt`, or an
    edited manifest, would otherwise fail on the first tile with a KeyError."""
    for name, comp in rt.manifest.get("components", {}).items():
        shapes = comp.get("fixed_input_shapes") if isinstance(comp, dict) else None
        if not isinstance(shapes, dict) or rt.main_input(name) not in shapes:
            raise artifact.ArtifactError(f"{rt.dir / artifact.MANIFEST}: component {name} has no fixed input shapes, "
                                         "which a trt artifact records; the manifest says target trt but was not "
                                         "written by passion-export --target trt", rt.dir / artifact.MANIFEST)


def check_fixed_shape(rt: ArtifactRuntime, name: str, x: torch.Tensor) -> None:
    """Every component of a trt artifact runs at its fixed tile (the engines' shapes)."""
    comp = rt.manifest["components"].get(name)
    if comp is None:
        return
    want = tuple(comp["fixed_input_shapes"][rt.main_input(name)][2:])
    if tuple(x.shape[2:]) != want:
        raise ValueError(f"{rt.dir}: the trt artifact's {name} runs on fixed {want[0]}x{want[1]} inputs "
                         f"(the engines' tile), got {tuple(x.shape[2:])}; tile the input to that size")


class Engine:
    """One deserialized engine and its execution context; call with {input name: tensor}."""

    def __init__(self, path: Path, built: dict, max_batch: int = 1):
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
        self.path, self.max_batch = path, max_batch

    def set_shape(self, name: str, shape: tuple) -> None:
        """TensorRT answers False (and runs nothing useful) for a shape outside the engine's
        profile: say which, instead of computing on stale shapes."""
        if not self.context.set_input_shape(name, tuple(shape)):
            raise ValueError(f"{self.path}: input {name} of shape {tuple(shape)} is outside this engine's profile "
                             f"(the artifact's tile, batch 1 to {self.max_batch}); export with --max-batch N for larger batches")

    def __call__(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        """CUDA float32 tensors in, the first output as a CUDA float32 tensor (torch's stream)."""
        keep = []
        for name in self.inputs:
            t = feeds[name].to("cuda", torch.float32).contiguous()
            keep.append(t)
            self.set_shape(name, tuple(t.shape))
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
            self.set_shape(name, a.shape)
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

    from .build import gpu_name

    built = m["tensorrt"]
    here = {"version": trt.__version__, "gpu": gpu_name()}
    diff = [f"{k} {built[k]} (here: {here[k]})" for k in ("version", "gpu") if built[k] != here[k]]
    if diff:
        raise artifact.ArtifactError(f"{where}: its engines were built with a different {' and '.join(diff)}, and an engine runs "
                                     f"only where it was built; rebuild them here with passion-export --target trt")


class TrtSR(ArtifactRuntime):
    """The artifact's INT8 engines (or its FP16 baseline engines with kind="fp16")."""

    contract = TARGET
    layer_tables = False  # per-layer values live inside fused TensorRT kernels

    def __init__(self, model_dir, kind: str = "int8", **_):
        self.on_torch = cuda_available()  # else pycuda buffers, host tensors in and out
        super().__init__(model_dir, device="cuda" if self.on_torch else "cpu")
        require_fixed_shapes(self)
        m = self.manifest
        if not m.get("engines"):
            raise artifact.ArtifactError(f"{self.dir}: has no TensorRT engines (exported where TensorRT or a GPU was missing); "
                                         "rerun passion-export --target trt on a GPU machine with TensorRT")
        check_built_here(m, str(self.dir))
        self.kind = kind
        self._cuda_context = None
        if not self.on_torch:  # pycuda buffers, in the device's primary context (the one TensorRT uses)
            import pycuda.driver as cuda

            cuda.init()
            self._cuda_context = cuda.Device(0).retain_primary_context()
        with self.cuda_context():
            self.sessions = {c: Engine(self.dir / e[kind]["engine"], m["tensorrt"], m["tensorrt"].get("max_batch", 1))
                             for c, e in m["engines"].items()}
        self.fixed_vae_latent_tile = self.latent_tile

    @contextmanager
    def cuda_context(self):
        """pycuda's context current for the block and popped after it (torch manages its own)."""
        if self._cuda_context is None:
            yield
            return
        self._cuda_context.push()
        try:
            yield
        finally:
            self._cuda_context.pop()

    @property
    def description(self) -> str:
        t = self.manifest["tensorrt"]
        return (f"TensorRT {t['version']} {self.kind.upper()} engines of {self.manifest['quant_config_name']} on {t['gpu']} "
                f"(float ops {t['float_precision'].upper()}) from {self.dir} [{', '.join(sorted(self.sessions))}]")

    def check_input(self, name: str, x: torch.Tensor) -> None:
        check_fixed_shape(self, name, x)

    def artifact_fn(self, name: str):
        """With CUDA torch: a CUDA-tensor-in, CUDA-tensor-out callable (benchmarks time this, without
        host copies); otherwise host tensors through pycuda buffers."""
        engine, main = self.sessions[name], self.main_input(name)
        feeds_of = {}  # batch size -> constant feeds (t and the context of a --dynamic-constants UNet)

        def feeds(batch: int) -> dict:
            if batch not in feeds_of:
                host = self.constant_feeds(name, batch)
                feeds_of[batch] = {k: torch.from_numpy(v).cuda() for k, v in host.items()} if self.on_torch else host
            return feeds_of[batch]

        if self.on_torch:
            return lambda x: engine({main: x, **feeds(x.shape[0])})

        def run_host(x):
            with self.cuda_context():
                return torch.from_numpy(engine.run_host({main: x.detach().float().cpu().numpy(), **feeds(x.shape[0])}))
        return run_host

    timing_baselines = ("torch_fp16",)

    @cached_property
    def timing_twin(self) -> TrtSR:
        """The artifact's other engines (the FP16 baseline's next to the INT8 ones), timed beside these."""
        return TrtSR(self.dir, "fp16" if self.kind == "int8" else "int8")

    def timing_variants(self, name: str, x: torch.Tensor) -> list[TimingVariant]:
        x = x.to(self.device, torch.float32)
        return [rt.engine_variant(name, x) for rt in (self, self.timing_twin)]

    def engine_variant(self, name: str, x: torch.Tensor) -> TimingVariant:
        engine = self.sessions[name].engine
        size = getattr(engine, "device_memory_size_v2", None)  # device_memory_size is gone in TensorRT 11
        return TimingVariant(f"trt_{self.kind}", lambda: self.graphed_fn(name), x, {
            "engine_bytes_on_disk": self.manifest["engines"][name][self.kind]["bytes"],
            # TensorRT's own activation memory, outside torch's allocator
            "engine_device_memory_bytes": int(size if size is not None else engine.device_memory_size)})

    def graphed_fn(self, name: str):
        """The engine replayed from a CUDA graph at the tile, as the PyTorch FP16 baseline is: both
        are timed without per-call launch overhead (TensorRT's enqueue is captured like any kernel)."""
        from ...cuda_graphs import GraphCache

        fn, graphs = self.component_fn(name), GraphCache(self.tile_shapes())
        return lambda x: graphs.run(name, fn, x)

    def timing_record(self) -> dict:
        return {"runtime": self.description, "tensorrt": self.manifest["tensorrt"]}

    def timing_settings(self) -> dict:
        return {"device": str(self.device), "cuda_graphs": True}


def open_trt(model_dir: str | os.PathLike, **kwargs):
    """TrtSR where this machine can run the engines, else QdqOnnxSR (and a note saying so)."""
    from .build import missing_for_engines

    art = artifact.load(model_dir)
    m = art.manifest
    missing = missing_for_engines()
    if m.get("engines") and not missing:
        return TrtSR(art, **kwargs)
    why = "the artifact has no engines" if not m.get("engines") else f"this machine lacks {' and '.join(missing)}"
    _note_once(f"passion-deploy: {model_dir}: {why}, so its TensorRT Q/DQ graph runs in ONNX Runtime on the CPU "
               "(exact semantics, no TensorRT speed)")
    return QdqOnnxSR(art, **{k: v for k, v in kwargs.items() if k == "threads"})


def open_for_timing(model_dir: str | os.PathLike, **_) -> TrtSR:
    """passion-bench's way in: the INT8 engines on torch's CUDA tensors, or a refusal in one sentence."""
    from .build import missing_for_engines

    art = artifact.load(model_dir)
    m = art.manifest
    missing = missing_for_engines()
    if not m.get("engines") or missing or not cuda_available():
        why = ("it has no engines" if not m.get("engines") else
               f"this machine lacks {' and '.join(missing) if missing else 'a CUDA build of torch'}")
        raise ValueError(f"{model_dir}: a trt artifact is benchmarked through its engines, but {why}; its Q/DQ ONNX runs in "
                         "ONNX Runtime only to check the graph, which says nothing about TensorRT's speed")
    return TrtSR(art, "int8")
