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
                   help="int8 kernels: portable (exact on every x86 CPU), vnni (int8 weights everywhere: fastest, "
                        "exact only with VNNI), auto (vnni when this CPU has it)")
    p.add_argument("--dynamic-constants", action="store_true",
                   help="keep the time embedding, time projections and cross-attention K/V as graph ops with "
                        "timestep/context inputs instead of folding them for t=999 and the empty prompt")
    p.add_argument("--verify", action="store_true", help="compare the artifact with the fake-quant reference, write DIR/verify.json")
    p.add_argument("--min-psnr", type=float, default=45.0, help="--verify fails below this end-to-end PSNR vs fake-quant (dB)")
    p.add_argument("--probes", type=int, default=3, help="number of probe images for --verify")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.target != "onnx":
        print(f"passion-export: the {args.target} target is not built yet; use --target onnx.", file=sys.stderr)
        return 2
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..export.artifact import ArtifactError
    from ..export.exporter import export_artifact, parse_tile
    from ..export.trace import ExportError

    progress = not args.no_progress
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    t0 = time.perf_counter()
    try:
        tile = parse_tile(args.tile) if args.tile else None
        manifest = export_artifact(args.ckpt, args.out, args.target, components, tile, args.isa,
                                   fold=not args.dynamic_constants, progress=progress)
    except (CheckpointError, ConfigError, ExportError, ArtifactError, OSError) as e:
        print(f"passion-export: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"passion-export: {manifest['quant_config_name']} from {args.ckpt} -> {out} "
          f"(onnx, isa {manifest['isa']}, latent tile {manifest['pipeline']['latent_tile'][0]}x{manifest['pipeline']['latent_tile'][1]}, "
          f"{time.perf_counter() - t0:.1f} s)")
    for comp, c in manifest["components"].items():
        print(f"  {comp:12s} {c['quantized_layers']:4d} int layers, {c['quantized_attention']:2d} int attention cores; "
              f"IR {c['ir_file_bytes'] / 1e6:8.2f} MB = {c['ir_vs_fp32']:.3f}x FP32, ONNX {c['onnx_bytes'] / 1e6:8.2f} MB")
    if not args.verify:
        return 0
    from ..export.verify import summary_lines, verify_artifact

    try:
        report, ok = verify_artifact(out, args.min_psnr, args.probes, progress)
    except (CheckpointError, ArtifactError, ValueError) as e:
        print(f"passion-export: verification could not run: {e}", file=sys.stderr)
        return 2
    print(f"passion-export: verification on {report['probes']} -> {out / 'verify.json'}")
    for line in summary_lines(report):
        print(line)
    e2e = report["end_to_end"]["psnr_vs_fakequant_db"]
    floor = report["reference_sensitivity_db"]["per_probe"]
    print(f"  end-to-end {e2e} dB vs fake-quant, threshold {args.min_psnr} dB: {'PASS' if ok else 'FAIL'} "
          f"(fake-quant vs itself with its input changed by 1e-5: {', '.join(str(v) for v in floor)} dB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
