"""passion-bench: latency, memory and fidelity of an exported artifact against its float
baselines, per component, all on the same input in one process.

The artifact's runtime supplies its own variants (`timing_variants`, export/runtime.py) and names
the float baselines that apply (`timing_baselines`), which this module builds from the fake-quant
checkpoint the artifact was exported from: fp32_onnx (the IR traced without quantization, lowered
the same way, in ONNX Runtime), torch_fp32 / torch_fp16 (the FP model in PyTorch; on a GPU in
CUDA graphs at the runtime's shapes); the runtime's own baselines, what a user of its toolkit
picks instead (its `own_baselines`, export/runtime.py RuntimeBaselines: OpenVINO FP32 / default
precision and NNCF INT8 for the openvino target), are built by its target. A runtime on a CPU where its kernels only run in an
interpreter says so in the record's settings. Records name variants by key (benchmarks/labels.py).

`vs`: another target's artifact of the same checkpoint, whose own variant joins the alternation.
`fidelity`: every variant's output on a real photo's input, in dB vs the FP32 PyTorch pipeline's
(metrics.output_psnr, as --verify scores). `sr_px`: full SR at that output size (encoder, tiled
UNet, decoder) as one more row, every variant end to end.

Each variant is loaded and warmed up, then all are timed by the one timing loop
(passion_deploy/measure.py: alternating, median of >= 5 runs, every sample kept). Memory: each
ONNX model's peak RSS loaded and run once in a fresh process (passion_deploy/measure.py: in-process
numbers cannot separate models, freed pages are reused); in-process, the RSS increase while a variant
loads and warms up (PyTorch: its parameters + workspace) and the process's peak, or on a GPU the
allocator's warm-up peak over what was resident; weight bytes are the files a variant loads.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from passion_deploy.measure import GpuPeak, PeakRSS, fresh_process_peak
from passion_deploy.measure import time_alternating
from passion_deploy.models.components import component

from .report import result_line, speedups  # the record's own lines, logged as each component is measured

if TYPE_CHECKING:
    from passion_deploy.export.runtime import ArtifactRuntime, TimingVariant

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
TORCH_DTYPES = {"torch_fp32": torch.float32, "torch_fp16": torch.float16}  # the PyTorch baselines


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
    """passion_deploy's, torch's and numpy's versions, and those of every other package
    passion-deploy names (its extras included) that this process has imported by now: what
    produced the numbers, and nothing that did not run. Call it after the timings."""
    import re
    from importlib import metadata

    from passion_deploy import __version__

    try:
        wanted = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in metadata.requires("passion-deploy") or ()}
    except metadata.PackageNotFoundError:  # run from a checkout (the GPU check): the imported modules' own versions
        wanted = None
    v = {"passion_deploy": __version__, "torch": torch.__version__, "numpy": np.__version__}
    owners = metadata.packages_distributions()
    for mod in sorted(m for m in list(sys.modules) if "." not in m and not m.startswith("_")):
        for dist in owners.get(mod, ()):
            if dist.lower() not in v and (wanted is None or dist.lower() in wanted):
                v[dist.lower()] = metadata.version(dist)
    return v


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
    runtime's device, or `device`; on a GPU captured in CUDA graphs at the runtime's tile shapes),
    plus the runtime's own (its `own_baselines`), which its target builds from the FP32 ONNX files."""

    def __init__(self, rt: ArtifactRuntime, names: list[str], components: list[str], threads: int | None, workdir: Path, log,
                 device: torch.device | None = None, shapes: dict | None = None, fidelity: bool = False,
                 sr_px: int | None = None, calib_dir: str | Path | None = None):
        from passion_deploy.export import artifact
        from passion_deploy.export.fp_model import fp_copy

        from .fidelity import PhotoData

        own = rt.own_baselines
        own_names = [n for n in names if own is not None and n in own.needs]
        if own_names:
            own.require(own_names)  # a missing package is refused before the minutes of lowering below
        self.rt, self.names, self.threads, self.dir = rt, list(names), threads, workdir
        self.device = torch.device(device) if device is not None else rt.device
        self.fp = self.graphs = self.photos = self.own = None
        self.onnx_files: dict[str, list[str]] = {}
        self.skipped: dict[str, str] = {}
        if not names and not fidelity and not sr_px:
            return
        m = rt.manifest
        log(f"passion-bench: loading the fake-quant checkpoint for the baselines {', '.join(names)} "
            f"({m['source_checkpoint']['name']})")
        pipe = artifact.load_source_pipeline(m, rt.dir, *rt.source_weights)
        if "fp32_onnx" in names or own_names:  # the runtime's own baselines are compiled from these files
            self.onnx_files = self.lower_float(pipe, components, log)
        fp32 = None
        calibrated = [n for n in own_names if n in own.calibrated]
        if fidelity or sr_px or calibrated:
            # real-photo inputs, FP32 references and NNCF's calibration data, all computed now on the CPU
            # in FP32, before the PyTorch baseline may move that pipeline to a GPU or FP16
            log("passion-bench: FP32 references on real photos (fidelity, calibration)")
            fp32 = fp_copy(pipe, inplace=True).to("cpu", torch.float32)
            self.photos = PhotoData(fp32, rt, shapes or {}, calib_dir, sr_px, log)
            if calibrated:  # every component's calibration inputs, while the FP32 pipeline is at hand
                self.photos.calibration("unet")
        if own_names:
            self.own = own(rt, workdir, threads, self.photos, log)
            self.skipped = {k: v for k, v in self.own.skipped().items() if k in names}
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
        out = [build[n](n, comp, x) if n in build else self.own.variant(n, comp, x) for n in self.names]
        if self.own is not None:
            self.own.release()  # the variants hold what they compile from; the cache need not
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
    cuda = next((v.x.device for v in variants if v.x.is_cuda), None)
    # the one timing loop, with the peak RSS seen while each variant ran (no run count: samples_s has it)
    for name, t in time_alternating(calls, runs, device=cuda, peak_rss=True, progress=progress, desc=desc).items():
        rec[name].update({k: t[k] for k in ("samples_s", "peak_rss_bytes", "median_s", "min_s", "max_s")})
    if loaded is not None:
        loaded.update({name: call.func for name, call in calls.items()})
    return rec


def score_fidelity(variants: list[TimingVariant], fns: dict, rec: dict, x: torch.Tensor, ref: torch.Tensor,
                   image: bool) -> None:
    """Each variant's output on the real-photo input x, in dB vs the FP32 PyTorch pipeline's `ref`."""
    from passion_deploy.metrics import db_value, output_psnr

    from .fidelity import to_tensor

    with torch.no_grad():
        for v in variants:
            out = to_tensor(fns[v.name](x.to(v.x.device, v.x.dtype)))
            rec[v.name]["psnr_vs_fp32_db"] = db_value(output_psnr(out, ref, image))


def time_full_sr(groups: dict[str, dict], rt: ArtifactRuntime, photos, runs: int, warmup: int, progress: bool) -> dict:
    """Full SR of the fidelity photo, every variant end to end (its three components loaded at once,
    the SR pipeline's default tiling), warmed up, timed and scored as a component's variants are;
    `groups`: variant -> {component: TimingVariant}."""
    from passion_deploy.export.runtime import TimingVariant

    from .fidelity import ComposedSR

    def whole(name: str, vs: dict) -> TimingVariant:
        fields: dict = {}

        def load():
            sr = ComposedSR(rt, {c: v.load() for c, v in vs.items()}, vs)
            # what the components learnt while loading (OpenVINO: the precision it compiled to)
            fields.update({k: val for v in vs.values() for k, val in v.fields.items() if "bytes" not in k and k not in fields})
            return lambda _lr: photos.super_resolve(sr)
        return TimingVariant(name, load, photos.sr_lr, fields)
    variants, fns = [whole(name, vs) for name, vs in groups.items()], {}
    # at least one warm-up: OpenVINO compiles each tile shape on its first call
    rec = time_component(variants, runs, max(warmup, 1), progress, "bench full SR", fns)
    score_fidelity(variants, fns, rec, photos.sr_lr, photos.sr_ref, image=True)
    return rec


def probe_onnx_files(rt: ArtifactRuntime, comp: str, x: torch.Tensor, variants: list[TimingVariant], rec: dict,
                     threads: int | None, workdir: Path) -> None:
    """After timing (its sessions closed): each ONNX model's memory, loaded and run alone in a fresh process."""
    feeds = {rt.main_input(comp): x.numpy(), **rt.constant_feeds(comp)}
    for v in variants:
        if v.onnx_file is not None:
            rec[v.name]["subprocess_memory"] = fresh_process_peak(v.onnx_file, feeds, threads, workdir)


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
    # before any warm-up: importing ONNX Runtime is the process's cost, not the first variant's
    machine = machine_info(gpu=rt.device.type == "cuda")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # a GPU machine may run the triton target without it
        pass
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
            "machine": machine, "versions": versions(),
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
