"""Latency and memory of an exported artifact against its float baselines, per component.

Variants, all on the same input in one process. The artifact's runtime supplies its own
(`timing_variants`, export/runtime.py) and names the baselines that apply (`timing_baselines`),
which this module builds from the fake-quant checkpoint the artifact was exported from.
An onnx artifact:
    int_onnx    the artifact's integer ONNX model (ONNX Runtime, CPU provider)
    fp32_onnx   the same IR graph traced without quantization, lowered the same way
    torch_fp32  the FP model in PyTorch eager mode
A trt artifact (GPU with TensorRT; its fixed tile is the input, whatever --vae-size says):
    trt_int8    the INT8 engines (Q/DQ convs and matmuls, float ops as exported: FP16 by default)
    trt_fp16    the FP16 engines of the same components' float graphs
    torch_fp16  the FP model in PyTorch FP16, captured in CUDA graphs at the same shapes
An openvino artifact (its Q/DQ graph in OpenVINO's CPU plugin), against what CPU users pick
(benchmarks/cpu_baselines.py):
    ov_int8 / ov_dequant   the artifact, in the mode its manifest records
    fp32_onnx, torch_fp32  as for an onnx artifact
    ov_fp32     the FP32 graph in OpenVINO, f32;  ov_default  the same at OpenVINO's default
                precision (bf16 where the CPU has it; not timed twice where that is f32)
    nncf_int8   NNCF's post-training INT8 of ov_fp32 (default min-max recipe, the same
                calibration photos as the project's calibration)
A triton artifact (an FP32 ONNX Runtime baseline would be a CPU number next to a GPU one):
    triton      the diffusers graph with the integer layers on the Triton kernels, CUDA graphs
    torch_fp16  on a GPU: the FP model in PyTorch FP16, captured in CUDA graphs the same way
    torch_fp32  on a CPU, where the kernels run in Triton's interpreter: the record says so,
                and its timings describe the interpreter, not the kernels

`vs`: another artifact of the same checkpoint (another target) whose own variant is timed in
the same alternation (passion-bench --vs), e.g. the onnx against the openvino artifact.
`fidelity`: every variant's output on a real photo's input scored against the FP32 PyTorch
pipeline's (PSNR as --verify computes it). `sr_px`: full SR at that output size (encoder, tiled
UNet, decoder, the SR pipeline's default tiling) as one more row, every variant end to end.

Every variant is warmed up, then the variants are timed in alternation (run 1 of each, run 2
of each, ...) so that load changes on a shared machine hit all of them alike; the median of
>= 5 runs is reported with every sample. Memory: each ONNX model's peak resident set when loaded and run once in a fresh
process (memprobe.py; in-process numbers cannot separate models, as freed pages are reused),
and, sampled in-process, the resident-set increase while a variant is loaded and warmed up
(for PyTorch its FP32 parameters + workspace) and the process's peak, or on a GPU the
allocator's peak over what was resident; weight bytes are the files a variant loads.
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
from typing import TYPE_CHECKING

import numpy as np
import torch

from passion_deploy.models.components import component

if TYPE_CHECKING:
    from passion_deploy.export.runtime import ArtifactRuntime, TimingVariant

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
TORCH_DTYPES = {"torch_fp32": torch.float32, "torch_fp16": torch.float16}  # the PyTorch baselines


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
        self.start = self.peak = rss_bytes()
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

    @property
    def increase(self) -> int:
        return self.peak - self.start


class GpuPeak:
    """The GPU allocator's peak while the block runs, over what was allocated when it began
    (torch's tensors only: TensorRT's own memory is outside it)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        self.start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize(self.device)
        self.increase = torch.cuda.max_memory_allocated(self.device) - self.start


def machine_info(gpu: bool = False) -> dict:
    from passion_deploy.devices import gpu_name
    from passion_deploy.export.artifact import cpu_flags, cpu_model

    flags = cpu_flags()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    info = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "cpu_flags": {f: f in flags for f in CPU_FLAGS},
            "platform": platform.platform(), "python": sys.version.split()[0], "load_average": load,
            "torch_threads": torch.get_num_threads()}
    if gpu:
        info["gpu"] = gpu_name()
    return info


def versions() -> dict:
    import diffusers
    import onnx
    import onnxruntime

    from passion_deploy import __version__

    v = {"passion_deploy": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
         "onnx": onnx.__version__, "numpy": np.__version__, "diffusers": diffusers.__version__}
    for name in ("triton", "openvino", "nncf"):  # where installed: the triton and openvino targets, NNCF's baseline
        try:
            v[name] = __import__(name).__version__
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


def bench_inputs(rt: ArtifactRuntime, vae_px: int | None, seed: int = 0) -> dict[str, tuple[str, torch.Tensor]]:
    """Each component's input name and host float32 input: the UNet at the latent tile, the VAE
    at a vae_px square image (default: the tile's); a runtime with a fixed VAE tile (TensorRT
    engines) takes that tile, whatever vae_px says."""
    f = rt.vae_factor
    if rt.fixed_vae_latent_tile or not vae_px:
        vae_tile = rt.latent_tile
    elif vae_px % rt.size_multiple:
        raise ValueError(f"--vae-size {vae_px} must be a multiple of {rt.size_multiple}")
    else:
        vae_tile = (vae_px // f, vae_px // f)
    g = torch.Generator().manual_seed(seed)
    _, _, h, w = component("vae_encoder").input_shape(vae_tile, f)
    lo = torch.rand(1, 3, max(h // 8, 2), max(w // 8, 2), generator=g)
    latent = torch.randn(component("unet").input_shape(rt.latent_tile, f), generator=g)
    image = torch.nn.functional.interpolate(lo, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    z0 = torch.randn(component("vae_decoder").input_shape(vae_tile, f), generator=g) * 3
    return {"unet": ("latent", latent), "vae_encoder": ("image", image), "vae_decoder": ("latent", z0)}


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


def open_for_timing(model_dir: str | Path, threads: int | None, timing_only_isa: bool, log) -> ArtifactRuntime:
    """The artifact's runtime as passion-bench times it (its target's `open_for_timing`; an
    unknown target is refused by name)."""
    from passion_deploy.export import artifact, targets

    art = artifact.load(model_dir)
    log(f"passion-bench: opening {art.dir} ({art.target} artifact)")
    return targets.open_for_timing(art, threads=threads, timing_only_isa=timing_only_isa)


class Baselines:
    """The float baselines a runtime names, built from the fake-quant checkpoint its artifact was
    exported from: fp32_onnx (the IR traced without quantization, lowered with lower_float, in
    ONNX Runtime) and one PyTorch baseline, torch_fp32 or torch_fp16 (its float model on the
    runtime's device, or `device`; on a GPU captured in CUDA graphs at the runtime's tile shapes)."""

    def __init__(self, rt: ArtifactRuntime, names: list[str], components: list[str], threads: int | None, workdir: Path, log,
                 device: torch.device | None = None, shapes: dict | None = None, fidelity: bool = False,
                 sr_px: int | None = None, calib_dir: str | Path | None = None):
        from passion_deploy.export import artifact
        from passion_deploy.export.fp_model import fp_copy

        from .cpu_baselines import OV_BASELINES, OpenVinoBaselines, PhotoData, require

        require(names)
        self.rt, self.names, self.threads, self.dir = rt, list(names), threads, workdir
        self.device = torch.device(device) if device is not None else rt.device
        self.fp = self.graphs = self.photos = self.ov = None
        self.onnx_files: dict[str, list[str]] = {}
        self.skipped: dict[str, str] = {}
        if not names and not fidelity and not sr_px:
            return
        m = rt.manifest
        log(f"passion-bench: loading the fake-quant checkpoint for the baselines {', '.join(names)} "
            f"({m['source_checkpoint']['name']})")
        pipe = artifact.load_source_pipeline(m, rt.dir, *rt.source_weights)
        ov_names = [n for n in names if n in OV_BASELINES]
        if "fp32_onnx" in names or ov_names:
            self.onnx_files = self.lower_float(pipe, components, log)
        fp32 = None
        if fidelity or sr_px or "nncf_int8" in names:
            # real-photo inputs, FP32 references and NNCF's calibration data, all computed now on the CPU
            # in FP32, before the PyTorch baseline may move that pipeline to a GPU or FP16
            log("passion-bench: FP32 references on real photos (fidelity, calibration)")
            fp32 = fp_copy(pipe, inplace=True).to("cpu", torch.float32)
            self.photos = PhotoData(fp32, rt, shapes or {}, calib_dir, sr_px, log)
            if "nncf_int8" in names:
                self.photos.calibration("unet")
        if ov_names:
            self.ov = OpenVinoBaselines(rt, workdir, threads, self.photos, log)
            self.skipped = {k: v for k, v in self.ov.skipped().items() if k in names}
            self.names = [n for n in self.names if n not in self.skipped]
        dtype = next((TORCH_DTYPES[n] for n in names if n in TORCH_DTYPES), None)
        if dtype is None and self.photos is not None:
            # inputs, references and calibration data are computed: without a PyTorch baseline the
            # FP32 pipeline (3.5 GB for sd21) need not share the memory with the variants
            self.photos.fp = None
        if dtype is not None:
            # the fake-quant model is done with: its FP copy is converted in place
            self.fp = (fp32 if fp32 is not None else fp_copy(pipe, inplace=True)).to(self.device, dtype)
            if self.device.type == "cuda":
                from passion_deploy.export.cuda_graphs import GraphCache

                self.graphs = GraphCache(rt.tile_shapes())

    def lower_float(self, pipe, components: list[str], log) -> dict[str, list[str]]:
        from passion_deploy.export.exporter import trace_probes
        from passion_deploy.export.ir.trace import trace_component
        from passion_deploy.export.onnx_graph import lower_float, save_onnx

        probes = trace_probes(pipe, self.rt.latent_tile)
        files = {}
        for comp in components:
            log(f"passion-bench: building the FP32 ONNX baseline of {comp}")
            fold = bool(self.rt.manifest["components"][comp].get("folded_constants", True))
            with torch.no_grad():
                g, _ = trace_component(pipe, comp, probes[comp], quantized=False, fold=fold)
            files[comp] = save_onnx(lower_float(g), self.dir, comp)
            del g
        return files

    def variants(self, comp: str, x: torch.Tensor) -> list[TimingVariant]:
        build = {"fp32_onnx": self.fp32_onnx, "torch_fp32": self.pytorch, "torch_fp16": self.pytorch}
        out = [build[n](n, comp, x) if n in build else self.ov.variant(n, comp, x) for n in self.names]
        if self.ov is not None:
            self.ov.release()  # the variants hold what they compile from; the cache need not
        return out

    def fp32_onnx(self, name: str, comp: str, x: torch.Tensor) -> TimingVariant:
        from passion_deploy.export.ort_runtime import session_variant

        weights = sum((self.dir / f).stat().st_size for f in self.onnx_files[comp])
        return session_variant(name, self.dir / f"{comp}.onnx", self.rt.main_input(comp), self.rt.constant_feeds(comp),
                               x, self.threads, {"weight_bytes_on_disk": weights})

    def pytorch(self, name: str, comp: str, x: torch.Tensor) -> TimingVariant:
        from passion_deploy.export.runtime import TimingVariant

        dtype = TORCH_DTYPES[name]
        fn = component(comp).fn(self.fp)
        if self.graphs is not None:
            fn = partial(self.graphs.run, comp, fn)
        fp32_bytes = self.rt.manifest["components"][comp]["fp32_weight_bytes"]
        return TimingVariant(name, lambda: fn, x.to(self.device, dtype),
                             {"weight_bytes_in_memory": fp32_bytes * dtype.itemsize // 4})


def warm_up(v: TimingVariant, runs: int, rec: dict):
    """Load variant v and run it `runs` times (at least once on a GPU: Triton compiles, CUDA graphs
    are captured, TensorRT allocates), recording the memory this took; returns the call to time."""
    if v.x.is_cuda:
        meter, key, held = GpuPeak(v.x.device), "warmup_peak_gpu_bytes_over_resident", 0
        runs = max(runs, 1)
    else:  # a PyTorch model's weights were loaded before its warm-up: its increase counts them
        meter, key, held = PeakRSS(), "load_and_warmup_rss_increase_bytes", v.fields.get("weight_bytes_in_memory", 0)
    with torch.no_grad(), meter:
        fn = v.load()
        for _ in range(runs):
            fn(v.x)
    rec[key] = meter.increase + held
    return partial(fn, v.x)


def time_component(variants: list[TimingVariant], runs: int, warmup: int, progress: bool, desc: str,
                   loaded: dict | None = None) -> dict:
    """{variant: its fields, memory and samples}: each warmed up, then all timed in alternation.
    `loaded`, when given, receives each variant's loaded function (to score its output after)."""
    rec = {v.name: dict(v.fields) for v in variants}
    calls = {v.name: warm_up(v, warmup, rec[v.name]) for v in variants}
    for v in variants:  # what a variant learnt while loading (OpenVINO: the precision it compiled to)
        rec[v.name].update({k: val for k, val in v.fields.items() if k not in rec[v.name]})
    sync = torch.cuda.synchronize if any(v.x.is_cuda for v in variants) else None
    time_alternating(calls, rec, runs, progress, desc, sync)
    if loaded is not None:
        loaded.update({name: call.func for name, call in calls.items()})
    return rec


def score_fidelity(variants: list[TimingVariant], fns: dict, rec: dict, x: torch.Tensor, ref: torch.Tensor,
                   image: bool) -> None:
    """Each variant's output on the real-photo input x, in dB vs the FP32 PyTorch pipeline's `ref`."""
    from .cpu_baselines import psnr_db

    with torch.no_grad():
        for v in variants:
            rec[v.name]["psnr_vs_fp32_db"] = psnr_db(fns[v.name](x.to(v.x.device, v.x.dtype)), ref, image)


def time_full_sr(groups: dict[str, dict], rt: ArtifactRuntime, photos, runs: int, warmup: int, progress: bool) -> dict:
    """Full SR of the fidelity photo, every variant end to end (its three components loaded at
    once, the SR pipeline's default tiling), alternating; `groups`: variant -> {component: TimingVariant}."""
    from .cpu_baselines import ComposedSR, psnr_db

    rec = {name: {} for name in groups}
    calls, outs = {}, {}
    for name, vs in groups.items():
        with torch.no_grad(), PeakRSS() as mem:
            sr = ComposedSR(rt, {c: v.load() for c, v in vs.items()}, vs)
            call = partial(photos.super_resolve, sr)
            for _ in range(max(warmup, 1)):  # at least once: the output is scored, OpenVINO compiles each tile shape
                outs[name] = call()
        rec[name]["load_and_warmup_rss_increase_bytes"] = mem.increase
        rec[name]["psnr_vs_fp32_db"] = psnr_db(outs[name], photos.sr_ref, image=True)
        for v in vs.values():
            rec[name].update({k: val for k, val in v.fields.items() if k not in rec[name] and "bytes" not in k})
        calls[name] = call
    time_alternating(calls, rec, runs, progress, "bench full SR")
    return rec


def probe_onnx_files(rt: ArtifactRuntime, comp: str, x: torch.Tensor, variants: list[TimingVariant], rec: dict,
                     threads: int | None, workdir: Path) -> None:
    """After timing (its sessions closed): each ONNX model's memory, loaded and run alone in a fresh process."""
    feeds = {rt.main_input(comp): x.numpy(), **rt.constant_feeds(comp)}
    for v in variants:
        if v.onnx_file is not None:
            rec[v.name]["subprocess_memory"] = probe_memory(v.onnx_file, feeds, threads, workdir)


def result_line(comp: str, rec: dict, speed: dict) -> str:
    return (f"  {comp:12s} " + "   ".join(f"{v} {r['median_s'] * 1e3:9.2f} ms" for v, r in rec.items())
            + "   -> " + ", ".join(f"{s:.2f}x vs {k.removeprefix('vs_')}" for k, s in speed.items()))


def run_benchmark(model_dir: str | Path, components: list[str] | None = None, runs: int = 5, warmup: int = 1,
                  vae_px: int | None = None, threads: int | None = None, torch_eager: bool = True,
                  progress: bool = True, log=print, timing_only_isa: bool = False, memory: bool = True,
                  weights: str | Path | None = None, lora: str | Path | None = None, device=None,
                  vs: str | Path | None = None, fidelity: bool = False, sr_px: int | None = None,
                  calib_dir: str | Path | None = None, baselines: list[str] | None = None) -> dict:
    """passion-bench's record. `weights` / `lora`: the FP weights of a source checkpoint saved
    without them (the baselines are built from it); `device`: where the PyTorch baseline runs
    (default: where the artifact runs); `vs`, `fidelity`, `sr_px`: see the module docstring;
    `calib_dir`: NNCF's calibration images instead of the checkpoint's own calibration photos;
    `baselines`: the subset of the runtime's float baselines to time (default: all)."""
    if runs < 5:
        raise ValueError("--runs must be at least 5 (the median of fewer runs is not reported)")
    if threads:
        torch.set_num_threads(threads)
    rt = open_for_timing(model_dir, threads, timing_only_isa, log)
    rt.source_weights = (weights, lora)
    m = rt.manifest
    components = components or list(m["components"])
    missing = [c for c in components if c not in m["components"]]
    if missing:
        raise ValueError(f"{model_dir}: the artifact has no {missing[0]} component")
    other = open_other(vs, rt, components, threads, timing_only_isa, log) if vs else None
    if sr_px and set(m["components"]) != {"unet", "vae_encoder", "vae_decoder"}:
        raise ValueError(f"{model_dir}: full SR (--sr-size) needs an artifact with all three components")
    if sr_px and sr_px % (4 * rt.size_multiple):
        raise ValueError(f"--sr-size {sr_px} must be a multiple of {4 * rt.size_multiple} (4x an LR the model takes)")
    # before any warm-up: importing ONNX Runtime (versions) is the process's cost, not the first variant's
    machine, installed = machine_info(gpu=rt.device.type == "cuda"), versions()
    inputs = bench_inputs(rt, vae_px)
    unknown = sorted(set(baselines or ()) - set(rt.timing_baselines))
    if unknown:
        raise ValueError(f"--baselines: a {m['target']} artifact has no baseline {unknown[0]!r} "
                         f"(it has {', '.join(rt.timing_baselines)})")
    names = [n for n in rt.timing_baselines if (torch_eager or n not in TORCH_DTYPES) and (baselines is None or n in baselines)]
    results, art = {}, None
    sr_comps = ("vae_encoder", "unet", "vae_decoder") if sr_px else ()
    with tempfile.TemporaryDirectory(prefix="passion-bench-") as tmp:
        baselines = Baselines(rt, names, sorted(set(components) | set(sr_comps)), threads, Path(tmp), log, device,
                              {c: tuple(inputs[c][1].shape) for c in components}, fidelity, sr_px, calib_dir)
        photos = baselines.photos

        def variants_of(comp: str, x: torch.Tensor) -> list:
            own = rt.timing_variants(comp, x)
            return own + (other.timing_variants(comp, x)[:1] if other is not None else []) + baselines.variants(comp, x)

        for comp in components:
            name, x = inputs[comp]
            variants = variants_of(comp, x)
            art = variants[0].name  # the artifact's own: speed-ups are against it
            fns: dict = {}
            rec = time_component(variants, runs, warmup, progress, f"bench {comp}", fns)
            if fidelity:
                score_fidelity(variants, fns, rec, photos.inputs[comp], photos.refs[comp], component(comp).output_is_image)
            del fns
            if memory:
                probe_onnx_files(rt, comp, x, variants, rec, threads, Path(tmp))
            del variants  # their compiled models go before the next component's are built (sd21: GBs each)
            speed = speedups(rec, art)
            results[comp] = {"input": {name: list(x.shape)}, "variants": rec, "speedup": speed,
                             "ir_vs_fp32_bytes": m["components"][comp]["ir_vs_fp32"]}
            log(result_line(comp, rec, speed))
        if sr_px:
            groups: dict[str, dict] = {}
            for comp in sr_comps:
                for v in variants_of(comp, inputs[comp][1]):
                    groups.setdefault(v.name, {})[comp] = v
            art = next(iter(groups))
            rec = time_full_sr(groups, rt, photos, runs, warmup, progress)
            speed = speedups(rec, art)
            results[f"sr_{sr_px}px"] = {"input": {"lr": list(photos.sr_lr[None].shape)}, "output_px": sr_px,
                                        "variants": rec, "speedup": speed}
            log(result_line(f"SR {sr_px} px", rec, speed))
    machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    extra = {}
    if other is not None:
        extra["vs"] = {"model_dir": str(vs), "target": other.manifest["target"], **other.timing_record()}
    if baselines.skipped:
        extra["baselines_not_timed"] = baselines.skipped
    if fidelity:
        extra["fidelity"] = {"photo": FIDELITY_NOTE, "reference": "the FP32 PyTorch pipeline (the checkpoint's FP weights)"}
    return {"model_dir": str(model_dir), "target": m["target"], "artifact_variant": art,
            "source_checkpoint": m["source_checkpoint"], "quant_config": m["quant_config_name"], **rt.timing_record(),
            "machine": machine, "versions": installed,
            "settings": {"runs": runs, "warmup": warmup, **rt.timing_settings(),
                         "order": "variants alternate within each run"},
            **extra, "components": results}


FIDELITY_NOTE = ("the held-out photo 'coffee': its centre square at each timed shape (the encoder's image, the FP32 "
                 "encoder's latent for the UNet, the FP32 z0 for the decoder), PSNR as --verify computes it")


def open_other(vs, rt: ArtifactRuntime, components: list[str], threads, timing_only_isa: bool, log) -> ArtifactRuntime:
    """The --vs artifact: another target's export of the same checkpoint at the same tile."""
    other = open_for_timing(vs, threads, timing_only_isa, log)
    a, b = rt.manifest, other.manifest
    if a["source_checkpoint"]["sha256"] != b["source_checkpoint"]["sha256"] or tuple(rt.latent_tile) != tuple(other.latent_tile):
        raise ValueError(f"--vs {vs}: exported from a different checkpoint or tile than {rt.dir}; compare exports of one checkpoint")
    if a["target"] == b["target"]:
        raise ValueError(f"--vs {vs}: both artifacts are {a['target']!r} exports, whose variants share a name; "
                         "compare artifacts of two targets")
    missing = [c for c in components if c not in b["components"]]
    if missing:
        raise ValueError(f"--vs {vs}: the artifact has no {missing[0]} component")
    other.source_weights = rt.source_weights
    return other
