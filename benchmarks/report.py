"""Markdown summary of a benchmark record (benchmarks/harness.py), and the full report: that
summary plus PNG charts (benchmarks/charts.py) of latency, memory and per-layer error.

    python -m passion_deploy.benchmarks.report RECORD.json > REPORT.md     # the table only
    passion-bench --from-json RECORD.json --report REPORT.md                # table + charts
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .labels import label

CHARTS = ("latency", "memory", "layers")


def speedups(rec: dict, artifact_variant: str) -> dict:
    """Baseline median / artifact median, per baseline variant."""
    art = rec[artifact_variant]["median_s"]
    return {f"vs_{v}": r["median_s"] / art for v, r in rec.items() if v != artifact_variant and "median_s" in r}


def result_line(comp: str, rec: dict, speed: dict) -> str:
    """One component's medians and speed-ups, as the harness logs it while it measures."""
    return (f"  {comp:12s} " + "   ".join(f"{v} {r['median_s'] * 1e3:9.2f} ms" for v, r in rec.items())
            + "   -> " + ", ".join(f"{s:.2f}x vs {k.removeprefix('vs_')}" for k, s in speed.items()))


def total_line(rec: dict) -> str:
    """The result line of the whole model: each variant's medians summed over the record's
    components (passion-export --verify's latency comparison ends with it)."""
    comps = list(rec["components"].values())
    total = {v: {"median_s": sum(c["variants"][v]["median_s"] for c in comps)} for v in comps[0]["variants"]}
    return result_line("all", total, speedups(total, rec["artifact_variant"]))


def record_problem(rec) -> str | None:
    """Why `rec` is not a passion-bench record the report can render (None when it is): other
    committed JSON (a custom comparison, a GPU check) sits beside the records in results/."""
    if not isinstance(rec, dict) or not isinstance(rec.get("components"), dict):
        return "not a passion-bench record (no components)"
    if not all(isinstance(c, dict) and isinstance(c.get("variants"), dict) for c in rec["components"].values()):
        return "not a passion-bench record (a component without timed variants)"
    return None


def _mb(n) -> str:
    return f"{n / 1e6:,.1f}" if isinstance(n, (int, float)) and not isinstance(n, bool) else "-"


def _ms(r: dict, key: str) -> str:
    v = r.get(key)
    return f"{v * 1e3:,.1f}" if isinstance(v, (int, float)) else "-"


def _load(v) -> str:
    return ", ".join(f"{x:.2f}" for x in v) if isinstance(v, (list, tuple)) else str(v)


def variant_name(var: str, r: dict) -> str:
    """A row's variant: its label, and for OpenVINO the precision it really compiled to where that is
    not f32 (OpenVINO's default is bf16 on CPUs with bf16), or the recipe's calibration for NNCF."""
    name = label(var)
    ran = (r.get("ov_compiled") or {}).get("precision")
    if ran and (ran != "f32" or var == "ov_default"):
        name += f" ({ran})"
    return name


def machine_line(rec: dict) -> str:
    m = rec.get("machine", {})
    flags_d = m.get("cpu_flags") or {}
    flags = ", ".join(f for f, on in flags_d.items() if on) or ("none of " + ", ".join(flags_d) if flags_d else "unknown")
    line = f"{m.get('cpu', 'unknown CPU')}, {m.get('logical_cpus', '?')} logical CPUs, flags: {flags}"
    if m.get("gpu"):
        line += f", GPU {m['gpu']}"
    s = rec.get("settings", {})
    threads = s.get("ort_intra_op_threads")
    if threads not in (None, "default"):
        line += f"; {threads} intra-op thread(s)"
    elif m.get("torch_threads"):
        line += f"; PyTorch threads {m['torch_threads']}"
    if "load_average" in m:
        line += f"; load average at start {_load(m['load_average'])}, at end {_load(m.get('load_average_end'))}"
    return line


def markdown(rec: dict) -> str:
    v = rec.get("versions", {})
    s = rec.get("settings", {})
    src = rec.get("source_checkpoint", {})
    art = rec.get("artifact_variant", "int_onnx")  # records from before the triton target are onnx
    kernels = f"{rec.get('isa', '?')} int8 kernels" if art == "int_onnx" else rec.get("runtime", label(art))
    lines = [
        f"# passion-bench: {rec.get('quant_config', '?')} ({kernels})",
        "",
        f"- model: `{rec.get('model_dir', '?')}` from `{src.get('name', '?')}` "
        f"(preset {src.get('preset', '?')}, weights {src.get('weights_source', '?')})",
        f"- machine: {machine_line(rec)}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if k not in ("numpy", "diffusers")),
        f"- method: {s.get('warmup', '?')} warm-up run(s), then {s.get('runs', '?')} runs with the variants "
        "alternating; median (min-max) in ms",
    ]
    if s.get("note"):
        lines.append(f"- **{s['note']}**")
    for var, why in (rec.get("baselines_not_timed") or {}).items():
        lines.append(f"- {label(var)}: not timed, {why}")
    if rec.get("vs"):
        lines.append(f"- also timed, alternating with the rest: `{rec['vs'].get('model_dir')}` ({rec['vs'].get('runtime', rec['vs'].get('target'))})")
    if rec.get("fidelity"):
        lines.append(f"- dB vs FP32: each variant's output against {rec['fidelity'].get('reference', 'FP32')}, on "
                     f"{rec['fidelity'].get('photo', 'a photo')}")
    if s.get("cpu_check_skipped_outputs_invalid"):
        lines.append("- **timing only**: this OpenVINO int8 artifact's kernels saturate on this CPU without VNNI; its "
                     "outputs are wrong here and only its latency is meaningful")
    if s.get("isa_check_skipped_outputs_invalid"):
        lines.append("- **timing only**: this int8-everywhere (vnni) artifact saturates int16 on this CPU without "
                     "VNNI; its outputs are wrong here and only its latency is meaningful (the int8 GEMMs run faster still with VNNI)")
    # the fidelity column only where the record has it (records before it render as they did)
    fid = any("psnr_vs_fp32_db" in r for c in rec["components"].values() for r in c["variants"].values())
    lines += [
        "",
        "| component | input | variant | median ms | min-max ms | variant ms / artifact ms | weights on disk MB | peak RSS MB, own process | load+warm-up MB, in-process (RSS; GPU: allocator peak) |"
        + (" dB vs FP32 |" if fid else ""),
        "|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if fid else ""),
    ]
    for comp, c in rec["components"].items():
        shape = "x".join(str(d) for d in next(iter(c.get("input", {"": []}).values()), []))
        base = c["variants"].get(art, {}).get("median_s")
        for var, r in c["variants"].items():
            sp = (f"{r['median_s'] / base:.2f}x" if base and isinstance(r.get("median_s"), (int, float)) else "-")
            disk = r.get("weight_bytes_on_disk", r.get("weight_bytes_in_memory", r.get("weight_bytes_in_model")))
            sub = r.get("subprocess_memory") if isinstance(r.get("subprocess_memory"), dict) else {}
            lines.append(f"| {comp} | {shape} | {variant_name(var, r)} | {_ms(r, 'median_s')} | "
                         f"{_ms(r, 'min_s')}-{_ms(r, 'max_s')} | {sp} | {_mb(disk)} | "
                         f"{_mb(sub.get('peak_rss_bytes'))} | "
                         f"{_mb(r.get('load_and_warmup_rss_increase_bytes', r.get('warmup_peak_gpu_bytes_over_resident')))} |" + (f" {r.get('psnr_vs_fp32_db', '-')} |" if fid else ""))
    ratios = ", ".join(f"{k} {c['ir_vs_fp32_bytes']:.3f}x" for k, c in rec["components"].items() if "ir_vs_fp32_bytes" in c)
    lines += ["", "Speed-up = variant median / artifact median. PyTorch weights are its float parameters in memory.",
              "Peak RSS, own process: the model loaded and run once in a fresh process (includes ~100 MB of "
              "Python + ONNX Runtime; onnx artifacts only). In-process increase: RSS growth while the variant loads and "
              "warms up (0 when it reuses pages freed by an earlier variant)."]
    if ratios:
        lines.append("Deploy-IR packed weight file vs FP32 weight bytes: " + ratios)
    lines.append("")
    return "\n".join(lines)


def chart_paths(out_md: str | Path) -> dict[str, Path]:
    """The PNGs of a report, next to it: OUT.md -> OUT_latency.png, OUT_memory.png, OUT_layers.png."""
    out_md = Path(out_md)
    return {k: out_md.with_name(f"{out_md.stem}_{k}.png") for k in CHARTS}


def find_verify(rec: dict, verify_path: str | Path | None = None) -> tuple[dict | None, str]:
    """The artifact's verify.json (given, or DIR/verify.json of the record's model_dir) and, when
    there is none to use, why."""
    path = Path(verify_path) if verify_path else Path(rec.get("model_dir", ".")) / "verify.json"
    if not path.is_file():
        return None, (f"no `{path}` (written by `passion-export --verify`; the per-layer error chart needs the "
                      "artifact directory it was written to)")
    try:
        ver = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"`{path}` could not be read ({e})"
    a = (rec.get("source_checkpoint") or {}).get("sha256")
    b = (ver.get("source_checkpoint") or {}).get("sha256")
    if a and b and a != b:
        return None, f"`{path}` belongs to a different checkpoint (sha256 {b[:12]} vs the record's {a[:12]})"
    layers = ver.get("layers")
    if not isinstance(layers, dict) or not any(layers.values()):
        return None, f"`{path}` has no per-layer table (`passion-export --verify` writes one)"
    return ver, str(path)


def _layer_table(ver: dict) -> list[str]:
    from .charts import layer_series

    lines = ["| component | quantized layers | median SQNR dB | lowest SQNR dB (layer) | exact layers (inf) |",
             "|---|---:|---:|---:|---:|"]
    for comp, (_, ys, names) in layer_series(ver).items():
        fin = sorted((y, n) for y, n in zip(ys, names) if math.isfinite(y))
        med = fin[len(fin) // 2][0] if fin else math.inf
        low = f"{fin[0][0]:.1f} (`{fin[0][1]}`)" if fin else "-"
        lines.append(f"| {comp} | {len(ys)} | {med:.1f} | {low} | {len(ys) - len(fin)} |")
    return lines


def render_report(rec: dict, out_md: str | Path, verify_path: str | Path | None = None) -> dict[str, Path]:
    """Write OUT.md and its PNG charts next to it, atomically; return the charts written.

    The PNGs are written first and the Markdown last, so it never links a file that is not
    there. Without matplotlib the Markdown is still written, saying why there are no charts;
    without a verify.json the per-layer chart is left out with a note."""
    from passion_deploy.io_utils import atomic_write_text

    out_md = Path(out_md)
    paths = chart_paths(out_md)
    ver, why = find_verify(rec, verify_path)
    written: dict[str, Path] = {}
    notes: list[str] = []
    try:
        import matplotlib  # noqa: F401  (only to learn whether charts can be drawn)
    except ImportError:
        notes.append("Charts skipped: matplotlib is not installed (`pip install passion-deploy[report]`).")
    else:
        from . import charts

        for key, fn, arg in (("latency", charts.latency_figure, rec), ("memory", charts.memory_figure, rec),
                             ("layers", charts.layer_error_figure, ver)):
            if arg is None:
                continue
            fig = fn(arg)
            charts.save_png(fig, paths[key])
            written[key] = paths[key]
    m = rec.get("machine", {})
    cpu_only = not m.get("gpu")
    lines = [markdown(rec).rstrip("\n"), "", "## Charts", "",
             f"Measured on: {machine_line(rec)}.",
             ""]
    if cpu_only:
        lines += ["On CPU machines quote the **ratios** (variant median / artifact median, the labels on the latency "
                  "bars), not the absolute times: the variants run in alternation on the same input in one process, so "
                  "load, clock and thread count move them together, while the absolute times belong to this CPU at "
                  "this load.", ""]
    lines += notes
    if "latency" in written:
        lines += ["### Latency per component and backend", "",
                  "Bars: the median of the timed runs; whiskers: the fastest and the slowest run; labels: the "
                  "ratio to the artifact's median.", "",
                  f"![latency per component and backend]({written['latency'].name})", ""]
    if "memory" in written:
        lines += ["### Memory and weight bytes", "",
                  "Top: weight bytes, the files a variant loads (PyTorch: its float parameters in memory). Bottom: "
                  "the memory quantities the record has: *peak RSS over baseline, own process* is the table's peak "
                  "RSS of a fresh process minus that process's RSS with ONNX Runtime imported, before the model "
                  "loads (the model's own memory); the in-process increase is as in the table.", "",
                  f"![memory and weight bytes per variant]({written['memory'].name})", ""]
    lines += ["### Per-layer error (SQNR along the network depth)", ""]
    if ver is None:
        lines += [f"Per-layer chart skipped: {why}.", ""]
    else:
        lines += [f"From `{why}`: each quantized layer's output in the artifact against the same layer of the "
                  "fake-quant model, both fed the same component input (so error accumulates with depth); the "
                  "components in pipeline order.", ""]
        lines += _layer_table(ver) + [""]
        if "layers" in written:
            lines += [f"![SQNR per quantized layer]({written['layers'].name})", ""]
    atomic_write_text(out_md, "\n".join(lines).rstrip("\n") + "\n")
    return written


if __name__ == "__main__":  # python -m passion_deploy.benchmarks.report RECORD.json > REPORT.md
    import sys

    print(markdown(json.loads(open(sys.argv[1], encoding="utf-8").read())))
