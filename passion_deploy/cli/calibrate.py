"""passion-calibrate: PassionSR calibration (DQC) from a PassionSR PTQ YAML into a safe checkpoint."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import refusals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="passion-calibrate", description=__doc__)
    p.add_argument("--config", required=True, help="PassionSR PTQ YAML (seed README schema); a YAML whose blocks name "
                                                   "quant_ckpt (PassionSR's calibrated parameters) is imported instead")
    p.add_argument("--out", help="checkpoint path (default: quantize_config.output_modelpath/<config name>.safetensors)")
    p.add_argument("--preset", choices=["tiny", "sd21"], help="model preset; replaces the config's SD paths")
    p.add_argument("--weights", help="FP weights (replaces basic_config's SD paths)")
    p.add_argument("--lora", help="OSEDiff LoRA to merge (replaces basic_config.lora_weights_path)")
    p.add_argument("--random-weights", type=int, metavar="SEED", help="seeded random weights (benchmarking only)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's device)")
    p.add_argument("--stats-only", action="store_true", help="only the statistics pass (minutes, no training)")
    p.add_argument("--ablation", action="store_true", help="also run MinMax / LET only / LBQ only and write the comparison")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def import_instead(args, key: str) -> int:
    """The config's blocks name PassionSR's calibrated parameters (`quant_ckpt`): nothing is left to
    calibrate, so they are loaded through the importer and written where the calibration would go."""
    from ..api import import_passionsr
    from ..config import load_yaml
    from ..importers import ImportRefused, job_from_yaml
    from ..io_utils import writable_file

    for flag in ("preset", "weights", "lora", "random_weights", "stats_only", "ablation"):
        if getattr(args, flag) not in (None, False):
            raise ImportRefused(f"{args.config}: {key} names PassionSR's calibrated parameters, which are imported "
                                f"as they are; --{flag.replace('_', '-')} does not apply", args.config)
    job = job_from_yaml(args.config)
    out_dir = (load_yaml(args.config).get("quantize_config") or {}).get("output_modelpath")
    if not args.out and not out_dir:
        raise ImportRefused(f"{args.config}: give --out or quantize_config.output_modelpath", args.config)
    out = writable_file(Path(args.out) if args.out else Path(out_dir) / f"{job.quant.name}.safetensors", "--out")
    result = import_passionsr(job, out, progress=not args.no_progress)
    print("\n".join(result.lines))
    print(f"passion-calibrate: {args.config}: {key} names PassionSR's calibrated parameters, so they were imported "
          f"(passion-import), not calibrated; wrote {out}")
    return 0


@refusals("passion-calibrate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..api import ABLATION, calibration, passionsr_parameters

    key = passionsr_parameters(args.config)
    if key:
        return import_instead(args, key)
    t_start = time.perf_counter()
    progress = not args.no_progress
    calib = calibration(args.config, args.out, args.preset, args.weights, args.lora, args.random_weights, args.device,
                        stats_only=args.stats_only)
    job = calib.job
    print(f"passion-calibrate: {job.quant.name} on {job.preset} ({calib.fp.weights_source}), {len(calib.pairs)} calibration "
          f"images at {job.process_size} px, device {calib.device} -> {calib.out}")
    result = calib.run(progress)
    print()
    print(result.summary)

    if args.ablation:
        rows = []
        for name, *_ in ABLATION:
            print(f"passion-calibrate: ablation variant {name}")
            rows.append(calib.ablation_variant(name, progress))
        ablation, abl_path = calib.write_ablation(rows)
        print()
        print(ablation_markdown(ablation))
        print(f"ablation written to {abl_path}")
    print(f"\npassion-calibrate: wrote {result.checkpoint} and {result.report_path.name} in {time.perf_counter() - t_start:.0f} s")
    return 0


def ablation_markdown(ablation: dict) -> str:
    lines = ["| method | held-out PSNR vs FP (dB) | seconds |", "|---|---:|---:|"]
    for r in ablation["variants"]:
        lines.append(f"| {r['variant']} | {r['calibrated']['psnr_vs_fp_db']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
