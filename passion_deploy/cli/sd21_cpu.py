"""Reproduce benchmarks/results/sd21-*: the sd21 architecture (random weights, seed 0), W8A8
statistics-only calibration on one bundled photo at 512 px (latent tile 64), exported and
benchmarked on this CPU.

    python -m passion_deploy.cli.sd21_cpu --work /tmp/sd21 [--results benchmarks/results]

Records: the onnx target (`portable`; `vnni` UNet timing only), and the openvino target against
the portable one and what CPU users pick instead (FP32 ONNX Runtime, OpenVINO FP32, NNCF INT8;
full SR to 512 px).
`--only` runs one of them. Takes one to two hours on 2 cores (calibration ~5-20 min, each export
~3-5 min, each benchmark 20-60 min). The checkpoint keeps the FP weights: a random-weight
checkpoint cannot be rebuilt from its preset alone.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m passion_deploy.cli.sd21_cpu", description=__doc__)
    p.add_argument("--work", required=True, help="scratch folder (checkpoint ~3.5 GB, artifacts ~2 GB)")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--vae-size", type=int, default=256, help="image side for the VAE benchmarks (512 px is slow on 2 cores)")
    p.add_argument("--only", choices=["portable", "vnni", "openvino"], help="one record instead of all three")
    args = p.parse_args(argv)
    from passion_deploy import runner
    from passion_deploy.calibrate.data import HELD_OUT
    from passion_deploy.checkpoint import save_checkpoint
    from passion_deploy.cli import bench, export
    from passion_deploy.config import NAMED_CONFIGS
    from passion_deploy.models import build_pipeline
    from passion_deploy.quant import quantize_pipeline

    work, res = Path(args.work), Path(args.results)
    ckpt = work / "sd21-w8a8.safetensors"
    if not ckpt.exists():
        pipe = quantize_pipeline(build_pipeline("sd21", random_weights=0), NAMED_CONFIGS["w8a8"])
        runner.calibrate_on_photos(pipe, latent_tile=64, exclude=HELD_OUT)
        save_checkpoint(pipe, ckpt, include_fp_weights=True)
        del pipe
    steps = {"portable": [
        (export.main, ["--ckpt", str(ckpt), "--target", "onnx", "--out", str(work / "portable"), "--isa", "portable"]),
        (bench.main, ["--model", str(work / "portable"), "--vae-size", str(args.vae_size),
                      "--json", str(res / "sd21-w8a8-portable-cpu.json"), "--report", str(res / "sd21-w8a8-portable-cpu.md")])],
        "vnni": [(export.main, ["--ckpt", str(ckpt), "--target", "onnx", "--out", str(work / "vnni"), "--isa", "vnni", "--components", "unet"]),
        (bench.main, ["--model", str(work / "vnni"), "--components", "unet", "--timing-only",
                      "--json", str(res / "sd21-w8a8-vnni-unet-timing-only-cpu.json"),
                      "--report", str(res / "sd21-w8a8-vnni-unet-timing-only-cpu.md")])],
        "openvino": [
        (export.main, ["--ckpt", str(ckpt), "--target", "openvino", "--out", str(work / "ov"), "--bench-runs", "0"]),
        (bench.main, ["--model", str(work / "ov"), "--vs", str(work / "portable"), "--vae-size", str(args.vae_size),
                      "--no-torch", "--json", str(res / "sd21-w8a8-openvino-cpu.json"),
                      "--report", str(res / "sd21-w8a8-openvino-cpu.md")]),
        # full SR against a subset of the baselines per passion-bench run: every variant's three components
        # are loaded at once there (sd21: 6-8 GB each with its VAE at 512 px), and with four or five
        # variants the process outgrew 24 GiB
        *[(bench.main, ["--model", str(work / "ov"), "--components", "vae_encoder", "--baselines", b,
                        "--vae-size", str(args.vae_size), "--sr-size", "512", "--no-torch", "--no-memory",
                        "--json", str(res / f"sd21-w8a8-openvino-sr512-vs-{name}-cpu.json"),
                        "--report", str(res / f"sd21-w8a8-openvino-sr512-vs-{name}-cpu.md")])
          for name, b in (("fp32_onnx", "fp32_onnx"), ("openvino", "ov_fp32,nncf_int8"))]],
    }
    timed_against = {"openvino": "portable"}  # a record that times its artifact against another one's
    needed = timed_against.get(args.only)
    if needed and not (work / needed / "manifest.json").exists():
        steps[args.only].insert(0, steps[needed][0])  # export the artifact it is timed against first
    for fn, a in [step for name, group in steps.items() if args.only in (None, name) for step in group]:
        rc = fn(a)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
