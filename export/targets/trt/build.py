"""TensorRT engines from the trt target's ONNX (machines with an NVIDIA GPU and TensorRT).

Each component gets two engines at the artifact's fixed tile: `<component>.int8.engine` from
its Q/DQ graph (explicit quantization: the Q/DQ pairs make the convs and matmuls INT8) and
`<component>.fp16.engine` from its float graph, the baseline passion-bench compares against.
TensorRT 11 builds only strongly typed networks, so precision is written into the graph rather
than switched on with builder flags: the baseline's float graph is converted to FP16
(fp16.py); the INT8 engine keeps its float ops (norms, activations, softmax, shift terms)
FP32 by default, the closest to the fake-quant model, or FP16 with `float_precision="fp16"`
(faster; refused for graphs whose quantization scales FP16 cannot hold).

The build reuses a timing cache file between builds, shows TensorRT's build phases with tqdm,
and writes each engine atomically. An engine runs only with the TensorRT version and on the
GPU model it was built with; the manifest records both and the runtime checks them.
"""
from __future__ import annotations

from passion_deploy.errors import PassionError
import importlib
import os
import tempfile
import threading
import time
from pathlib import Path

from passion_deploy.devices import cuda_available, gpu_name, pycuda_gpu
from passion_deploy.io_utils import atomic_path

INSTALL_HINT = ("on a machine with an NVIDIA GPU and driver, `pip install tensorrt pycuda` "
                "(or `pip install -e '.[gpu]'`), then rerun passion-export --target trt")


class EngineBuildError(PassionError, RuntimeError):
    """TensorRT refused a graph or failed to build it; the message names the file."""


def missing_for_engines() -> list[str]:
    """What this machine lacks to build and run engines (empty when nothing)."""
    missing = []
    try:
        importlib.import_module("tensorrt")
    except (ImportError, OSError):  # OSError: the package is there but libnvinfer is not
        missing.append("TensorRT")
    if not cuda_available():
        pyc = pycuda_gpu()
        if pyc is None:
            missing.append("a CUDA GPU (this torch build sees none, and pycuda, the other way to reach one, is not installed)")
        elif not pyc:
            missing.append("a CUDA GPU (neither torch nor pycuda finds one)")
    return missing


def default_timing_cache() -> Path:
    import tensorrt as trt

    safe = "".join(ch if ch.isalnum() else "-" for ch in gpu_name())
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "passion-deploy" / f"trt-{trt.__version__}-{safe}.timing"


def _progress_monitor(desc: str):
    """tqdm bars for TensorRT's build phases (IProgressMonitor; TensorRT calls it from its threads)."""
    import tensorrt as trt
    from tqdm import tqdm

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, tqdm] = {}
            self.lock = threading.Lock()

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self.lock:
                self.bars[phase_name] = tqdm(total=num_steps, desc=f"{desc}: {phase_name}", leave=False,
                                             position=len(self.bars))

        def step_complete(self, phase_name, step):
            with self.lock:
                bar = self.bars.get(phase_name)
                if bar is not None:
                    bar.n = step + 1
                    bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self.lock:
                bar = self.bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return Monitor()


def build_engine(onnx_path: Path, engine_path: Path, input_shapes: dict[str, tuple], max_batch: int = 1,
                 timing_cache: Path | None = None, progress: bool = True, desc: str = "", tf32: bool = True) -> dict:
    """Build one engine from an ONNX file (its external data beside it); returns its record.
    `tf32=False` keeps FP32 float ops in FP32: TensorRT otherwise may round their matmul and conv
    inputs to TF32's 10-bit mantissa (on by default), which is not the float32 they promise."""
    import tensorrt as trt

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly is None else 1 << int(strongly))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__}'s ONNX parser refused it: {errors}")
    config = builder.create_builder_config()
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        shape = tuple(input_shapes[name])
        one, most = (1,) + shape[1:], (max(max_batch, 1),) + shape[1:]
        profile.set_shape(name, one, one, most)  # fixed tile; the batch may grow to max_batch
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(desc or engine_path.name)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} could not build an engine (its log above says why)")
    with atomic_path(engine_path) as tmp:
        Path(tmp).write_bytes(bytes(plan))
    if timing_cache is not None:  # reused by the next build (the other engines, later exports)
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(timing_cache) as tmp:
            Path(tmp).write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"engine": engine_path.name, "bytes": engine_path.stat().st_size,
            "build_seconds": round(time.perf_counter() - t0, 1)}


def build_component_engines(out_dir: Path, comp: str, qdq, fp,
                            input_shapes: dict[str, tuple], float_precision: str = "fp32", max_batch: int = 1,
                            timing_cache: Path | None = None, progress: bool = True) -> dict:
    """`<comp>.int8.engine` from the Q/DQ graph and `<comp>.fp16.engine` from the float graph."""
    from ...onnx_graph import save_onnx
    from .fp16 import to_fp16

    if float_precision not in ("fp16", "fp32"):
        raise ValueError(f"float precision {float_precision!r}: choose fp16 or fp32")
    rec = {}
    with tempfile.TemporaryDirectory(prefix=f"passion-trt-{comp}-") as tmp:
        for kind, model, convert in (("int8", qdq, float_precision == "fp16"), ("fp16", fp, True)):
            stem = f"{comp}.{kind}.build"
            save_onnx(to_fp16(model) if convert else model, Path(tmp), stem)
            rec[kind] = build_engine(Path(tmp) / f"{stem}.onnx", out_dir / f"{comp}.{kind}.engine", input_shapes,
                                     max_batch, timing_cache, progress, desc=f"{comp} {kind}",
                                     tf32=convert)  # an FP16 graph has no FP32 ops to keep exact
    return rec


def tensorrt_info(float_precision: str, max_batch: int) -> dict:
    import tensorrt as trt

    info = {"version": trt.__version__, "gpu": gpu_name(), "float_precision": float_precision, "max_batch": max_batch}
    if cuda_available():
        import torch

        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return info
