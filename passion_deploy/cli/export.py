"""passion-export: compile a calibrated checkpoint into a deployable artifact directory."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..models.components import COMPONENTS


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
        get_target(n).add_arguments(p)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..devices import DeviceError, resolve_device

    try:
        args.device = resolve_device(args.device)
    except DeviceError as e:
        print(f"passion-export: {e}", file=sys.stderr)
        return 2
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..export.artifact import ArtifactError
    from ..export.exporter import export_artifact, parse_tile
    from ..export.ir.trace import ExportError
    from ..export.targets import get_target
    from ..export.targets.trt.build import EngineBuildError
    from ..io_utils import OutputError, writable_dir

    target = get_target(args.target)
    progress = not args.no_progress
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    t0 = time.perf_counter()
    try:
        writable_dir(args.out, "--out")  # refused now, not after tracing and lowering
        tile = parse_tile(args.tile) if args.tile else None
        manifest = export_artifact(args.ckpt, args.out, target, components, tile, fold=not args.dynamic_constants,
                                   progress=progress, weights=args.weights, lora=args.lora, **target.options_from_args(args))
    except (CheckpointError, ConfigError, ExportError, ArtifactError, EngineBuildError, OutputError, OSError) as e:
        print(f"passion-export: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"passion-export: {manifest['quant_config_name']} from {args.ckpt} -> {out} "
          f"({target.summary(manifest)}, latent tile {manifest['pipeline']['latent_tile'][0]}x{manifest['pipeline']['latent_tile'][1]}, "
          f"{time.perf_counter() - t0:.1f} s)")
    for comp, c in manifest["components"].items():
        print(f"  {comp:12s} {c['quantized_layers']:4d} int layers, {c['quantized_attention']:2d} int attention cores; "
              f"IR {c['ir_file_bytes'] / 1e6:8.2f} MB = {c['ir_vs_fp32']:.3f}x FP32"
              + (f", ONNX {c['onnx_bytes'] / 1e6:8.2f} MB" if "onnx_bytes" in c else " (packed weights the kernels load)"))
    for line in target.report_lines(manifest):
        print(line)
    status = _verify_and_time(args, target, out, progress)
    missing = target.incomplete(manifest)
    if status == 0 and missing:
        print(f"passion-export: wrote {out}" + (" and verified it" if args.verify else "") + f", but {missing}.",
              file=sys.stderr)
        return 3
    return status


def _verify_and_time(args, target, out: Path, progress: bool) -> int:
    from ..checkpoint import CheckpointError
    from ..export.artifact import ArtifactError

    if not args.verify:
        return 0
    from ..export.artifact import read_manifest
    from ..export.verify import DEFAULT_MIN_PSNR, summary_lines, verdict_line, verify_artifact

    try:
        report, ok = verify_artifact(out, DEFAULT_MIN_PSNR if args.min_psnr is None else args.min_psnr, args.probes, progress,
                                     device=args.device)
    except (CheckpointError, ArtifactError, ValueError) as e:
        print(f"passion-export: verification could not run: {e}", file=sys.stderr)
        return 2
    print(f"passion-export: verification on {report['probes']} -> {out / 'verify.json'}")
    for line in summary_lines(report):
        print(line)
    print(verdict_line(report))
    no_timing = target.no_timing(read_manifest(out)) if ok and args.bench_runs else None
    if no_timing:
        print(f"passion-export: no latency comparison: {no_timing}")
    elif ok and args.bench_runs:
        bench_status = latency_comparison(out, args.bench_runs, progress)
        if bench_status:
            return bench_status
    return 0 if ok else 1


def latency_comparison(out: Path, runs: int, progress: bool) -> int:
    """The artifact's per-component latency vs its FP32 baselines (passion-bench's harness, no memory probes)."""
    from ..benchmarks.harness import result_line, run_benchmark, speedups
    from ..checkpoint import CheckpointError

    print(f"passion-export: latency, median of {runs} alternating runs on this machine "
          f"(full record: passion-bench --model {out} --json OUT.json)")
    try:
        rec = run_benchmark(out, runs=runs, progress=progress, memory=False, log=_bench_log)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"passion-export: the latency comparison could not run: {e}", file=sys.stderr)
        return 2
    variants = list(next(iter(rec["components"].values()))["variants"])
    total = {v: {"median_s": sum(c["variants"][v]["median_s"] for c in rec["components"].values())} for v in variants}
    print(result_line("all", total, speedups(total, rec["artifact_variant"])))
    return 0


def _bench_log(line: str) -> None:
    if line.startswith("  "):  # the per-component result lines; the harness's build steps stay quiet
        print(line)


if __name__ == "__main__":
    sys.exit(main())
