"""The GPU check's verdicts and its Markdown report, both read off the JSON record alone.

Every number shown is one the record holds (measured by the check); a target whose numbers
are missing says "not measured" and why, never a guess. Issue 15's targets:

- int8 GEMM >= 1.6x cuBLAS FP16 at the sd21 UNet's large shapes (every large shape, each
  checked against its float64 reference first);
- the sd21 UNet end to end >= 1.5x PyTorch FP16, both in CUDA graphs;
- int8 / int6 weights in GPU memory <= 0.51x / 0.385x of FP16 (the integer layers' packed
  weights and per-column vectors against the same layers' FP16 weight and bias);
- verify >= 45 dB vs fake-quant, 40 dB with fp16 float ops (here: the triton runtime's UNet
  eps and 512 px SR image against the fake-quant model's, on the GPU).
"""
from __future__ import annotations

import math

GEMM_BAR, UNET_BAR, INT8_BYTES_BAR, INT6_BYTES_BAR = 1.6, 1.5, 0.51, 0.385


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _why_missing(rep: dict, step: str, part: str | None = None) -> str:
    s = rep["steps"].get(step)
    if s is None:
        return f"the {step} step did not run"
    if part is not None:
        p = _get(s, "parts", part)
        if p is None:
            return f"{step}/{part} did not run" + (f" ({step}: {s.get('status')}: {s.get('error', '')})" if s.get("status") != "ok" else "")
        if p.get("status") != "ok":
            return f"{step}/{part}: {p.get('status')}: {p.get('error') or p.get('why', '')}"
    if s.get("status") != "ok":
        return f"{step}: {s.get('status')}: {s.get('error') or s.get('why', '')}"
    return "no value recorded"


def target(name: str, bar: str, ok: bool | None, measured: str, why: str = "", detail=None) -> dict:
    status = "not measured" if ok is None else ("met" if ok else "not met")
    rec = {"target": name, "bar": bar, "status": status, "measured": measured}
    if why:
        rec["why"] = why
    if detail is not None:
        rec["detail"] = detail
    return rec


def gemm_target(rep: dict) -> dict:
    name, bar = "int8 GEMM vs cuBLAS FP16 at the sd21 UNet's large shapes", f">= {GEMM_BAR}x on every large shape"
    shapes = [s for s in _get(rep, "steps", "kernels", "shapes") or [] if s.get("large") and "int8" in s]
    if not shapes:
        return target(name, bar, None, "-", _why_missing(rep, "kernels"))
    ratios = {s["shape"]: s["int8"]["speedup_vs_fp"] for s in shapes}
    bad_checks = [s["shape"] for s in shapes if not s["int8"].get("check_passed")]
    geo = math.exp(sum(math.log(r) for r in ratios.values()) / len(ratios))
    measured = f"min {min(ratios.values()):.2f}x, geomean {geo:.2f}x over {len(ratios)} shapes"
    why = f"kernel output wrong (float64 check) at: {', '.join(bad_checks)}" if bad_checks else ""
    return target(name, bar, all(r >= GEMM_BAR for r in ratios.values()) and not bad_checks, measured, why,
                  {k: round(v, 3) for k, v in ratios.items()})


def unet_target(rep: dict) -> dict:
    name, bar = "sd21 UNet end to end vs PyTorch FP16, both with CUDA graphs", f">= {UNET_BAR}x"
    parts = _get(rep, "steps", "end_to_end", "parts") or {}
    key = "unet_cuda_graph"
    tri, fp = _get(parts, "triton", key, "median_s"), _get(parts, "fp16", key, "median_s")
    if tri is None or fp is None:
        key = "unet_eager"  # the dry run has no CUDA graphs: the same code path, eager
        tri, fp = _get(parts, "triton", key, "median_s"), _get(parts, "fp16", key, "median_s")
    if tri is None or fp is None:
        miss = "triton" if tri is None else "fp16"
        return target(name, bar, None, "-", _why_missing(rep, "end_to_end", miss))
    note = "" if key == "unet_cuda_graph" else "eager, no CUDA graphs (dry run)"
    return target(name, bar, fp / tri >= UNET_BAR, f"{fp / tri:.2f}x ({fp * 1e3:.2f} ms FP16 / {tri * 1e3:.2f} ms int8)",
                  note)


def bytes_target(rep: dict, bits: int) -> dict:
    bar_v = INT8_BYTES_BAR if bits == 8 else INT6_BYTES_BAR
    name, bar = f"int{bits} weights in GPU memory vs FP16 (the integer layers)", f"<= {bar_v}x"
    part = "weights" if bits == 8 else "w6a6_weights"
    r = _get(rep, "steps", "end_to_end", "parts", part, f"int{bits}")
    if not r or r.get("ratio") is None:
        return target(name, bar, None, "-", _why_missing(rep, "end_to_end", part))
    return target(name, bar, r["ratio"] <= bar_v,
                  f"{r['ratio']:.4f}x ({r['int_bytes'] / 2**20:.1f} MiB vs {r['fp16_bytes'] / 2**20:.1f} MiB, "
                  f"{r['layers']} layers)")


def _db(v) -> float | None:
    if v is None:
        return None
    return math.inf if v == "inf" else float(v)


def verify_target(rep: dict) -> dict:
    t = _get(rep, "steps", "end_to_end", "parts", "triton") or {}
    bar_v = t.get("verify_bar_db")
    name = "triton runtime vs fake-quant on the GPU (UNet eps and the SR image)"
    bar = f">= {bar_v} dB" if bar_v else ">= 45 dB (40 dB with fp16 float ops)"
    eps, sr = _db(t.get("unet_eps_psnr_vs_fakequant_db")), _db(_get(t, "sr", "psnr_vs_fakequant_db"))
    if eps is None or bar_v is None:
        return target(name, bar, None, "-", _why_missing(rep, "end_to_end", "triton"))
    sr_bar = t.get("sr_bar_db", bar_v)
    if sr_bar != bar_v:
        bar += f" (SR image: {sr_bar} dB, the fake-quant model's own 1e-5 input sensitivity minus 1 dB)"
    measured = f"UNet eps {eps:.2f} dB" + (f", SR image {sr:.2f} dB" if sr is not None else ", SR image not run")
    ok = eps >= bar_v and (sr is None or sr >= sr_bar)
    return target(name, bar, ok, measured,
                  "measured by the check on one latent and one image, not by passion-export --verify")


def targets(rep: dict) -> list[dict]:
    out = []
    for fn, args in ((gemm_target, ()), (unet_target, ()), (bytes_target, (8,)), (bytes_target, (6,)), (verify_target, ())):
        try:
            out.append(fn(rep, *args))
        except Exception as e:  # noqa: BLE001 - a record cut short: said, and the other verdicts still written
            out.append(target(f"{fn.__name__}{args}", "-", None, "-", f"could not be read from the record: "
                              f"{type(e).__name__}: {e}"))
    if rep.get("dry_run"):
        for t in out:
            if t["status"] in ("met", "not met"):
                t["status"] = "not judged (dry run: CPU, interpreter)"
    return out


# -- Markdown ----------------------------------------------------------------------------------

def ms(v) -> str:
    return "-" if v is None else f"{v * 1e3:.3f}"


def mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}"


def num(v, fmt="{:.2f}") -> str:
    return "-" if v is None else (v if isinstance(v, str) else fmt.format(v))


def environment_lines(rep: dict) -> list[str]:
    env = _get(rep, "steps", "environment") or {}
    gpu, v = env.get("gpu") or {}, env.get("versions") or {}
    lines = []
    if gpu:
        smi = gpu.get("nvidia_smi") or {}
        lines.append(f"- GPU: **{gpu.get('name')}**, compute capability {gpu.get('compute_capability')}, "
                     f"{gpu.get('multiprocessors')} SMs, {mib(gpu.get('memory_free_bytes'))} MiB free of "
                     f"{mib(gpu.get('memory_total_bytes'))} MiB; driver {smi.get('driver_version', '?')}, "
                     f"CUDA {gpu.get('cuda_runtime')}, cuDNN {gpu.get('cudnn')}")
        if smi and "error" not in smi:
            lines.append(f"- nvidia-smi at the start: SM clock {smi.get('clocks.sm')} (max {smi.get('clocks.max.sm')}), "
                         f"power {smi.get('power.draw')} of {smi.get('power.limit')}, {smi.get('temperature.gpu')} C, "
                         f"{smi.get('pstate')}")
    else:
        lines.append(f"- no GPU: {env.get('note', 'dry run')}")
    host = env.get("host") or {}
    lines.append(f"- host: {host.get('cpu')}, {host.get('logical_cpus')} logical CPUs, Python {host.get('python')}")
    lines.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    return lines


def status_table(first: str, items: dict, started: bool = False) -> list[str]:
    """One row per step (or end-to-end part): its status, time and why it failed or was skipped."""
    lines = [f"| {first} | status |" + (" started at (s) |" if started else "") + " seconds | note |",
             "|---|---|" + ("---:|" if started else "") + "---:|---|"]
    for name, r in items.items():
        start = f" {r.get('started_at_s', '-')} |" if started else ""
        lines.append(f"| {name} | {r.get('status')} |{start} {r.get('seconds', '-')} | {(r.get('error') or r.get('why') or '')[:200]} |")
    return lines


def step_or_missing(rep: dict, name: str, key: str) -> tuple[dict | None, list[str] | None]:
    """(the step's record, None) when it produced `key`, else (None, the report's "not run" line)."""
    step = _get(rep, "steps", name)
    if step and key in step:
        return step, None
    return None, [f"- not run: {_why_missing(rep, name)}"]


def steps_table(rep: dict) -> list[str]:
    return status_table("step", rep["steps"], started=True)


def tests_lines(rep: dict) -> list[str]:
    t, missing = step_or_missing(rep, "gpu_tests", "counts")
    if missing:
        return missing
    c = t["counts"]
    lines = [f"- `{t['command']}`: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped "
             f"(exit code {t['exit_code']}, {t['wall_s']} s; pytest: {t.get('pytest_summary')})"]
    if t.get("timed_out"):
        lines.append(f"- {t['timed_out']}")
    for f, per in t["per_file"].items():
        lines.append(f"  - {f}: " + ", ".join(f"{n} {k}" for k, n in per.items()))
    lines += [f"  - failing: `{x}`" for x in t["failing"]]
    return lines


def kernels_table(rep: dict) -> list[str]:
    k, missing = step_or_missing(rep, "kernels", "shapes")
    if missing:
        return missing
    lines = [f"FP16 columns: the {k['float_dtype']} baseline. Ratios (x): FP16 time / integer time. {k['method']}", "",
             "| shape | FP16 ms | FP16 TOPS | int8 ms | int8 TOPS | int8 x | int8+quant x | int6 ms | int6 x | "
             "act_quant ms | check rel err (8 / 6) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in k["shapes"]:
        if "error" in s:
            lines.append(f"| {s['shape']} | failed: {s['error'][:150]} |||||||||| ")
            continue
        fp, i8, i6 = s["fp"], s["int8"], s["int6"]
        big = " **(large)**" if s.get("large") else ""
        lines.append(f"| {s['shape']}{big} | {ms(fp['median_s'])} | {num(fp[fp['best']]['tops'])} | "
                     f"{ms(i8['gemm']['median_s'])} | {num(i8['gemm']['tops'])} | {num(i8['speedup_vs_fp'])} | "
                     f"{num(i8['speedup_vs_fp_with_act_quant'])} | {ms(i6['gemm']['median_s'])} | {num(i6['speedup_vs_fp'])} | "
                     f"{ms(s['act_quant']['median_s'])} | {i8['check_rel_err']:.1e} / {i6['check_rel_err']:.1e} |")
    if k.get("skipped"):
        lines.append(f"\nNot run ({k.get('skipped_why')}): {', '.join(k['skipped'])}")
    return lines


def e2e_lines(rep: dict) -> list[str]:
    e, missing = step_or_missing(rep, "end_to_end", "parts")
    if missing:
        return missing
    p = e["parts"]
    lines = [f"{e.get('preset')} {e.get('config')}, latent tile {e.get('latent_tile')}, {e.get('float_dtype')} float ops; "
             f"SR {e.get('sr_lr_px')} px -> {e.get('sr_out_px')} px.", "",
             *status_table("part", p)]
    lines += ["", "| variant | median ms | runs | peak GPU MiB over resident (warm-up / run) | PSNR vs fake-quant dB |",
              "|---|---:|---:|---|---:|"]
    fdt = (e.get("float_dtype") or "float16").replace("float", "FP")
    rows = [(f"PyTorch {fdt}, eager", _get(p, "fp16", "unet_eager"), _get(p, "fp16", "unet_eps_psnr_vs_fakequant_db")),
            (f"PyTorch {fdt}, CUDA graph", _get(p, "fp16", "unet_cuda_graph"), None),
            (f"torch.compile {fdt}", _get(p, "torch_compile", "timing"), None),
            ("triton int8, CUDA graph", _get(p, "triton", "unet_cuda_graph"), _get(p, "triton", "unet_eps_psnr_vs_fakequant_db")),
            ("triton int8, eager", _get(p, "triton", "unet_eager"),
             None if _get(p, "triton", "unet_cuda_graph") else _get(p, "triton", "unet_eps_psnr_vs_fakequant_db"))]
    for label, r, db in rows:
        if r:
            mem = f"{mib(_get(r, 'warmup_memory', 'peak_over_resident_bytes'))} / {mib(_get(r, 'run_memory', 'peak_over_resident_bytes'))}"
            lines.append(f"| UNet: {label} | {ms(r['median_s'])} | {r['runs']} | {mem} | {num(db)} |")
    tc = p.get("torch_compile") or {}
    if tc and tc.get("status") != "ok":
        lines.append(f"| UNet: torch.compile {fdt} | {tc.get('status')}: {(tc.get('why') or tc.get('error') or '')[:150]} | | | |")
    for label, part in ((f"PyTorch {fdt}", "fp16"), ("triton int8", "triton")):
        r = _get(p, part, "sr")
        if r:
            lines.append(f"| SR {e['sr_out_px']} px: {label} | {ms(r['median_s'])} | {r['runs']} | "
                         f"- / {mib(_get(r, 'memory', 'peak_over_resident_bytes'))} | {num(r.get('psnr_vs_fakequant_db'))} |")
    w, w6 = p.get("weights") or {}, p.get("w6a6_weights") or {}
    lines += ["", "| weights | int bytes (MiB) | FP16 bytes (MiB) | ratio |", "|---|---:|---:|---:|"]
    if w.get("int8"):
        lines.append(f"| int8 integer layers ({w['int8']['layers']}) | {mib(w['int8']['int_bytes'])} | "
                     f"{mib(w['int8']['fp16_bytes'])} | {num(w['int8']['ratio'], '{:.4f}')} |")
    if w6.get("int6"):
        lines.append(f"| int6 integer layers ({w6['int6']['layers']}) | {mib(w6['int6']['int_bytes'])} | "
                     f"{mib(w6['int6']['fp16_bytes'])} | {num(w6['int6']['ratio'], '{:.4f}')} |")
    if w.get("unet_total"):
        u = w["unet_total"]
        lines.append(f"| whole UNet on the device (int8 runtime incl. float layers and border maps) | "
                     f"{mib(u['triton_int8_bytes'])} | {mib(u['fp16_bytes'])} | {num(u['ratio'], '{:.4f}')} |")
    return lines


def safe(section, rep: dict) -> list[str]:
    """A section's lines, or one line saying why it could not be written: a record cut short
    (a step that failed half way) must not cost the rest of the report."""
    try:
        return section(rep)
    except Exception as e:  # noqa: BLE001
        return [f"(this section could not be written from the record: {type(e).__name__}: {e}; see the JSON)"]


def markdown(rep: dict) -> str:
    gpu = _get(rep, "steps", "environment", "gpu", "name")
    title = f"# GPU check: {gpu}" if gpu else "# GPU check (no GPU)"
    lines = [title, ""]
    if rep.get("dry_run"):
        lines += ["**Dry run on the CPU: tiny model, kernels in Triton's interpreter, FP32, no CUDA graphs. "
                  "Every timing below is meaningless; the run only proves the check's code paths.**", ""]
    if not rep.get("finished"):
        lines += ["*In progress (written after each step).*", ""]
    if rep.get("watchdog"):
        lines += [f"**{rep['watchdog']}**", ""]
    lines += [f"`{rep['command']}`, started {rep['started']}, {rep.get('wall_s')} s of a {rep['budget_s']:.0f} s budget.", "",
              "## Targets (issue 15)", "", "| target | bar | measured | status |", "|---|---|---|---|"]
    for t in rep.get("targets", []):  # targets() reads defensively: every missing value is "not measured"
        why = f" ({t['why']})" if t.get("why") else ""
        lines.append(f"| {t['target']} | {t['bar']} | {t['measured']}{why} | **{t['status']}** |")
    for title, section in (("Machine", environment_lines), ("Steps", steps_table), ("GPU tests", tests_lines),
                           ("Kernels", kernels_table), ("End to end", e2e_lines)):
        lines += ["", f"## {title}", ""] + safe(section, rep)
    if rep.get("problems"):
        lines += ["", "## What failed", ""] + [f"- {p['where']}: {p['error']}" for p in rep["problems"]]
    return "\n".join(lines) + "\n"


def summary_text(rep: dict) -> str:
    """The few lines printed last (a device call's output tail shows the end of the output)."""
    lines = ["gpu-check summary" + (" (DRY RUN: timings meaningless)" if rep.get("dry_run") else "") + ":"]
    lines += [f"  step {n:11s} {s.get('status'):10s} {s.get('seconds', '-')} s {s.get('error', '')[:120]}"
              for n, s in rep["steps"].items()]
    lines += [f"  target: {t['target']}: {t['measured']} -> {t['status']}" for t in rep.get("targets", [])]
    lines += [f"  problem: {p['where']}: {p['error'][:200]}" for p in rep.get("problems", [])]
    return "\n".join(lines)
