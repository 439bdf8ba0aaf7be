"""passion-export: compile a calibrated checkpoint into a deployable artifact directory."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..models.components import COMPONENTS
from . import add_options_arguments, options_from_args, refusals

PROG = "passion-export"


def build_parser() -> argparse.ArgumentParser:
    from ..export.targets import get_target, target_names

    p = argparse.ArgumentParser(prog="passion-export", description=__doc__)
    p.add_argument("--ckpt", required=True, help="calibrated checkpoint: a path or a bundled name (tiny-w8a8, tiny-w6a6)")
    p.add_argument("--target", required=True, choices=target_names(),
                   help="; ".join(f"{n}: {get_target(n).help}" for n in target_names()))
    p.add_argument("--out", required=True, help="artifact directory (created; a previous export there is replaced)")
    p.add_argument("--components", default=",".join(COMPONENTS), help=f"comma-separated subset of {','.join(COMPONENTS)}")
    p.add_argument("--weights", help="FP weights of a checkpoint saved without them (passion-calibrate's default): "
                                     "the SD checkpoint, diffusers folder or weight file it was calibrated on")
    p.add_argument("--lora", help="the OSEDiff LoRA merged into those weights at calibration")
    p.add_argument("--tile", metavar="LATENT_HxW", help="latent tile (default: the tile the checkpoint was calibrated at)")
    p.add_argument("--dynamic-constants", action="store_true",
                   help="keep the time embedding, time projections and cross-attention K/V as graph ops with "
                        "timestep/context inputs instead of folding them for t=999 and the empty prompt")
    p.add_argument("--verify", action="store_true", help="compare the artifact with the fake-quant reference, write DIR/verify.json")
    p.add_argument("--min-psnr", type=float, default=None, help="--verify's loose floor (dB vs fake-quant) for each component and end to end, which catches gross errors; the gate is per layer (default 20)")
    p.add_argument("--probes", type=int, default=3, help="number of probe images for --verify")
    p.add_argument("--device", default="auto", help="where --verify runs the fake-quant reference: auto (the GPU when "
                                                    "there is one), cpu, cuda or cuda:N")
    p.add_argument("--bench-runs", type=int, default=5,
                   help="after --verify, time each component against its float baselines (passion-bench's: "
                        "alternating, median of this many runs, >= 5; a triton artifact only on a GPU); 0 skips it")
    for n in target_names():
        add_options_arguments(p, f"{n} target", get_target(n).options)
    p.add_argument("--no-progress", action="store_true")
    return p


@refusals(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..api import export_model, target_options
    from ..devices import resolve_device
    from ..export.exporter import parse_tile
    from ..export.targets import export_report
    from ..io_utils import writable_dir

    args.device = resolve_device(args.device)
    progress = not args.no_progress
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    t0 = time.perf_counter()
    writable_dir(args.out, "--out")  # refused now, not after tracing and lowering
    tile = parse_tile(args.tile) if args.tile else None
    art = export_model(args.ckpt, args.target, args.out, options_from_args(args, target_options(args.target)), components, tile,
                       progress=progress, dynamic_constants=args.dynamic_constants, weights=args.weights, lora=args.lora)
    manifest, out = art.manifest, Path(args.out)
    report = export_report(manifest)
    print(f"{PROG}: {manifest['quant_config_name']} from {args.ckpt} -> {out} "
          f"({report.summary}, latent tile {manifest['pipeline']['latent_tile'][0]}x{manifest['pipeline']['latent_tile'][1]}, "
          f"{time.perf_counter() - t0:.1f} s)")
    for comp, c in manifest["components"].items():
        print(f"  {comp:12s} {c['quantized_layers']:4d} int layers, {c['quantized_attention']:2d} int attention cores; "
              f"IR {c['ir_file_bytes'] / 1e6:8.2f} MB = {c['ir_vs_fp32']:.3f}x FP32"
              + (f", ONNX {c['onnx_bytes'] / 1e6:8.2f} MB" if "onnx_bytes" in c else " (packed weights the kernels load)"))
    for line in report.lines:
        print(line)
    status = _verify_and_time(args, art, report, progress)
    if status == 0 and report.incomplete:
        print(f"{PROG}: wrote {out}" + (" and verified it" if args.verify else "") + f", but {report.incomplete}.",
              file=sys.stderr)
        return 3
    return status


def _verify_and_time(args, art, report, progress: bool) -> int:
    """--verify on the artifact just written (the Artifact passed down: its files are not read
    again), then the latency comparison where timing it here says something."""
    if not args.verify:
        return 0
    from ..api import verification_lines, verify_artifact

    try:
        result = verify_artifact(art, args.min_psnr, args.probes, progress, device=args.device)
    except ValueError as e:  # a refusal (PassionError), or a runtime's plain shape check while it runs
        print(f"{PROG}: verification could not run: {e}", file=sys.stderr)
        return 2
    ok = result["passed"]
    print(f"{PROG}: verification on {result['probes']} -> {art.dir / 'verify.json'}")
    for line in verification_lines(result):
        print(line)
    if ok and args.bench_runs and report.no_timing:
        print(f"{PROG}: no latency comparison: {report.no_timing}")
    elif ok and args.bench_runs:
        bench_status = latency_comparison(art, args.bench_runs, progress)
        if bench_status:
            return bench_status
    return 0 if ok else 1


def latency_comparison(art, runs: int, progress: bool) -> int:
    """The artifact's per-component latency vs its FP32 baselines (passion-bench's measurement,
    without its memory probes or fidelity scores: this is a glance, passion-bench the record)."""
    from ..api import benchmark
    from ..benchmarks.report import total_line

    print(f"{PROG}: latency, median of {runs} alternating runs on this machine "
          f"(full record: passion-bench --model {art.dir} --json OUT.json)")
    try:
        rec = benchmark(art, runs=runs, memory=False, fidelity=False, progress=progress, log=_bench_log)
    except (ValueError, OSError) as e:  # PassionError is a ValueError: a refusal, said as the comparison's
        print(f"{PROG}: the latency comparison could not run: {e}", file=sys.stderr)
        return 2
    print(total_line(rec))
    return 0


def _bench_log(line: str) -> None:
    if line.startswith("  "):  # the per-component result lines; the harness's build steps stay quiet
        print(line)


if __name__ == "__main__":
    sys.exit(main())
