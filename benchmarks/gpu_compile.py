"""The torch.compile FP16 UNet baseline of the GPU check, in a process of its own.

    python -m passion_deploy.benchmarks.gpu_compile --json OUT [--preset sd21 --tile 64 ...]

Its own process for two reasons: a compile that runs over its time cap can only be stopped
by killing it (nothing interrupts Inductor in-process), and the compile is mostly CPU work
that can overlap the parent's export. So it builds the float model (the preset's random
weights, seed 0: the same FP weights the quantized model was calibrated from), compiles and
warms up the UNet, writes `state: compiled`, and then waits for the parent's go file before
timing, so its timed runs never share the GPU with the parent's.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def write(path: Path, rec: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(path)  # the parent never reads a half-written file


def wait_for(go: Path | None, seconds: float) -> bool:
    if go is None:
        return True
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if go.exists():
            return True
        time.sleep(0.1)
    return False


@torch.no_grad()
def run(args, rec: dict) -> None:
    """Fills `rec` as it goes (the parent reads the last state written if this is killed)."""
    from passion_deploy.benchmarks.gpu_timing import gpu_memory, sync, time_calls
    from passion_deploy.models import build_pipeline

    out = Path(args.json)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if dev.type == "cpu":  # the dry run: its CPU cores are shared with the parent and pytest
        torch.set_num_threads(1)
    write(out, rec)
    t0 = time.perf_counter()
    pipe = build_pipeline(args.preset, random_weights=0).to(dev, dtype).eval()
    rec["build_s"] = time.perf_counter() - t0
    kw = {"mode": args.mode} if args.backend == "inductor" and args.mode != "default" else {}
    pipe.unet = torch.compile(pipe.unet, backend=args.backend, **kw)
    x = torch.randn(1, 4, args.tile, args.tile, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
    rec["state"] = "compiling"
    write(out, rec)
    t0 = time.perf_counter()
    pipe.unet_eps(x)
    sync(dev)
    rec["first_call_s"] = time.perf_counter() - t0  # the compile, and its first run
    for _ in range(2):  # reduce-overhead records its CUDA graph on the runs after the first
        pipe.unet_eps(x)
    sync(dev)
    rec["compile_and_warmup_s"] = time.perf_counter() - t0
    rec["state"] = "compiled"
    write(out, rec)
    if not wait_for(Path(args.go) if args.go else None, args.wait_s):
        rec["state"] = "compiled, not timed: no go signal from the parent"
        return
    rec["timing"] = time_calls(lambda: pipe.unet_eps(x), dev, args.runs, warmup=1)
    with gpu_memory(dev) as mem:
        pipe.unet_eps(x)
    rec["memory"] = mem.as_dict()
    rec["state"] = "done"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m passion_deploy.benchmarks.gpu_compile", description=__doc__)
    p.add_argument("--json", required=True)
    p.add_argument("--preset", default="sd21")
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--mode", default="reduce-overhead")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--go", default=None, help="wait for this file to exist before timing")
    p.add_argument("--wait-s", type=float, default=600.0)
    args = p.parse_args(argv)
    rec = {"state": "building", "preset": args.preset, "tile": args.tile, "backend": args.backend,
           "mode": args.mode, "dtype": args.dtype, "device": args.device}
    try:
        run(args, rec)
    except Exception as e:  # noqa: BLE001 - the parent reports it; a traceback alone would be lost in a log
        import traceback

        rec.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
    write(Path(args.json), rec)
    return 1 if "error" in rec else 0


if __name__ == "__main__":
    raise SystemExit(main())
