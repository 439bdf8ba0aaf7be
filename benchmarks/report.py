"""Markdown summary of a benchmark record (benchmarks/harness.py)."""
from __future__ import annotations

LABELS = {"int_onnx": "integer ONNX (artifact)", "fp32_onnx": "FP32 ONNX Runtime", "torch_fp32": "PyTorch FP32 eager",
          "triton": "Triton integer kernels (artifact)", "torch_fp16": "PyTorch FP16 (CUDA graphs)"}


def _mb(n) -> str:
    return f"{n / 1e6:,.1f}" if isinstance(n, (int, float)) else "-"


def markdown(rec: dict) -> str:
    m = rec["machine"]
    flags = ", ".join(f for f, on in m["cpu_flags"].items() if on) or "none of " + ", ".join(m["cpu_flags"])
    v = rec["versions"]
    art = rec.get("artifact_variant", "int_onnx")  # records from before the triton target are onnx
    kernels = f"{rec['isa']} int8 kernels" if art == "int_onnx" else rec.get("runtime", "Triton kernels")
    lines = [
        f"# passion-bench: {rec['quant_config']} ({kernels})",
        "",
        f"- model: `{rec['model_dir']}` from `{rec['source_checkpoint']['name']}` "
        f"(preset {rec['source_checkpoint']['preset']}, weights {rec['source_checkpoint']['weights_source']})",
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, flags: {flags}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f"; load average at start {m['load_average']}, at end {m.get('load_average_end')}",
        f"- versions: onnxruntime {v['onnxruntime']}, torch {v['torch']}, onnx {v['onnx']}"
        + (f", triton {v['triton']}" if v.get("triton") else "") + f", passion-deploy {v['passion_deploy']}",
        f"- method: {rec['settings']['warmup']} warm-up run(s), then {rec['settings']['runs']} runs with the variants "
        "alternating; median (min-max) in ms",
    ]
    if rec["settings"].get("note"):
        lines.append(f"- **{rec['settings']['note']}**")
    if rec["settings"].get("isa_check_skipped_outputs_invalid"):
        lines.append("- **timing only**: this int8-everywhere (vnni) artifact saturates int16 on this CPU without "
                     "VNNI; its outputs are wrong here and only its latency is meaningful (the int8 GEMMs run faster still with VNNI)")
    lines += [
        "",
        "| component | input | variant | median ms | min-max ms | variant ms / artifact ms | weights on disk MB | peak RSS MB, own process | load+warm-up RSS MB, in-process |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for comp, c in rec["components"].items():
        shape = "x".join(str(d) for d in next(iter(c["input"].values())))
        for var, r in c["variants"].items():
            sp = "1.00x" if var == art else f"{r['median_s'] / c['variants'][art]['median_s']:.2f}x"
            disk = r.get("weight_bytes_on_disk", r.get("weight_bytes_in_memory"))
            lines.append(f"| {comp} | {shape} | {LABELS[var]} | {r['median_s'] * 1e3:,.1f} | "
                         f"{r['min_s'] * 1e3:,.1f}-{r['max_s'] * 1e3:,.1f} | {sp} | {_mb(disk)} | "
                         f"{_mb(r.get('subprocess_memory', {}).get('peak_rss_bytes'))} | "
                         f"{_mb(r.get('load_and_warmup_rss_increase_bytes'))} |")
    lines += ["", "Speed-up = variant median / artifact median. PyTorch weights are its float parameters in memory.",
              "Peak RSS, own process: the model loaded and run once in a fresh process (includes ~100 MB of "
              "Python + ONNX Runtime; onnx artifacts only). In-process increase: RSS growth while the variant loads and "
              "warms up (0 when it reuses pages freed by an earlier variant).",
              "Deploy-IR packed weight file vs FP32 weight bytes: "
              + ", ".join(f"{k} {c['ir_vs_fp32_bytes']:.3f}x" for k, c in rec["components"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m passion_deploy.benchmarks.report RECORD.json > REPORT.md
    import json
    import sys

    print(markdown(json.loads(open(sys.argv[1], encoding="utf-8").read())))
