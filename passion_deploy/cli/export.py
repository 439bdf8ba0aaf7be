"""passion-export: compile a calibrated checkpoint into a deployable artifact directory."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

COMPONENTS = ("unet", "vae_encoder", "vae_decoder")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="passion-export", description=__doc__)
    p.add_argument("--ckpt", required=True, help="calibrated checkpoint: a path or a bundled name (tiny-w8a8, tiny-w6a6)")
    p.add_argument("--target", required=True, choices=["onnx", "triton", "trt"])
    p.add_argument("--out", required=True, help="artifact directory (created; a previous export there is replaced)")
    p.add_argument("--components", default=",".join(COMPONENTS), help=f"comma-separated subset of {','.join(COMPONENTS)}")
    p.add_argument("--tile", metavar="LATENT_HxW", help="latent tile (default: the tile the checkpoint was calibrated at)")
    p.add_argument("--isa", default="auto", choices=["auto", "portable", "vnni"],
                   help="onnx target's int8 kernels: portable (exact on every x86 CPU), vnni (int8 weights everywhere: "
                        "fastest, exact only with VNNI), auto (vnni when this CPU has it)")
    p.add_argument("--dynamic-constants", action="store_true",
                   help="keep the time embedding, time projections and cross-attention K/V as graph ops with "
                        "timestep/context inputs instead of folding them for t=999 and the empty prompt")
    p.add_argument("--verify", action="store_true", help="compare the artifact with the fake-quant reference, write DIR/verify.json")
    p.add_argument("--min-psnr", type=float, default=45.0, help="--verify bar (dB vs fake-quant) for each component and end to end; end to end it drops to the fake-quant model's own 1e-5-input-change level minus 1 dB where that is lower")
    p.add_argument("--probes", type=int, default=3, help="number of probe images for --verify")
    p.add_argument("--bench-runs", type=int, default=5,
                   help="after --verify, time each component against its float baselines (passion-bench's: "
                        "alternating, median of this many runs, >= 5; a triton artifact only on a GPU); 0 skips it")
    trt = p.add_argument_group("trt target")
    trt.add_argument("--trt-float", default="fp32", choices=["fp32", "fp16"],
                     help="precision of the INT8 engines' float ops (norms, activations, softmax, the shift terms); the "
                          "Q/DQ convs and matmuls are INT8 either way. fp16 is faster, further from the fake-quant model, "
                          "and refused when a quantization scale does not survive FP16. The baseline engines are FP16")
    trt.add_argument("--max-batch", type=int, default=1, help="largest batch of tiles the engines accept")
    trt.add_argument("--timing-cache", metavar="FILE",
                     help="TensorRT timing cache, reused between builds (default: ~/.cache/passion-deploy/trt-VERSION-GPU.timing)")
    trt.add_argument("--no-engines", action="store_true", help="write and verify the Q/DQ ONNX only")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_batch < 1:
        print(f"passion-export: --max-batch {args.max_batch}: an engine takes at least one tile per call", file=sys.stderr)
        return 2
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..export.artifact import ArtifactError
    from ..export.exporter import export_artifact, parse_tile
    from ..export.trace import ExportError
    from ..export.trt_build import EngineBuildError

    progress = not args.no_progress
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    t0 = time.perf_counter()
    try:
        tile = parse_tile(args.tile) if args.tile else None
        trt = {"float_precision": args.trt_float, "max_batch": args.max_batch, "build_engines": not args.no_engines,
               "timing_cache": Path(args.timing_cache) if args.timing_cache else None}
        if args.target == "trt" and not args.no_engines and trt["timing_cache"] is None:
            trt["timing_cache"] = _default_timing_cache()
        manifest = export_artifact(args.ckpt, args.out, args.target, components, tile, args.isa,
                                   fold=not args.dynamic_constants, progress=progress, trt=trt)
    except (CheckpointError, ConfigError, ExportError, ArtifactError, EngineBuildError, OSError) as e:
        print(f"passion-export: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    target = {"onnx": f"onnx, isa {manifest.get('isa')}", "triton": "triton", "trt": "trt: TensorRT Q/DQ ONNX"
              + (", INT8 + FP16 engines" if manifest.get("engines") else ", no engines")}[args.target]
    print(f"passion-export: {manifest['quant_config_name']} from {args.ckpt} -> {out} "
          f"({target}, latent tile {manifest['pipeline']['latent_tile'][0]}x{manifest['pipeline']['latent_tile'][1]}, "
          f"{time.perf_counter() - t0:.1f} s)")
    for comp, c in manifest["components"].items():
        print(f"  {comp:12s} {c['quantized_layers']:4d} int layers, {c['quantized_attention']:2d} int attention cores; "
              f"IR {c['ir_file_bytes'] / 1e6:8.2f} MB = {c['ir_vs_fp32']:.3f}x FP32"
              + (f", ONNX {c['onnx_bytes'] / 1e6:8.2f} MB" if "onnx_bytes" in c else " (packed weights the kernels load)"))
    for comp, e in (manifest.get("engines") or {}).items():
        print(f"  {comp:12s} engines: " + ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB ({v['build_seconds']} s)" for k, v in e.items()))
    status = _verify_and_time(args, out, progress)
    if status == 0 and args.target == "trt" and manifest.get("engines_missing"):
        from ..export.trt_build import INSTALL_HINT

        print(f"passion-export: wrote the TensorRT Q/DQ ONNX to {out}"
              + (" and verified it in ONNX Runtime" if args.verify else "")
              + f", but built no engines: this machine lacks {' and '.join(manifest['engines_missing'])}; "
              f"{INSTALL_HINT}.", file=sys.stderr)
        return 3
    return status


def _default_timing_cache():
    from ..export.trt_build import default_timing_cache, missing_for_engines

    return None if missing_for_engines() else default_timing_cache()


def _verify_and_time(args, out: Path, progress: bool) -> int:
    from ..checkpoint import CheckpointError
    from ..export.artifact import ArtifactError

    if not args.verify:
        return 0
    from ..export.artifact import read_manifest
    from ..export.verify import summary_lines, verdict_line, verify_artifact

    try:
        report, ok = verify_artifact(out, args.min_psnr, args.probes, progress)
    except (CheckpointError, ArtifactError, ValueError) as e:
        print(f"passion-export: verification could not run: {e}", file=sys.stderr)
        return 2
    print(f"passion-export: verification on {report['probes']} -> {out / 'verify.json'}")
    for line in summary_lines(report):
        print(line)
    print(verdict_line(report))
    if ok and args.bench_runs and args.target == "triton" and not _has_gpu():
        print("passion-export: no latency comparison: without a GPU the kernels ran in Triton's interpreter, "
              "whose timings say nothing about the kernels")
    elif ok and args.bench_runs and args.target == "trt" and not read_manifest(out).get("engines"):
        print("passion-export: no latency comparison: there are no engines, and the Q/DQ graph's unfused run in "
              "ONNX Runtime says nothing about TensorRT's speed")
    elif ok and args.bench_runs:
        bench_status = latency_comparison(out, args.bench_runs, progress)
        if bench_status:
            return bench_status
    return 0 if ok else 1


def latency_comparison(out: Path, runs: int, progress: bool) -> int:
    """The artifact's per-component latency vs its FP32 baselines (passion-bench's harness, no memory probes)."""
    from ..benchmarks.harness import run_benchmark
    from ..checkpoint import CheckpointError

    print(f"passion-export: latency, median of {runs} alternating runs on this machine "
          f"(full record: passion-bench --model {out} --json OUT.json)")
    try:
        rec = run_benchmark(out, runs=runs, progress=progress, memory=False, log=_bench_log)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"passion-export: the latency comparison could not run: {e}", file=sys.stderr)
        return 2
    art = rec["artifact_variant"]
    variants = list(next(iter(rec["components"].values()))["variants"])
    total = {v: sum(c["variants"][v]["median_s"] for c in rec["components"].values()) for v in variants}
    print(f"  {'all':12s} " + "   ".join(f"{SHORT[v]} {total[v] * 1e3:9.1f} ms" for v in variants) + "   -> "
          + ", ".join(f"{total[v] / total[art]:.2f}x vs {LONG[v]}" for v in variants if v != art))
    return 0


SHORT = {"int_onnx": "int", "fp32_onnx": "fp32 ORT", "torch_fp32": "torch", "triton": "triton", "torch_fp16": "torch fp16",
         "trt_int8": "TRT int8", "trt_fp16": "TRT fp16"}
LONG = {"fp32_onnx": "FP32 ORT", "torch_fp32": "PyTorch FP32", "torch_fp16": "PyTorch FP16", "trt_fp16": "TensorRT FP16"}


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _bench_log(line: str) -> None:
    if line.startswith("  "):  # the per-component result lines; the harness's build steps stay quiet
        print(line)


if __name__ == "__main__":
    sys.exit(main())
