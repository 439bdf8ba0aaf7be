"""passion-bench: latency and memory of an exported artifact vs FP32 ONNX Runtime and PyTorch."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="passion-bench", description=__doc__)
    p.add_argument("--model", required=True, metavar="DIR", help="artifact directory written by passion-export")
    p.add_argument("--json", metavar="OUT.json", help="write the full record (machine, versions, every sample)")
    p.add_argument("--report", metavar="OUT.md", help="write a Markdown summary")
    p.add_argument("--components", help="comma-separated subset of the artifact's components")
    p.add_argument("--runs", type=int, default=5, help="timed runs per variant (>= 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--vae-size", type=int, metavar="PX", help="image side for the VAE components (default: the UNet tile's image size)")
    p.add_argument("--threads", type=int, help="intra-op threads for ONNX Runtime and PyTorch (default: all cores)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager baseline")
    p.add_argument("--timing-only", action="store_true",
                   help="time an --isa vnni artifact on a CPU without VNNI (its int8 GEMMs saturate there: timings "
                        "only, outputs invalid; recorded in the JSON)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-model peak-memory probes (fresh processes)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..benchmarks.harness import run_benchmark
    from ..benchmarks.report import markdown
    from ..checkpoint import CheckpointError
    from ..io_utils import atomic_write_text

    comps = [c.strip() for c in args.components.split(",")] if args.components else None
    try:
        rec = run_benchmark(args.model, comps, args.runs, args.warmup, args.vae_size, args.threads,
                            torch_eager=not args.no_torch, progress=not args.no_progress, timing_only_isa=args.timing_only,
                            memory=not args.no_memory)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"passion-bench: {e}", file=sys.stderr)
        return 2
    md = markdown(rec)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(rec, indent=2) + "\n")
    if args.report:
        atomic_write_text(Path(args.report), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
