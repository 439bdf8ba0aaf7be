"""Latency and memory of an exported artifact against its float baselines, per component.

Variants, all on the same input in one process. An onnx artifact:
    int_onnx    the artifact's integer ONNX model (ONNX Runtime, CPU provider)
    fp32_onnx   the same IR graph traced without quantization, lowered the same way
    torch_fp32  the FP model in PyTorch eager mode
A trt artifact (GPU with TensorRT; its fixed tile is the input, whatever --vae-size says):
    trt_int8    the INT8 engines (Q/DQ convs and matmuls, float ops as exported: FP16 by default)
    trt_fp16    the FP16 engines of the same components' float graphs
    torch_fp16  the FP model in PyTorch FP16, captured in CUDA graphs at the same shapes
A triton artifact (an FP32 ONNX Runtime baseline would be a CPU number next to a GPU one):
    triton      the diffusers graph with the integer layers on the Triton kernels, CUDA graphs
    torch_fp16  on a GPU: the FP model in PyTorch FP16, captured in CUDA graphs the same way
    torch_fp32  on a CPU, where the kernels run in Triton's interpreter: the record says so,
                and its timings describe the interpreter, not the kernels

Every variant is warmed up, then the variants are timed in alternation (run 1 of each, run 2
of each, ...) so that load changes on a shared machine hit all of them alike; the median of
>= 5 runs is reported with every sample. Memory: each ONNX model's peak resident set when loaded and run once in a fresh
process (memprobe.py; in-process numbers cannot separate models, as freed pages are reused),
and, sampled in-process, the resident-set increase while a variant is loaded and warmed up
(for PyTorch its FP32 parameters + workspace) and the process's peak; weight bytes are the
files a variant loads.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

VARIANTS = ("int_onnx", "fp32_onnx", "torch_fp32")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Highest resident set size seen while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


def machine_info() -> dict:
    from passion_deploy.export.artifact import cpu_flags, cpu_model

    flags = cpu_flags()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "cpu_flags": {f: f in flags for f in CPU_FLAGS},
            "platform": platform.platform(), "python": sys.version.split()[0], "load_average": load,
            "torch_threads": torch.get_num_threads()}


def versions() -> dict:
    import diffusers
    import onnx
    import onnxruntime

    from passion_deploy import __version__

    v = {"passion_deploy": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
         "onnx": onnx.__version__, "numpy": np.__version__, "diffusers": diffusers.__version__}
    try:
        import triton

        v["triton"] = triton.__version__
    except ImportError:
        pass
    return v


def time_alternating(fns: dict, rec: dict, runs: int, progress: bool, desc: str, sync=None) -> None:
    """Time the variants in alternation (run 1 of each, run 2 of each, ...): load changes on a
    shared machine then hit all of them alike. Fills rec[variant] with every sample, the median,
    min and max, and the peak RSS seen while it ran; `sync` (a GPU's synchronize) runs inside
    each timed call, so a sample covers the work, not its launch."""
    from tqdm import tqdm

    for v in fns:
        rec[v].update(samples_s=[], peak_rss_bytes=0)
    with torch.no_grad():
        for _ in tqdm(range(runs), desc=desc, unit="run", disable=not progress):
            for v, fn in fns.items():
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    fn()
                    if sync is not None:
                        sync()
                    rec[v]["samples_s"].append(time.perf_counter() - t0)
                rec[v]["peak_rss_bytes"] = max(rec[v]["peak_rss_bytes"], mem.peak)
    for v in fns:
        smp = rec[v]["samples_s"]
        rec[v].update(median_s=statistics.median(smp), min_s=min(smp), max_s=max(smp))


def speedups(rec: dict, artifact_variant: str) -> dict:
    """Baseline median / artifact median, per baseline variant."""
    art = rec[artifact_variant]["median_s"]
    return {f"vs_{v}": r["median_s"] / art for v, r in rec.items() if v != artifact_variant and "median_s" in r}


def bench_inputs(manifest: dict, vae_px: int | None, seed: int = 0) -> dict[str, tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    p = manifest["pipeline"]
    th, tw = p["latent_tile"]
    px = vae_px or th * p["vae_factor"]
    if px % p["size_multiple"]:
        raise ValueError(f"--vae-size {px} must be a multiple of {p['size_multiple']}")
    lo = torch.rand(1, 3, max(px // 8, 2), max(px // 8, 2), generator=g)
    image = torch.nn.functional.interpolate(lo, size=(px, px), mode="bicubic", align_corners=False).clamp(0, 1)
    return {"unet": ("latent", torch.randn(1, 4, th, tw, generator=g)),
            "vae_encoder": ("image", image),
            "vae_decoder": ("latent", torch.randn(1, 4, px // p["vae_factor"], px // p["vae_factor"], generator=g) * 3)}


def probe_memory(model: Path, feeds: dict, threads: int | None, workdir: Path) -> dict:
    """Peak RSS of loading + running one ONNX model, in a fresh process (benchmarks/memprobe.py)."""
    import json
    import subprocess

    inputs = workdir / "memprobe_inputs.npz"
    np.savez(inputs, **feeds)
    out = subprocess.run([sys.executable, "-m", "passion_deploy.benchmarks.memprobe", str(model), str(inputs), str(threads or 0)],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["memory probe failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _dir_bytes(d: Path, files: list[str]) -> int:
    return sum((d / f).stat().st_size for f in files if f and (d / f).exists())


def run_benchmark(model_dir: str | Path, components: list[str] | None = None, runs: int = 5, warmup: int = 1,
                  vae_px: int | None = None, threads: int | None = None, torch_eager: bool = True,
                  progress: bool = True, log=print, timing_only_isa: bool = False, memory: bool = True) -> dict:
    from passion_deploy.export import artifact
    from passion_deploy.export.exporter import save_onnx, trace_probes
    from passion_deploy.export.fp_model import fp_copy
    from passion_deploy.export.onnx_lower import lower_graph
    from passion_deploy.export.runtime import OnnxSR, session
    from passion_deploy.export.trace import trace_component

    if runs < 5:
        raise ValueError("--runs must be at least 5 (the median of fewer runs is not reported)")
    model_dir = Path(model_dir)
    target = artifact.read_manifest(model_dir)["target"]
    if target == "triton":
        return run_triton_benchmark(model_dir, components, runs, warmup, vae_px, threads, torch_eager, progress, log)
    if target == "trt":
        return run_trt_benchmark(model_dir, components, runs, warmup, torch_eager, progress, log)
    # sessions are loaded below, measured; timing_only_isa times a --isa vnni artifact on a CPU
    # without VNNI, where its int8 GEMMs saturate: the timing is meaningful, the outputs are not
    rt = OnnxSR(model_dir, threads=threads, load_sessions=False, check_isa=not timing_only_isa)
    m = rt.manifest
    components = components or list(m["components"])
    missing = [c for c in components if c not in m["components"]]
    if missing:
        raise ValueError(f"{model_dir}: the artifact has no {missing[0]} component")
    if threads:
        torch.set_num_threads(threads)
    inputs = bench_inputs(m, vae_px)
    record = {"model_dir": str(model_dir), "target": "onnx", "artifact_variant": "int_onnx",
              "source_checkpoint": m["source_checkpoint"], "quant_config": m["quant_config_name"],
              "isa": m["isa"], "machine": machine_info(), "versions": versions(),
              "settings": {"runs": runs, "warmup": warmup, "ort_intra_op_threads": threads or "default",
                           "isa_check_skipped_outputs_invalid": bool(timing_only_isa and m["isa"] == "vnni"
                                                                     and not artifact.cpu_has_vnni()),
                           "order": "variants alternate within each run"}, "components": {}}
    log(f"passion-bench: loading the fake-quant checkpoint for the FP32 baselines ({m['source_checkpoint']['name']})")
    pipe = rt.fallback()
    tmp = Path(tempfile.mkdtemp(prefix="passion-bench-"))
    fp_files = {}
    probes = trace_probes(pipe, tuple(m["pipeline"]["latent_tile"]))
    try:
        for comp in components:
            log(f"passion-bench: building the FP32 ONNX baseline of {comp}")
            with torch.no_grad():
                g, _ = trace_component(pipe, comp, probes[comp], quantized=False, fold=bool(m["components"][comp].get("folded_constants", True)))
            fp_files[comp] = save_onnx(lower_graph(g), tmp, comp)
            del g
        fp = fp_copy(pipe, inplace=True)  # the fake-quant model is not needed any more
        rt._fallback = None
        torch_fns = {"unet": fp.unet_eps, "vae_encoder": fp.encode, "vae_decoder": fp.decode}
        for comp in components:
            name, x = inputs[comp]
            feeds = {name: x.numpy(), **rt.extra_feeds(comp)}
            c = m["components"][comp]
            rec = {"int_onnx": {"weight_bytes_on_disk": _dir_bytes(model_dir, [c["onnx"], c.get("onnx_data")]),
                                "ir_bytes_on_disk": c["ir_file_bytes"]},
                   "fp32_onnx": {"weight_bytes_on_disk": _dir_bytes(tmp, fp_files[comp])}}
            fns = {}
            # load each session and warm it up while sampling memory: weights + workspace
            for v, path in (("int_onnx", model_dir / c["onnx"]), ("fp32_onnx", tmp / f"{comp}.onnx")):
                before = rss_bytes()
                with PeakRSS() as mem:
                    sess = session(path, threads)
                    for _ in range(warmup):
                        sess.run(None, feeds)
                rec[v]["load_and_warmup_rss_increase_bytes"] = mem.peak - before
                fns[v] = (lambda s=sess: s.run(None, feeds))
            if torch_eager:
                before = rss_bytes()
                f = torch_fns[comp]
                with torch.no_grad(), PeakRSS() as mem:
                    for _ in range(warmup):
                        f(x)
                rec["torch_fp32"] = {"weight_bytes_in_memory": c["fp32_weight_bytes"],
                                     "load_and_warmup_rss_increase_bytes": mem.peak - before + c["fp32_weight_bytes"]}
                fns["torch_fp32"] = (lambda f=f: f(x))
            time_alternating(fns, rec, runs, progress, f"bench {comp}")
            del fns
            if memory:
                for v, path in (("int_onnx", model_dir / c["onnx"]), ("fp32_onnx", tmp / f"{comp}.onnx")):
                    rec[v]["subprocess_memory"] = probe_memory(path, feeds, threads, tmp)
            speed = speedups(rec, "int_onnx")
            record["components"][comp] = {"input": {name: list(x.shape)}, "variants": rec, "speedup": speed,
                                          "ir_vs_fp32_bytes": c["ir_vs_fp32"]}
            log(f"  {comp:12s} int {rec['int_onnx']['median_s'] * 1e3:9.1f} ms   fp32 ORT {rec['fp32_onnx']['median_s'] * 1e3:9.1f} ms"
                + (f"   torch {rec['torch_fp32']['median_s'] * 1e3:9.1f} ms" if "torch_fp32" in rec else "")
                + f"   -> {speed['vs_fp32_onnx']:.2f}x vs FP32 ORT")
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    record["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return record


def run_triton_benchmark(model_dir: Path, components: list[str] | None, runs: int, warmup: int, vae_px: int | None,
                         threads: int | None, torch_eager: bool, progress: bool, log) -> dict:
    """A triton artifact vs the FP model in PyTorch (FP16 with CUDA graphs on a GPU, FP32 on a CPU)."""
    from passion_deploy.export import artifact
    from passion_deploy.export.fp_model import fp_copy
    from passion_deploy.export.triton_runtime import TritonSR

    if threads:
        torch.set_num_threads(threads)
    log(f"passion-bench: loading {model_dir} (the integer layers onto the Triton kernels)")
    rt = TritonSR(model_dir)
    m = rt.manifest
    components = components or list(m["components"])
    missing = [c for c in components if c not in m["components"]]
    if missing:
        raise ValueError(f"{model_dir}: the artifact has no {missing[0]} component")
    gpu = rt.device.type == "cuda"
    dev, dtype = rt.device, rt.compute_dtype
    baseline = "torch_fp16" if gpu else "torch_fp32"
    machine = machine_info()
    if gpu:
        machine["gpu"] = torch.cuda.get_device_name(dev)
    record = {"model_dir": str(model_dir), "target": "triton", "artifact_variant": "triton",
              "source_checkpoint": m["source_checkpoint"], "quant_config": m["quant_config_name"],
              "runtime": rt.description, "machine": machine, "versions": versions(),
              "settings": {"runs": runs, "warmup": warmup, "device": str(dev), "compute_dtype": str(dtype).replace("torch.", ""),
                           "cuda_graphs": rt.graphs is not None, "triton_interpreter": not gpu,
                           "order": "variants alternate within each run"}, "components": {}}
    if not gpu:
        record["settings"]["note"] = ("no GPU: the kernels ran in Triton's CPU interpreter; these timings measure the "
                                      "interpreter, not the kernels")
    fns_of = {"unet": "unet_eps", "vae_encoder": "encode", "vae_decoder": "decode"}
    fp = None
    if torch_eager:
        log(f"passion-bench: building the {baseline} baseline from {m['source_checkpoint']['name']}")
        fp = fp_copy(artifact.load_source_pipeline(m), inplace=True).to(dev, dtype)
        graphs = None
        if gpu:
            from passion_deploy.export.cuda_graphs import GraphCache

            graphs = GraphCache(rt.tile_shapes())  # the baseline gets CUDA graphs at the same shapes
    sync = torch.cuda.synchronize if gpu else None
    inputs = bench_inputs(m, vae_px)
    for comp in components:
        name, x = inputs[comp]
        x = x.to(dev, dtype)
        c = m["components"][comp]
        variants = {"triton": rt.component_fn(comp)}
        rec = {"triton": {"weight_bytes_on_disk": c["ir_file_bytes"]}}
        if fp is not None:
            f = getattr(fp, fns_of[comp])
            variants[baseline] = partial(graphs.run, comp, f) if graphs else f
            rec[baseline] = {"weight_bytes_in_memory": c["fp32_weight_bytes"] * (2 if gpu else 4) // 4}
        fns = {}
        with rt.kernel_context(), torch.no_grad():
            for v, f in variants.items():  # warm-up: Triton compiles, CUDA graphs are captured
                before = torch.cuda.memory_allocated(dev) if gpu else rss_bytes()
                if gpu:
                    torch.cuda.reset_peak_memory_stats(dev)
                with PeakRSS() as mem:
                    for _ in range(max(warmup, 1)):
                        f(x)
                    if sync:
                        sync()
                if gpu:
                    rec[v]["warmup_peak_gpu_bytes_over_resident"] = torch.cuda.max_memory_allocated(dev) - before
                else:
                    rec[v]["load_and_warmup_rss_increase_bytes"] = mem.peak - before
                fns[v] = (lambda f=f: f(x))
            time_alternating(fns, rec, runs, progress, f"bench {comp}", sync)
        speed = speedups(rec, "triton")
        record["components"][comp] = {"input": {name: list(x.shape)}, "variants": rec, "speedup": speed,
                                      "ir_vs_fp32_bytes": c["ir_vs_fp32"]}
        log(f"  {comp:12s} triton {rec['triton']['median_s'] * 1e3:9.1f} ms"
            + (f"   {baseline} {rec[baseline]['median_s'] * 1e3:9.1f} ms   -> {speed['vs_' + baseline]:.2f}x vs {baseline}"
               if baseline in rec else ""))
    record["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return record


def run_trt_benchmark(model_dir: Path, components: list[str] | None, runs: int, warmup: int, torch_eager: bool,
                      progress: bool, log) -> dict:
    """TensorRT INT8 vs TensorRT FP16 vs PyTorch FP16, all on the GPU at the artifact's tile."""
    from passion_deploy.export import artifact
    from passion_deploy.export.cuda_graphs import GraphCache
    from passion_deploy.export.fp_model import fp_copy
    from passion_deploy.export.trt_build import missing_for_engines
    from passion_deploy.export.trt_runtime import TrtSR

    m = artifact.read_manifest(model_dir)
    missing = missing_for_engines()
    if not m.get("engines") or missing or not torch.cuda.is_available():
        why = ("it has no engines" if not m.get("engines") else
               f"this machine lacks {' and '.join(missing) if missing else 'a CUDA build of torch'}")
        raise ValueError(f"{model_dir}: a trt artifact is benchmarked through its engines, but {why}; its Q/DQ ONNX runs in "
                         "ONNX Runtime only to check the graph (dequantized float ops), which says nothing about TensorRT's speed")
    rts = {"trt_int8": TrtSR(model_dir, "int8"), "trt_fp16": TrtSR(model_dir, "fp16")}
    components = components or list(m["components"])
    missing_c = [c for c in components if c not in m["components"]]
    if missing_c:
        raise ValueError(f"{model_dir}: the artifact has no {missing_c[0]} component")
    machine = machine_info()
    machine["gpu"] = torch.cuda.get_device_name(0)
    record = {"model_dir": str(model_dir), "target": "trt", "artifact_variant": "trt_int8",
              "source_checkpoint": m["source_checkpoint"], "quant_config": m["quant_config_name"],
              "runtime": rts["trt_int8"].description, "tensorrt": m["tensorrt"], "machine": machine,
              "versions": versions(), "settings": {"runs": runs, "warmup": warmup, "device": "cuda",
                                                   "order": "variants alternate within each run"}, "components": {}}
    fp = graphs = None
    if torch_eager:
        log(f"passion-bench: building the torch_fp16 baseline from {m['source_checkpoint']['name']}")
        fp = fp_copy(artifact.load_source_pipeline(m), inplace=True).to("cuda", torch.float16)
        graphs = GraphCache({c: tuple(next(iter(m["components"][c]["fixed_input_shapes"].values()))) for c in components})
    fns_of = {"unet": "unet_eps", "vae_encoder": "encode", "vae_decoder": "decode"}
    for comp in components:
        c = m["components"][comp]
        name, shape = next(iter(c["fixed_input_shapes"].items()))
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).cuda()
        variants = {v: rt.component_fn(comp) for v, rt in rts.items()}
        rec = {v: {"engine_bytes_on_disk": m["engines"][comp][v.split("_")[1]]["bytes"]} for v in rts}
        if fp is not None:
            variants["torch_fp16"] = partial(graphs.run, comp, getattr(fp, fns_of[comp]))
            rec["torch_fp16"] = {"weight_bytes_in_memory": c["fp32_weight_bytes"] // 2}
        fns = {}
        with torch.no_grad():
            for v, f in variants.items():
                xin = x.half() if v == "torch_fp16" else x
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                for _ in range(max(warmup, 1)):
                    f(xin)
                torch.cuda.synchronize()
                rec[v]["warmup_peak_gpu_bytes_over_resident"] = torch.cuda.max_memory_allocated() - before
                if v != "torch_fp16":  # TensorRT's own activation memory, outside torch's allocator
                    eng = rts[v].sessions[comp].engine  # device_memory_size is gone in TensorRT 11
                    size = getattr(eng, "device_memory_size_v2", None)
                    rec[v]["engine_device_memory_bytes"] = int(size if size is not None else eng.device_memory_size)
                fns[v] = (lambda f=f, xin=xin: f(xin))
            time_alternating(fns, rec, runs, progress, f"bench {comp}", torch.cuda.synchronize)
        speed = speedups(rec, "trt_int8")
        record["components"][comp] = {"input": {name: list(shape)}, "variants": rec, "speedup": speed,
                                      "ir_vs_fp32_bytes": c["ir_vs_fp32"]}
        log(f"  {comp:12s} " + "   ".join(f"{v} {rec[v]['median_s'] * 1e3:8.2f} ms" for v in variants)
            + "   -> " + ", ".join(f"{r:.2f}x {k}" for k, r in speed.items()))
    record["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return record
