"""Step 4 of the GPU check: the UNet end to end, a whole SR image, memory and weight bytes.

The model is the fastest real one to build without downloads: the preset's architecture with
random weights (seed 0), W8A8 statistics-calibrated on one bundled photo at the latent tile
(on the GPU, where it takes seconds), saved with its FP weights and exported with the triton
target exactly as `passion-export --target triton` does. Then, each a guarded part:

- fp16:     the float model (the same FP weights) in PyTorch FP16, eager and in CUDA graphs
            (export/cuda_graphs.py's GraphCache, as passion-bench's torch_fp16 baseline);
- triton:   the artifact's runtime (TritonSR: integer layers on the kernels, float ops in
            FP16, each component in a CUDA graph), its UNet eps and its SR image held against
            the fake-quant model's (FP32, on the GPU, TF32 off);
- compile:  torch.compile of the FP16 UNet, in a subprocess started first (it compiles on the
            CPU while the export runs) and timed alone after the others, within a time cap;
- weights:  the bytes the integer layers hold on the GPU against those layers in FP16, and a
            W6A6 export's (traced at a smaller tile: packed bytes do not depend on it);
- sr:       runner.super_resolve on a bundled photo's LR (128 px -> 512 px for sd21), fake-quant,
            FP16 and triton, with the peak GPU memory of each.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

from .gpu_timing import free_gpu, gpu_memory, is_cuda, tensor_bytes, time_calls, time_host

CALIBRATION_PHOTO = "astronaut"  # what benchmarks/results' sd21 CPU records were calibrated on
SR_PHOTO = "coffee"  # a different photo for the SR image
FP16_VERIFY_BAR_DB = 40.0  # the bar with fp16 float ops (45 dB with fp32 float ops)
FP32_VERIFY_BAR_DB = 45.0
SENSITIVITY_MARGIN_DB = 1.0  # export/verify.py's
TIMING_ALLOWANCE_S = 60.0  # torch.compile's timed runs, after its go signal


# -- parts: each guarded, each may need earlier ones ----------------------------------------

def run_part(rec: dict, name: str, fn, ctx, state, needs: tuple[str, ...] = (), min_left_s: float | None = None) -> None:
    """Run one part into rec["parts"][name]: its fields and status, a raise recorded (never
    propagated), skipped when a part it needs did not complete or, for a part given
    `min_left_s`, when less of the budget is left (the others always run: they are the point
    of the step or cost nothing, and the watchdog bounds the whole run)."""
    parts = rec.setdefault("parts", {})
    missing = [n for n in needs if parts.get(n, {}).get("status") != "ok"]
    if missing:
        parts[name] = {"status": "skipped", "why": f"needs {', '.join(missing)}"}
        return
    if min_left_s is not None and ctx.budget.left() < min_left_s:
        parts[name] = {"status": "skipped", "why": f"budget: {ctx.budget.left():.0f} s left, needs ~{min_left_s:.0f} s"}
        return
    ctx.log(f"gpu-check: end to end / {name}")
    started = round(ctx.budget.elapsed(), 1)  # when, in the check: which subprocess could have shared the GPU
    t0 = time.perf_counter()
    try:
        out = fn(ctx, state) or {}
        parts[name] = {"status": out.pop("status", "ok"), "started_at_s": started, **out}
    except Exception as e:  # noqa: BLE001 - recorded; the later parts that do not need this one still run
        parts[name] = {"status": "failed", "started_at_s": started, "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()}
        ctx.problem(f"end_to_end/{name}", e)
    parts[name]["seconds"] = round(time.perf_counter() - t0, 2)
    free_gpu(ctx.device)
    ctx.checkpoint()


@torch.no_grad()
def calibrated(ctx, config: str, tile: int) -> tuple[object, dict]:
    """A statistics-calibrated fake-quant pipeline of the preset (on the CPU when it returns),
    calibrated on the device where that works, else on the CPU (the record says which)."""
    from passion_deploy.calibrate.data import bundled_photos, photo_batches
    from passion_deploy.calibrate.stats import statistics_pass
    from passion_deploy.config import NAMED_CONFIGS
    from passion_deploy.models import build_pipeline
    from passion_deploy.quant import quantize_pipeline

    photos = [p for p in bundled_photos() if p.stem == CALIBRATION_PHOTO] or bundled_photos()[:1]
    info = {"config": config, "latent_tile": tile, "photos": [p.stem for p in photos]}
    for where in dict.fromkeys([ctx.device, torch.device("cpu")]):
        t0 = time.perf_counter()
        pipe = quantize_pipeline(build_pipeline(ctx.sizes.preset, random_weights=0), NAMED_CONFIGS[config])
        info["build_s"] = time.perf_counter() - t0
        batches = photo_batches(photos, tile * pipe.vae_factor)
        try:
            t0 = time.perf_counter()
            statistics_pass(pipe.to(where), [b.to(where) for b in batches], progress=False)
            info.update(calibrated_on=str(where), calibrate_s=time.perf_counter() - t0)
            return pipe.to("cpu"), info
        except Exception as e:  # noqa: BLE001 - a quantizer that cannot run on CUDA: calibrate on the CPU
            if where.type == "cpu":
                raise
            info["calibration_on_device_error"] = f"{type(e).__name__}: {e}"
            del pipe
            free_gpu(ctx.device)
    raise AssertionError("unreachable")


def part_build(ctx, s) -> dict:
    s.pipe, info = calibrated(ctx, ctx.sizes.config, ctx.sizes.tile)
    s.vae_factor = s.pipe.vae_factor
    return info


def sr_input(ctx) -> torch.Tensor:
    """The LR image: a bundled photo's centre square, bicubic-downscaled x4 as the pipeline expects."""
    from passion_deploy.calibrate.data import bundled_photos, center_square
    from passion_deploy.images import downscale_bicubic, read_image

    photo = next((p for p in bundled_photos() if p.stem == SR_PHOTO), bundled_photos()[0])
    return downscale_bicubic(center_square(read_image(photo), 4 * ctx.sizes.lr_px), 4).clamp(0, 1)


@torch.no_grad()
def part_reference(ctx, s) -> dict:
    """The fake-quant model's UNet eps and SR image in FP32 on the device: what the triton
    runtime is held against (TF32 off, so the reference is FP32 arithmetic)."""
    from passion_deploy import runner

    dev, tile = ctx.device, ctx.sizes.tile
    s.latent = torch.randn(1, 4, tile, tile, generator=torch.Generator().manual_seed(1))
    s.lr = sr_input(ctx)
    keep = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        pipe = s.pipe.to(dev)
        s.eps_ref = pipe.unet_eps(s.latent.to(dev)).float().cpu()
        model = pipe_model(pipe, "fakequant", (tile, tile), "fake-quant reference (FP32)")
        t0 = time.perf_counter()
        s.sr_ref = runner.super_resolve(model, s.lr)
        sr_s = time.perf_counter() - t0
        # the reference against itself with its input changed by 1e-5 (export/verify.py's
        # sensitivity): an SR image cannot be asked to agree with it better than that
        noise = torch.randn(s.lr.shape, generator=torch.Generator().manual_seed(2))
        s.sr_sensitivity_db = psnr_db(runner.super_resolve(model, s.lr * (1 + 1e-5 * noise)), s.sr_ref, image=True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = keep
        s.pipe.to("cpu")
    return {"latent": list(s.latent.shape), "lr": list(s.lr.shape), "sr": list(s.sr_ref.shape),
            "fakequant_sr_once_s": sr_s, "device": str(dev), "sr_sensitivity_db": s.sr_sensitivity_db,
            "sensitivity_note": "fake-quant SR vs itself with its LR input multiplied by (1 + 1e-5 * noise)"}


def part_export(ctx, s) -> dict:
    from passion_deploy.checkpoint import save_checkpoint
    from passion_deploy.export.exporter import export_artifact

    ckpt = s.work / "checkpoint.safetensors"
    t0 = time.perf_counter()
    save_checkpoint(s.pipe, ckpt, include_fp_weights=True)
    save_s = time.perf_counter() - t0
    s.art = s.work / "triton"
    t0 = time.perf_counter()
    m = export_artifact(str(ckpt), s.art, target="triton", pipe=s.pipe, progress=False)
    comps = {c: {k: r.get(k) for k in ("ir_file_bytes", "fp32_weight_bytes", "ir_vs_fp32", "packed_weight_bytes",
                                      "quantized_layers_fp32_bytes", "quantized_layers", "quantized_attention")}
             for c, r in m["components"].items()}
    return {"checkpoint_save_s": save_s, "export_s": time.perf_counter() - t0, "manifest_export_seconds":
            m["export_seconds"], "quant_config": m["quant_config_name"], "components": comps}


# -- runtimes --------------------------------------------------------------------------------

def pipe_model(pipe, backend: str, tile, description: str, graphs=None):
    """An SRModel of a PyTorch pipeline, its components replayed from CUDA graphs when given
    (as the triton runtime's are), so the SR comparison is graph against graph."""
    from passion_deploy import runner
    from passion_deploy.export.runtime import PipelineSR

    class GraphedPipelineSR(PipelineSR):
        def component_fn(self, name):
            fn = super().component_fn(name)
            return fn if graphs is None else (lambda x: graphs.run(name, fn, x))

    rt = GraphedPipelineSR(pipe, backend, tuple(tile), description)
    return runner.SRModel(rt, backend, tuple(tile), description)


def graph_cache(ctx, shapes: dict):
    if not is_cuda(ctx.device):
        return None
    from passion_deploy.export.cuda_graphs import GraphCache

    return GraphCache(shapes)


def time_unet(ctx, fn, x, runs: int) -> tuple[dict, torch.Tensor]:
    """Warm-up (Triton compiles, a CUDA graph is captured) with its memory, then the timing;
    also returns the warm-up's output (a copy: a graph replay reuses its output buffer)."""
    with gpu_memory(ctx.device) as warm:
        out = fn(x).clone()
        for _ in range(ctx.sizes.warmup - 1):
            fn(x)
    rec = time_calls(lambda: fn(x), ctx.device, runs, warmup=0)
    rec["warmup_memory"] = warm.as_dict()
    if is_cuda(ctx.device):  # one more run for its own peak (nothing to read on a CPU)
        with gpu_memory(ctx.device) as run:
            fn(x)
        rec["run_memory"] = run.as_dict()
    return rec, out


def time_sr(ctx, model, lr) -> tuple[dict, torch.Tensor]:
    """super_resolve end to end (host image in, host image out); on a GPU a warm-up first
    (compiles, captures the components' graphs) and a run for the peak memory."""
    from passion_deploy import runner

    gpu = is_cuda(ctx.device)
    out = runner.super_resolve(model, lr) if gpu else None
    rec = time_host(lambda: runner.super_resolve(model, lr), ctx.device, ctx.sizes.sr_runs, warmup=0)
    if gpu:
        with gpu_memory(ctx.device) as mem:
            runner.super_resolve(model, lr)
        rec["memory"] = mem.as_dict()
    else:
        out = runner.super_resolve(model, lr)  # the dry run's one timed call did not keep its output
    return rec, out


def layer_fp_bytes(unet) -> dict[str, int]:
    """Bytes of each conv/linear layer's weight and bias, by module name (in its dtype)."""
    out = {}
    for name, m in unet.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            out[name] = sum(t.numel() * t.element_size() for t in (m.weight, m.bias) if t is not None)
    return out


@torch.no_grad()
def part_fp16(ctx, s) -> dict:
    from passion_deploy.export.fp_model import fp_copy
    from passion_deploy.models.components import component, tile_shapes

    dev, fdt, tile = ctx.device, ctx.fdt, ctx.sizes.tile
    fp = fp_copy(s.pipe, inplace=True)  # the fake-quant model is not needed after the export
    s.pipe = None
    with gpu_memory(dev) as load:
        fp = fp.to(dev, fdt)
    rec = {"dtype": str(fdt).replace("torch.", ""), "load_memory": load.as_dict(),
           "unet_bytes": tensor_bytes(fp.unet, device=dev)}
    s.fp16_layer_bytes = layer_fp_bytes(fp.unet)
    s.fp16_unet_bytes = rec["unet_bytes"]
    fn = component("unet").fn(fp)
    x = s.latent.to(dev, fdt)
    rec["unet_eager"], eps = time_unet(ctx, fn, x, ctx.sizes.eager_runs)
    rec["unet_eps_psnr_vs_fakequant_db"] = psnr_db(eps, s.eps_ref, image=False)  # what FP16 alone costs
    graphs = graph_cache(ctx, tile_shapes((tile, tile), fp.vae_factor))
    if graphs is not None:
        rec["unet_cuda_graph"], _ = time_unet(ctx, lambda z: graphs.run("unet", fn, z), x, ctx.sizes.unet_runs)
    if ctx.budget.left() > ctx.sizes.sr_min_left_s:
        model = pipe_model(fp, "fp16", (tile, tile), f"PyTorch {rec['dtype']}", graphs)
        rec["sr"], sr = time_sr(ctx, model, s.lr)
        rec["sr"]["psnr_vs_fakequant_db"] = psnr_db(sr, s.sr_ref, image=True)
    return rec  # the model and its graphs go with this frame; run_part then empties the allocator's cache


def psnr_db(out, ref, image: bool) -> float | str:
    from passion_deploy.export.verify import psnr

    v = psnr(out.float().cpu(), ref.float().cpu(), image)
    return "inf" if v == float("inf") else round(v, 2)


def kernel_layer_bytes(unet, device) -> dict:
    """What the integer layers of a triton UNet hold: packed weights and their per-column
    vectors (zero points, column sums, scales, bias), and apart from them the conv border tables
    (per channel and border class, the same for every input size), by module name."""
    from passion_deploy.export.targets.triton.modules import KernelModule

    per_layer, maps = {}, 0
    for name, m in unet.named_modules():
        if isinstance(m, KernelModule):
            k = m.kernel
            ep = getattr(k, "conv_epilogue", None)
            per_layer[name] = tensor_bytes(k.weights, k.launches, getattr(k, "_pre", None), device=device)
            maps += tensor_bytes([ep.border] if ep is not None and ep.border is not None else [], device=device)
    return {"per_layer": per_layer, "border_map_bytes": maps}


@torch.no_grad()
def part_triton(ctx, s) -> dict:
    from passion_deploy import runner
    from passion_deploy.export.targets.triton.runtime import TritonSR
    from passion_deploy.models.components import component

    dev = ctx.device
    t0 = time.perf_counter()
    with gpu_memory(dev) as load:
        rt = TritonSR(s.art)
    rec = {"runtime": rt.description, "load_s": time.perf_counter() - t0, "load_memory": load.as_dict(),
           "settings": rt.timing_settings()}
    x = s.latent.to(rt.device, rt.compute_dtype)
    fn = rt.component_fn("unet")  # a CUDA graph replay on a GPU

    def in_context(f):
        def call(z):
            with rt.kernel_context():
                return f(z)
        return call
    key = "unet_cuda_graph" if rt.graphs is not None else "unet_eager"
    rec[key], eps = time_unet(ctx, in_context(fn), x, ctx.sizes.unet_runs if rt.graphs is not None else ctx.sizes.eager_runs)
    if rt.graphs is not None and ctx.budget.left() > ctx.sizes.sr_min_left_s:
        rec["unet_eager"], _ = time_unet(ctx, in_context(component("unet").fn(rt.pipe)), x, ctx.sizes.eager_runs)
    rec["unet_eps_psnr_vs_fakequant_db"] = psnr_db(eps, s.eps_ref, image=False)
    weights = kernel_layer_bytes(rt.pipe.unet, rt.device)
    s.int8_layer_bytes = weights["per_layer"]
    rec["unet_bytes"] = tensor_bytes(rt.pipe.unet, device=rt.device)
    rec["unet_border_map_bytes"] = weights["border_map_bytes"]
    if ctx.budget.left() > ctx.sizes.sr_min_left_s:
        model = runner.SRModel(rt, "triton", rt.latent_tile, rt.description)
        rec["sr"], sr = time_sr(ctx, model, s.lr)  # TritonSR.run enters its kernel context itself
        rec["sr"]["psnr_vs_fakequant_db"] = psnr_db(sr, s.sr_ref, image=True)
    bar = FP16_VERIFY_BAR_DB if rt.compute_dtype == torch.float16 else FP32_VERIFY_BAR_DB
    rec["verify_bar_db"] = bar
    # verify's end-to-end rule: where the reference moves further than the bar under a 1e-5 input
    # change, the bar is its own PSNR minus 1 dB (export/verify.py: judge)
    sens = s.sr_sensitivity_db
    rec["sr_bar_db"] = bar if sens == "inf" or sens >= bar else round(sens - SENSITIVITY_MARGIN_DB, 2)
    return rec


# -- torch.compile in a subprocess -----------------------------------------------------------

class CompileJob:
    """The torch.compile baseline's process (benchmarks/gpu_compile.py), started early."""

    def __init__(self, ctx, work: Path):
        self.json, self.go, self.log = work / "compile.json", work / "compile.go", work / "compile.log"
        sz = ctx.sizes
        cmd = [sys.executable, "-m", "passion_deploy.benchmarks.gpu_compile", "--json", str(self.json),
               "--preset", sz.preset, "--tile", str(sz.tile), "--device", str(ctx.device),
               "--dtype", str(ctx.fdt).replace("torch.", ""), "--backend", sz.compile_backend,
               "--mode", sz.compile_mode, "--runs", str(sz.unet_runs), "--go", str(self.go),
               "--wait-s", str(ctx.budget.seconds)]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # the checkout, for a run without installing
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), root) if p)
        self.started = time.perf_counter()
        self.started_at_s = round(ctx.budget.elapsed(), 1)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        ctx.children.append(self.proc)
        self.command = " ".join(cmd[1:])

    def state(self) -> dict:
        import json

        try:
            return json.loads(self.json.read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, until: float) -> int | None:
        """Wait for the process to end or to write `state: compiled`, until perf_counter `until`;
        its exit code, or None while it still runs."""
        while time.perf_counter() < until:
            rc = self.proc.poll()
            if rc is not None or self.state().get("state") == "compiled":
                return rc
            time.sleep(0.2)
        return self.proc.poll()

    def finish(self, ctx) -> dict:
        """Within the compile cap (from its start) it must have compiled; then it times alone
        (the parent's timings are done) within TIMING_ALLOWANCE_S; past either it is killed."""
        cap = ctx.sizes.compile_cap_s
        budget_end = time.perf_counter() + ctx.budget.cap(cap, reserve=ctx.sizes.reserve_end_s)
        rc = self.wait(min(self.started + cap, budget_end))
        compiled = self.state().get("state") == "compiled"
        if compiled:
            self.go.touch()
            try:
                rc = self.proc.wait(timeout=max(1.0, min(TIMING_ALLOWANCE_S, budget_end - time.perf_counter())))
            except subprocess.TimeoutExpired:
                rc = None
        if rc is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        rec = {"command": self.command, "exit_code": rc, "cap_s": cap, "process_started_at_s": self.started_at_s,
               "wall_s": round(time.perf_counter() - self.started, 1), **self.state()}
        if rc is None:  # a result (it did not compile, or time, within its cap), not a failure of the check
            rec["status"] = "timed out"
            rec["why"] = (f"killed after {rec['wall_s']} s (compile cap {cap} s from its start, then "
                          f"{TIMING_ALLOWANCE_S} s to time; or the check's budget); its last state: {rec.get('state')}")
        elif rc != 0 or "error" in rec:
            rec["status"] = "failed"
            rec["log_tail"] = self.log.read_text(errors="replace").splitlines()[-20:]
        return rec


def part_compile(ctx, s) -> dict:
    rec = s.compile_job.finish(ctx)
    if rec.get("status") == "failed":
        raise RuntimeError(f"torch.compile baseline failed: {rec.get('error') or rec.get('log_tail', [''])[-1]}")
    return rec


# -- weight bytes ----------------------------------------------------------------------------

def ratio_record(int_bytes: dict[str, int], fp_bytes: dict[str, int]) -> dict:
    names = [n for n in int_bytes if n in fp_bytes]
    q, f = sum(int_bytes[n] for n in names), sum(fp_bytes[n] for n in names)
    return {"layers": len(names), "layers_unmatched": len(int_bytes) - len(names), "int_bytes": q,
            "fp16_bytes": f, "ratio": q / f if f else None}


def part_weights(ctx, s) -> dict:
    """W8A8 from the triton runtime on the device; the FP16 side from the fp16 part's model."""
    return {"what": "integer layers: packed weights + per-column zero points, column sums, scales and bias, "
                    "against the same layers' FP16 weight and bias; border maps and the float layers apart",
            "int8": ratio_record(s.int8_layer_bytes, s.fp16_layer_bytes),
            "unet_total": {"triton_int8_bytes": s.triton_unet_bytes, "fp16_bytes": s.fp16_unet_bytes,
                           "ratio": s.triton_unet_bytes / s.fp16_unet_bytes}}


@torch.no_grad()
def part_w6a6(ctx, s) -> dict:
    """The W6A6 UNet's integer layers as the triton runtime builds them (KernelLayer from each
    traced recipe), counted on the CPU: the same tensors it moves to the GPU."""
    from passion_deploy.export.ir.recipes import QLayerRecipe
    from passion_deploy.export.ir.trace import trace_component
    from passion_deploy.export.targets.triton.layers import KernelLayer

    tile = ctx.sizes.w6_tile
    pipe, info = calibrated(ctx, "w6a6", tile)
    t0 = time.perf_counter()
    graph, _ = trace_component(pipe, "unet", torch.randn(1, 4, tile, tile), quantized=True, fold=True)
    info["trace_s"] = time.perf_counter() - t0
    per_layer = {}
    for name, rec in graph.recipes.items():
        if isinstance(rec, QLayerRecipe) and rec.acts is not None:
            k = KernelLayer(rec)
            per_layer[name] = tensor_bytes(k.weights, k.launches, getattr(k, "_pre", None))
    info["int6"] = ratio_record(per_layer, s.fp16_layer_bytes)
    return info


# -- the step ----------------------------------------------------------------------------------

def end_to_end(ctx) -> dict:
    """Fills the step's live record (ctx.step_rec) part by part, so a run killed from outside
    still leaves the parts that finished; returns it."""
    sz = ctx.sizes
    rec = ctx.step_rec if ctx.step_rec is not None else {}
    rec.update({"preset": sz.preset, "config": sz.config, "latent_tile": sz.tile, "sr_lr_px": sz.lr_px,
                "sr_out_px": 4 * sz.lr_px, "float_dtype": str(ctx.fdt).replace("torch.", ""),
                "note": __doc__.split("\n\n")[1].replace("\n", " "),
                "cudnn_benchmark": torch.backends.cudnn.benchmark})  # set by the kernel step: both sides get it
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=ctx.work_root))
    s = SimpleNamespace(work=work, pipe=None)
    try:
        run_part(rec, "compile_start", start_compile, ctx, s)
        run_part(rec, "build", part_build, ctx, s)
        run_part(rec, "reference", part_reference, ctx, s, needs=("build",))
        run_part(rec, "export", part_export, ctx, s, needs=("build",), min_left_s=sz.export_min_left_s)
        if ctx.before_timing is not None:
            ctx.before_timing()  # the tests share the GPU: they finish before anything here is timed
        run_part(rec, "fp16", part_fp16, ctx, s, needs=("reference",))
        s.pipe = None  # the fake-quant model is done with (the w6a6 part builds its own)
        run_part(rec, "triton", part_triton, ctx, s, needs=("export", "reference"))
        s.triton_unet_bytes = rec["parts"].get("triton", {}).get("unet_bytes")
        run_part(rec, "torch_compile", part_compile, ctx, s, needs=("compile_start",))
        run_part(rec, "weights", part_weights, ctx, s, needs=("fp16", "triton"))
        run_part(rec, "w6a6_weights", part_w6a6, ctx, s, needs=("fp16",), min_left_s=sz.w6_min_left_s)
    finally:
        job = getattr(s, "compile_job", None)
        if job is not None and job.proc.poll() is None:
            os.killpg(job.proc.pid, signal.SIGKILL)
        if not ctx.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            rec["work_dir"] = str(work)
    return rec


def start_compile(ctx, s) -> dict:
    s.compile_job = CompileJob(ctx, s.work)
    return {"command": s.compile_job.command}
