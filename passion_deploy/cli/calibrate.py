"""passion-calibrate: PassionSR calibration (DQC) from a PassionSR PTQ YAML into a safe checkpoint."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

from . import refusals

ABLATION = (  # (name, use LET layers, train LET, train LBQ): the shape of PassionSR's ablation table
    ("MinMax", False, False, False),
    ("LET only", True, True, False),
    ("LBQ only", False, False, True),
    ("PassionSR (LET + LBQ)", True, True, True),
)


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


def _device(name: str) -> str:
    """The config's (or --device's) device; auto is the GPU when there is one, cuda without one is refused."""
    from ..devices import resolve_device

    return str(resolve_device(name))


def _output_path(args, job) -> Path:
    if args.out:
        return Path(args.out)
    if job.output is not None:
        return job.output / f"{job.quant.name}.safetensors"
    raise ValueError(f"{job.source}: give --out or quantize_config.output_modelpath")


def calibrate_one(job, fp, pairs, plan, out, eval_fn, progress):
    """Quantize a copy of fp, run DQC with `plan`; returns (q, state, final eval)."""
    from ..calibrate.dqc import DQC
    from ..quant import quantize_pipeline

    q = quantize_pipeline(copy.deepcopy(fp), job.quant)
    desc = {**job.describe(), "plan": repr(plan)}
    state = DQC(fp, q, pairs, plan, out, desc, progress=progress, eval_fn=eval_fn).run()
    return q, state, (eval_fn(q) if eval_fn else None)


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
    from ..importers import names_quant_ckpt

    key = names_quant_ckpt(args.config)
    if key:
        return import_instead(args, key)
    from ..calibrate.data import load_calibration_pairs
    from ..calibrate.job import load_job
    from ..calibrate.report import build_report, make_heldout_eval, markdown_summary, write_report
    from ..checkpoint import save_checkpoint
    from ..errors import PassionError
    from ..io_utils import atomic_write_text, writable_file
    from ..models import build_pipeline

    t_start = time.perf_counter()
    progress = not args.no_progress
    try:
        job = load_job(args.config, args.preset, args.weights, args.device, args.random_weights, args.lora)
        device = _device(job.device)
        out = writable_file(_output_path(args, job), "--out")  # refused now, not after the calibration
        fp = build_pipeline(job.preset, job.weights, job.lora, job.random_weights, job.context).to(device)
        pairs = [(lr.to(device), hr.to(device), n) for lr, hr, n in load_calibration_pairs(job.cali_img_path, job.process_size)]
    except ValueError as e:  # the job's plain ValueErrors (a tile the model cannot take, ...) are refusals too
        raise PassionError(str(e)) from None
    plan = job.plan
    if args.stats_only:
        plan = dataclasses.replace(plan, train_let=False, train_lbq=False)
    print(f"passion-calibrate: {job.quant.name} on {job.preset} ({fp.weights_source}), {len(pairs)} calibration "
          f"images at {job.process_size} px, device {device} -> {out}")
    eval_fn = make_heldout_eval(fp, job.process_size, device)
    try:
        q, state, final = calibrate_one(job, fp, pairs, plan, out, eval_fn, progress)
    except ValueError as e:  # the calibration's plain ValueErrors (no batch, sizes that differ) are refusals too
        raise PassionError(str(e)) from None
    report = build_report(job, state, eval_fn, final)
    save_checkpoint(q.to("cpu"), out, extra={"report": out.name.removesuffix(".safetensors") + ".report.json"})
    report_path = Path(str(out).removesuffix(".safetensors") + ".report.json")
    write_report(report_path, report)
    partial = Path(str(out).removesuffix(".safetensors") + ".partial.safetensors")
    partial.unlink(missing_ok=True)
    print()
    print(markdown_summary(report))

    if args.ablation:
        rows = []
        for name, use_let, train_let, train_lbq in ABLATION:
            variant = dataclasses.replace(job, quant=_with_let(job.quant, use_let))
            vplan = dataclasses.replace(job.plan, train_let=train_let, train_lbq=train_lbq)
            print(f"passion-calibrate: ablation variant {name}")
            _, vstate, vfinal = calibrate_one(variant, fp, pairs, vplan, None, eval_fn, progress)
            rows.append({"variant": name, "init": vstate.get("init_eval"), "calibrated": vfinal,
                         "seconds": round(sum(s["seconds"] for s in vstate["stages"]) + (vstate.get("stats_seconds") or 0), 1)})
        ablation = {"config": report["config"], "heldout_images": report["heldout"]["images"], "variants": rows}
        abl_path = Path(str(out).removesuffix(".safetensors") + ".ablation.json")
        atomic_write_text(abl_path, json.dumps(ablation, indent=2) + "\n")
        print()
        print(ablation_markdown(ablation))
        print(f"ablation written to {abl_path}")
    print(f"\npassion-calibrate: wrote {out} and {report_path.name} in {time.perf_counter() - t_start:.0f} s")
    return 0


def _with_let(quant, use_let: bool):
    return dataclasses.replace(
        quant,
        unet=dataclasses.replace(quant.unet, let=use_let) if quant.unet else None,
        vae=dataclasses.replace(quant.vae, let=use_let) if quant.vae else None,
    )


def ablation_markdown(ablation: dict) -> str:
    lines = ["| method | held-out PSNR vs FP (dB) | seconds |", "|---|---:|---:|"]
    for r in ablation["variants"]:
        lines.append(f"| {r['variant']} | {r['calibrated']['psnr_vs_fp_db']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
