"""The GPU check: one command that measures the integer kernels and the triton runtime on a GPU.

    python -m passion_deploy.benchmarks.gpu_check --out DIR [--dry-run] [--budget-s 480]
    make gpu-check GPU_OUT=DIR          (make gpu-check-dry: the dry run)

Steps, each timed and guarded (a step that raises is recorded with its traceback and the
others still run), written to DIR/gpu_check.json and DIR/gpu_check.md after every step:

1. environment   GPU, compute capability, driver / CUDA / torch / triton versions, free memory;
2. gpu_tests     pytest on the kernel and triton-export tests (CUDA tensors on a GPU), counts;
3. kernels       int8 and int6 GEMM and implicit-GEMM 3x3 conv (kernels/gemm.py) against FP16
                 cuBLAS / cuDNN at the sd21 UNet's shapes: median time, TOPS, ratio;
4. end_to_end    the sd21-architecture UNet at 1x4x64x64 exported with --target triton (CUDA
                 graphs) against PyTorch FP16 with CUDA graphs and torch.compile, a 512 px SR
                 through runner.super_resolve, peak GPU memory, int8 / int6 weight bytes;
5. report        the issue's targets, each said met or not met (or why it was not measured).

The steps run in the order that keeps timings clean inside one budget: the kernel benchmark
first, alone on the GPU; then the tests (a subprocess) and the torch.compile baseline (another)
start while the end-to-end model is built and exported on the CPU; the end-to-end timings wait
for the tests to finish. The JSON records when each step started.

--dry-run: the same code on the CPU with the tiny model, small shapes, the kernels in
Triton's interpreter, FP32 instead of FP16, no CUDA graphs and torch.compile's eager backend;
it exercises every step in a few minutes and its timings mean nothing (the report says so).

On the device machine (an image with torch, triton, onnx and onnxruntime but no diffusers,
and no network), the wheels listed in benchmarks/gpu_wheels.txt travel in .whl/
(`make gpu-wheels` downloads them here) and are installed first:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import gpu_e2e, gpu_env, gpu_kernels, gpu_report, gpu_tests
from .gpu_timing import Budget, free_gpu

JSON_NAME, MD_NAME = "gpu_check.json", "gpu_check.md"
STEP_ORDER = ("environment", "gpu_tests", "kernels", "end_to_end")
WATCHDOG_GRACE_S = 40  # past the budget, the watchdog writes what it has and ends the process


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the dry run."""

    preset: str
    config: str
    tile: int  # the UNet's latent tile (and the calibration's)
    w6_tile: int  # the W6A6 weight-bytes export's tile (packed bytes do not depend on it)
    lr_px: int  # the SR input's side (4x that out)
    kernel_shapes: tuple
    kernel_runs: int
    unet_runs: int
    eager_runs: int
    sr_runs: int
    warmup: int  # UNet calls before timing (the first captures a CUDA graph on a GPU)
    compile_backend: str
    compile_mode: str
    compile_cap_s: float  # torch.compile's process, from its start (it starts with the end-to-end step)
    tests_cap_s: float
    kernel_cap_s: float
    test_selection: str | None  # pytest -k; None: every test of the files
    reserve_after_kernels_s: float = 0.0  # what the kernel benchmark leaves for the steps after it
    reserve_end_s: float = 15.0  # what the subprocesses' caps leave for writing the report
    export_min_left_s: float = 0.0  # the export (and what needs it) starts only with this much left
    sr_min_left_s: float = 0.0  # the SR images and the eager triton UNet likewise
    w6_min_left_s: float = 0.0  # the W6A6 weight bytes likewise


GPU_SIZES = Sizes(preset="sd21", config="w8a8", tile=64, w6_tile=16, lr_px=128,
                  kernel_shapes=gpu_kernels.SD21_SHAPES, kernel_runs=20, unet_runs=20, eager_runs=5, sr_runs=3, warmup=2,
                  compile_backend="inductor", compile_mode="reduce-overhead", compile_cap_s=300,
                  tests_cap_s=200, kernel_cap_s=90, test_selection=None,
                  reserve_after_kernels_s=240, export_min_left_s=120, sr_min_left_s=30, w6_min_left_s=100)
DRY_SIZES = Sizes(preset="tiny", config="w8a8", tile=8, w6_tile=8, lr_px=8,
                  kernel_shapes=gpu_kernels.DRY_SHAPES, kernel_runs=2, unet_runs=2, eager_runs=1, sr_runs=1, warmup=1,
                  compile_backend="eager", compile_mode="default", compile_cap_s=240,
                  tests_cap_s=240, kernel_cap_s=120, test_selection=gpu_tests.DRY_RUN_SELECTION)


@dataclass
class Context:
    """What every step sees: where it runs, its sizes, the budget, and the shared record."""

    dry: bool
    out: Path
    work_root: str | None
    keep_work: bool
    device: torch.device
    fdt: torch.dtype
    interpreter: bool
    sizes: Sizes
    budget: Budget
    report: dict
    children: list = field(default_factory=list)  # subprocesses to kill if the watchdog fires
    current: str = ""
    step_rec: dict | None = None  # the running step's record, live in the report
    before_timing: object = None  # called by the end-to-end step before its first timing

    def log(self, msg: str) -> None:
        print(f"[{self.budget.elapsed():6.1f} s] {msg}", flush=True)

    def checkpoint(self) -> None:
        """Write the report as it stands (after each step and end-to-end part); a failure to
        write is said and the run goes on (the final write tries again)."""
        try:
            write_outputs(self)
        except Exception as e:  # noqa: BLE001
            self.log(f"gpu-check: could not write the report yet: {type(e).__name__}: {e}")

    def problem(self, where: str, exc: BaseException) -> None:
        """A part that raised: kept in one list so nothing that failed hides inside a step."""
        self.report["problems"].append({"where": where, "error": f"{type(exc).__name__}: {exc}"})


def choose_device(dry: bool) -> tuple[torch.device, bool]:
    """(device, interpreter). A dry run stays on the CPU in Triton's interpreter even where a
    GPU exists; a GPU run needs one, with compiled kernels, and says so in one sentence."""
    from passion_deploy.devices import cuda_available

    if dry:
        os.environ["TRITON_INTERPRET"] = "1"
    elif not cuda_available():
        raise SystemExit("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
                         "run it with --dry-run for the CPU check of its code")
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("gpu-check: TRITON_INTERPRET is set, which would run the kernels in Triton's CPU "
                         "interpreter; unset it for the GPU check")
    from passion_deploy.kernels import use_interpreter_without_gpu

    interpreter = use_interpreter_without_gpu()
    if dry:
        return torch.device("cpu"), interpreter
    return torch.device("cuda", torch.cuda.current_device()), False


def run_step(ctx: Context, name: str, fn) -> dict:
    """One step into report["steps"][name], live from its start (status "running", so a part
    the end-to-end step finished is on disk even if the run is killed later): then ok / skipped
    / failed, its seconds and start. The tests step is recorded from inside the end-to-end one,
    so the enclosing step's place is restored after."""
    outer = ctx.current, ctx.step_rec
    rec = {"status": "running", "started_at_s": round(ctx.budget.elapsed(), 1)}
    ctx.report["steps"][name] = rec
    ctx.current, ctx.step_rec = name, rec
    ctx.log(f"gpu-check: step {name}")
    t0 = time.perf_counter()
    try:
        out = fn(ctx)
        out = {} if out is None or out is rec else dict(out)
        rec.update(status=out.pop("status", "ok"), **out)
    except Exception as e:  # noqa: BLE001 - recorded; the next step still runs
        rec.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        ctx.problem(name, e)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    ctx.current, ctx.step_rec = outer
    free_gpu(ctx.device)
    ctx.checkpoint()
    return rec


def write_outputs(ctx: Context, final: bool = False) -> None:
    """The JSON and the Markdown report as they stand (after every step: a run killed from outside
    still leaves its finished steps on disk)."""
    for attempt in range(3):  # the watchdog's thread may copy while the main thread writes
        try:
            rep = copy.deepcopy(ctx.report)
            break
        except RuntimeError:
            if attempt == 2:
                raise
            time.sleep(0.05)
    rep["steps"] = {k: rep["steps"][k] for k in STEP_ORDER if k in rep["steps"]}
    rep["targets"] = gpu_report.targets(rep)
    rep["finished"] = final
    rep["wall_s"] = round(ctx.budget.elapsed(), 1)
    ctx.out.mkdir(parents=True, exist_ok=True)
    for name, text in ((JSON_NAME, json.dumps(rep, indent=1, default=str) + "\n"), (MD_NAME, gpu_report.markdown(rep))):
        tmp = ctx.out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(ctx.out / name)


def start_watchdog(ctx: Context) -> threading.Timer:
    """Past the budget plus a grace, write what there is, kill the subprocesses and exit: an
    external kill at the device's time limit would leave no report at all."""
    def fire():
        ctx.report["watchdog"] = (f"the check ran past its {ctx.budget.seconds:.0f} s budget + {WATCHDOG_GRACE_S} s "
                                  f"in step {ctx.current!r} and was stopped there")
        ctx.report["steps"].setdefault(ctx.current, {})["status"] = "timed out"
        for p in ctx.children:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        try:
            write_outputs(ctx, final=True)
        finally:
            print(f"gpu-check: {ctx.report['watchdog']}", file=sys.stderr, flush=True)
            os._exit(3)
    t = threading.Timer(ctx.budget.seconds + WATCHDOG_GRACE_S, fire)
    t.daemon = True
    t.start()
    return t


def run_all(ctx: Context) -> None:
    """The steps in the order of the module docstring (tests overlapping the CPU-bound export)."""
    run_step(ctx, "environment", gpu_env.environment)
    run_step(ctx, "kernels", gpu_kernels.kernel_benchmark)
    tests = gpu_tests.Background(ctx)
    ctx.before_timing = lambda: tests.finish_into(ctx, run_step)
    try:
        run_step(ctx, "end_to_end", gpu_e2e.end_to_end)
    finally:
        tests.finish_into(ctx, run_step)  # when the end-to-end step failed before its timings


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m passion_deploy.benchmarks.gpu_check",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md and gpu_tests.log")
    p.add_argument("--dry-run", action="store_true", help="the CPU check of the code: tiny model, interpreter")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check (seconds)")
    p.add_argument("--work", default=None, help="scratch folder for the checkpoint and artifact (default: the system's)")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch checkpoint and artifact")
    return p.parse_args(argv)


def make_context(args, argv: list[str]) -> Context:
    """The device (a GPU run refuses a machine without one), the sizes, and the empty record."""
    device, interpreter = choose_device(args.dry_run)
    if args.dry_run:
        # Triton's interpreter surrounds every launch with small torch copies; a second OpenMP
        # thread spin-waits on them and slows it (tests/targets/test_export_triton.py measured 95 s vs 56 s)
        torch.set_num_threads(1)
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    fdt = torch.float16 if device.type == "cuda" else torch.float32  # FP16 kernels and baselines on a GPU
    report = {"kind": "gpu-check dry run" if args.dry_run else "gpu-check", "dry_run": args.dry_run,
              "timings_meaningful": not args.dry_run,
              "command": "python -m passion_deploy.benchmarks.gpu_check " + " ".join(argv),
              "budget_s": args.budget_s, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "sizes": {k: (v if not isinstance(v, tuple) else [getattr(s, "label", s) for s in v])
                        for k, v in sizes.__dict__.items()},
              "steps": {}, "problems": []}
    return Context(args.dry_run, Path(args.out), args.work or tempfile.gettempdir(), args.keep_work, device, fdt,
                   interpreter, sizes, Budget(args.budget_s), report)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ctx = make_context(parse_args(argv), argv)
    watchdog = start_watchdog(ctx)
    ctx.log(f"gpu-check: {'dry run on the CPU (timings meaningless)' if ctx.dry else ctx.device}, "
            f"budget {ctx.budget.seconds:.0f} s, report in {ctx.out}")
    try:
        run_all(ctx)
    finally:
        watchdog.cancel()
        for p in ctx.children:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        write_outputs(ctx, final=True)
    print(gpu_report.summary_text(json.loads((ctx.out / JSON_NAME).read_text())), flush=True)
    return 1 if ctx.report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
