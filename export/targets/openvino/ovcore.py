"""What the openvino runtime and passion-bench's OpenVINO baselines share: the compile settings,
one compiled model per static input shape, and what a compiled model says about itself
(the precision it really runs, how many convs/matmuls became int8 primitives)."""
from __future__ import annotations

from pathlib import Path

from ... import artifact

INTEGER_LAYERS = ("Convolution", "MatMul", "FullyConnected")
INT8_TYPES = ("u8", "i8")


def openvino_version() -> str:
    import openvino as ov

    return ov.__version__


def core():
    """One OpenVINO Core per process: it holds the CPU plugin and its thread pools."""
    global _core
    if _core is None:
        import openvino as ov

        _core = ov.Core()
    return _core


_core = None


def default_precision() -> str:
    """The CPU plugin's own inference precision when none is asked for: bf16 on CPUs with bf16
    (AVX-512 BF16, AMX), f32 elsewhere."""
    return _short(core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def cpu_info() -> dict:
    caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return {"cpu": artifact.cpu_model(), "vnni": artifact.cpu_has_vnni(), "bf16": "BF16" in caps,
            "openvino_default_precision": default_precision(),
            # oneDNN's ISA cap where one is set (ONEDNN_MAX_CPU_ISA), and the VNNI the kernels use under it
            "onednn_max_cpu_isa": artifact.onednn_isa_cap(), "onednn_vnni": artifact.onednn_has_vnni()}


def compile_config(precision: str | None, mode: str | None = None, threads: int | None = None) -> dict:
    """The CPU plugin's settings. precision: f32 or bf16, always given for the artifact (None only
    for the "OpenVINO default" baseline, which is what a user who sets nothing gets). mode dequant
    switches the low-precision transformations off: Q/DQ pairs then stay rounding ops in f32. The
    int8 modes keep them on, int8_narrow too: its int8 layers need them, and its f32 layers hold
    no Q/DQ pair for them to act on (check_compiled holds it to that)."""
    cfg = {"PERFORMANCE_HINT": "LATENCY"}  # one request at a time, as every runtime here is called
    if precision is not None:
        cfg["INFERENCE_PRECISION_HINT"] = precision
    if mode == "dequant":
        cfg["LP_TRANSFORMS_MODE"] = "NO"  # the CPU plugin's (internal) switch; check_compiled confirms it took
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def _short(t) -> str:
    """An OpenVINO element type as f32 / bf16 / f16 / u8 / i8."""
    s = str(getattr(t, "get_type_name", lambda: t)())
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "uint8_t": "u8", "int8_t": "i8"}.get(
        s.replace("<Type: '", "").replace("'>", ""), s)


def effective_precision(compiled) -> str:
    return _short(compiled.get_property("INFERENCE_PRECISION_HINT"))


def int8_primitives(compiled) -> tuple[int, int]:
    """(convs/matmuls whose activation input is int8 in the compiled graph, all convs/matmuls)."""
    n_int = n_all = 0
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) not in INTEGER_LAYERS:
            continue
        n_all += 1
        n_int += _short(op.input(0).get_element_type()) in INT8_TYPES
    return n_int, n_all


def f32_layer_int8_kernels(compiled, layers: list[str]) -> tuple[list[str], int]:
    """(the convs/matmuls of the named fake-quant layers that run on int8 inputs, how many of those
    layers' convs/matmuls were found) in a compiled int8_narrow model: a node belongs to layer L
    when its own name starts with `n.L.` (the lowering's names; a node fused into it keeps that)."""
    prefixes = tuple(f"n.{layer}." for layer in layers)
    bad, found = [], 0
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) not in INTEGER_LAYERS or not op.get_friendly_name().startswith(prefixes):
            continue
        found += 1
        if _short(op.input(0).get_element_type()) in INT8_TYPES:
            bad.append(f"{op.get_friendly_name()} ({rt['primitiveType'].astype(str)})")
    return bad, found


def check_compiled(compiled, mode: str, precision: str, where: str, f32_layers: list[str] | None = None) -> dict:
    """Refuse a compiled model that does not run as the artifact was verified: float ops in a lower
    precision than asked (a bf16 compile of an f32 artifact), or, in dequant mode, int8 primitives
    (an OpenVINO that ignored LP_TRANSFORMS_MODE would saturate on CPUs without VNNI), or, in
    int8_narrow mode, an int8 primitive in one of its f32 layers `f32_layers` (the layers it
    exported to run in f32, those whose operands can saturate among them). Returns what it found,
    for the runtime's description and the benchmark record."""
    got = effective_precision(compiled)
    if precision == "f32" and got != "f32":
        raise artifact.ArtifactError(f"{where}: OpenVINO compiled it in {got} although the artifact was exported and "
                                     "verified in f32; this OpenVINO ignores INFERENCE_PRECISION_HINT=f32")
    n_int, n_all = int8_primitives(compiled)
    if mode == "dequant" and n_int:
        raise artifact.ArtifactError(f"{where}: OpenVINO {openvino_version()} still runs {n_int} of {n_all} convs/matmuls "
                                     "as int8 primitives with its low-precision transformations switched off, so the exact "
                                     "dequant mode is not available with this version; install the version the manifest names")
    if mode == "int8_narrow" and f32_layers:
        bad, _ = f32_layer_int8_kernels(compiled, f32_layers)
        if bad:
            raise artifact.ArtifactError(f"{where}: OpenVINO {openvino_version()} runs {len(bad)} conv/matmul(s) of the "
                                         f"layers exported to run in f32 as int8 primitives ({bad[0]}), which may saturate "
                                         "on CPUs without VNNI; re-export with --ov-mode dequant")
    return {"precision": got, "int8_primitives": n_int, "convs_and_matmuls": n_all}


class StaticModels:
    """One OpenVINO model compiled per input shape: the VAE graphs take any size, and the CPU
    plugin runs a static shape faster than a dynamic one (it plans memory and picks kernels once)."""

    def __init__(self, model, config: dict, check=None):
        self.model, self.config, self.check = model, config, check
        self.dynamic = any(i.get_partial_shape().is_dynamic for i in model.inputs)
        self.compiled: dict[tuple, object] = {}
        self.found: dict | None = None

    def get(self, feeds: dict):
        key = tuple(sorted((k, tuple(v.shape)) for k, v in feeds.items()))
        if key not in self.compiled:
            if self.model is None:
                raise ValueError(f"this OpenVINO model takes only its fixed input shape {self.compiled and next(iter(self.compiled))}, "
                                 f"got {key}")
            m = self.model
            if self.dynamic:
                m = m.clone()
                m.reshape({k: list(s) for k, s in key})
            c = core().compile_model(m, "CPU", self.config)
            if self.check is not None:
                self.found = self.check(c)
            self.compiled[key] = c
            if not self.dynamic:
                # a fixed-shape model is compiled once: the plugin holds its own copy of the weights, so
                # the source model's (3.3 GB for the sd21 UNet in FP32) need not stay in memory too
                self.model = None
        return self.compiled[key]

    def __call__(self, feeds: dict):
        """The first output for `feeds` ({input name: float32 array}), as a numpy array."""
        return self.get(feeds)(feeds)[0]


def convert(model, tmp: Path, stem: str):
    """The OpenVINO model of an ONNX graph (by way of a file in `tmp`: the ONNX frontend reads
    external data beyond protobuf's 2 GB, a BytesIO cannot carry it).

    Read by Core.read_model, not ov.convert_model: convert_model's offline constant folding turns
    the weights' decompression (i8 constant -> Convert -> Multiply) into f32 constants once no
    activation Q/DQ pair sits next to it (measured: the dequant tiny encoder's int8 weight bytes
    fell from 330 kB to 17 kB and its .bin grew 3.4x); read_model keeps them int8."""
    from ...onnx_graph import save_onnx

    save_onnx(model, tmp, stem)
    return core().read_model(str(tmp / f"{stem}.onnx"))
