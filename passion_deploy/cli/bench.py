"""passion-bench: latency and memory of an exported artifact vs its float baselines (FP32 ONNX
Runtime and PyTorch; for an openvino artifact also OpenVINO FP32, OpenVINO's default precision and
NNCF's post-training INT8; on a GPU PyTorch FP16 and, for a trt artifact, its FP16 engines), each
variant's fidelity vs FP32 on a real photo, optionally full SR end to end (--sr-size);
--report writes Markdown with PNG charts (also from a saved record: --from-json)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import refusals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="passion-bench", description=__doc__)
    p.add_argument("--model", metavar="DIR", help="artifact directory written by passion-export")
    p.add_argument("--from-json", metavar="REC.json",
                   help="render --report from a record written by --json instead of running the benchmark")
    p.add_argument("--json", metavar="OUT.json", help="write the full record (machine, versions, every sample)")
    p.add_argument("--report", metavar="OUT.md",
                   help="write a Markdown report with PNG charts next to it (OUT_latency.png, OUT_memory.png and, "
                        "from the artifact's verify.json, OUT_layers.png; charts need matplotlib)")
    p.add_argument("--verify-json", metavar="PATH",
                   help="verify.json for the per-layer chart (default: the record's model directory's verify.json)")
    p.add_argument("--note", help="a line stored in the record's settings and shown in bold in the report "
                                  "(e.g. where it was measured)")
    p.add_argument("--components", help="comma-separated subset of the artifact's components")
    p.add_argument("--runs", type=int, default=5, help="timed runs per variant (>= 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--vae-size", type=int, metavar="PX", help="image side for the VAE components (default: the UNet tile's image size)")
    p.add_argument("--threads", type=int, help="intra-op threads for ONNX Runtime and PyTorch (default: all cores)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline (FP32 eager; FP16 in CUDA graphs on a GPU)")
    p.add_argument("--baselines", metavar="NAMES",
                   help="comma-separated subset of the artifact's float baselines to time (default: all of them, e.g. "
                        "fp32_onnx,ov_fp32,ov_default,nncf_int8,torch_fp32 for an openvino artifact); fewer at once when "
                        "full SR of a large model needs every variant's pipeline in memory together")
    p.add_argument("--timing-only", action="store_true",
                   help="time an --isa vnni artifact on a CPU without VNNI (its int8 GEMMs saturate there: timings "
                        "only, outputs invalid; recorded in the JSON)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-model peak-memory probes (fresh processes)")
    p.add_argument("--vs", metavar="DIR", help="another target's artifact of the same checkpoint, its own variant timed in the "
                                                "same alternation (e.g. --model build/ov --vs build/tiny: OpenVINO vs ONNX Runtime)")
    p.add_argument("--sr-size", type=int, metavar="PX",
                   help="also time full SR to a PX x PX output (encoder + tiled UNet + decoder, every variant end to end; "
                        "needs all three components)")
    p.add_argument("--no-fidelity", action="store_true",
                   help="skip scoring each variant's output on a real photo against the FP32 PyTorch pipeline (dB vs FP32)")
    p.add_argument("--calib-images", metavar="DIR",
                   help="calibration images for the NNCF INT8 baseline (HR images, or lr/ + hr/; default: the photos the "
                        "project's own calibration of the checkpoint uses)")
    p.add_argument("--device", help="where the PyTorch baseline runs: auto, cpu, cuda or cuda:N (default: where the "
                                     "artifact runs)")
    p.add_argument("--weights", help="FP weights of a source checkpoint saved without them (the baselines are built from it)")
    p.add_argument("--lora", help="the OSEDiff LoRA those weights were calibrated with")
    p.add_argument("--no-progress", action="store_true")
    return p


@refusals("passion-bench")
def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if bool(args.model) == bool(args.from_json):
        p.error("give either --model DIR (run the benchmark) or --from-json REC.json (render a saved record)")
    from ..benchmarks.report import markdown, record_problem, render_report
    from ..io_utils import atomic_write_text

    if args.from_json:
        try:
            rec = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
            problem = record_problem(rec)
            if problem:
                raise ValueError(problem)
        except (OSError, ValueError) as e:
            print(f"passion-bench: {args.from_json}: {e}", file=sys.stderr)
            return 2
    else:
        from ..api import benchmark

        comps = [c.strip() for c in args.components.split(",")] if args.components else None
        try:
            rec = benchmark(args.model, comps, args.runs, args.warmup, args.vae_size, args.threads,
                            torch_baseline=not args.no_torch, progress=not args.no_progress,
                            baselines=[b.strip() for b in args.baselines.split(",")] if args.baselines else None,
                            timing_only_isa=args.timing_only, memory=not args.no_memory,
                            weights=args.weights, lora=args.lora, device=args.device or None,
                            vs=args.vs, fidelity=not args.no_fidelity, sr_px=args.sr_size, calib_dir=args.calib_images)
        except ValueError as e:  # a PassionError, or the harness's own refusals (plain ValueErrors)
            print(f"passion-bench: {e}", file=sys.stderr)
            return 2
    if args.note:
        s = rec.setdefault("settings", {})
        s["note"] = f"{s['note']}; {args.note}" if s.get("note") else args.note
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(rec, indent=2) + "\n")
    try:
        md = markdown(rec)
        written = render_report(rec, args.report, args.verify_json) if args.report else {}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        print(f"passion-bench: cannot render this record ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    if args.report:
        print(f"passion-bench: wrote {args.report}" + "".join(f", {w}" for w in written.values()), file=sys.stderr)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
