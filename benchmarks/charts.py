"""PNG charts of a benchmark record (benchmarks/harness.py) and of an artifact's verify.json.

matplotlib is optional (`pip install passion-deploy[report]`): it is imported when a chart is
drawn, never at import time, and only its Agg canvas is used (no pyplot, no display, no global
state). Each chart function returns the matplotlib Figure it drew, so callers and tests can look
at what is on it; `save_png` writes one atomically.

- latency_figure:     one panel per component, a bar per variant at the median of its samples,
                      whiskers from the sample minimum to the maximum, each bar labelled with its
                      ratio to the artifact's median
- memory_figure:      a column per component: weight bytes per variant on top; below, groups of
                      bars per memory quantity the record has (a fresh process's peak RSS over
                      its baseline, the in-process RSS increase, GPU memory, any other `*_bytes`
                      field of a variant), a bar per variant that has it
- layer_error_figure: SQNR of every quantized layer (artifact vs fake-quant, verify.json's
                      "layers" table) along the depth of the pipeline, a line per component in
                      pipeline order (encoder, UNet, decoder)
"""
from __future__ import annotations

import math
import os

from passion_deploy.measure import summary

from .labels import label

# in pipeline order; any other component follows in the record's order
PIPELINE_ORDER = ("vae_encoder", "unet", "vae_decoder")

WEIGHTS = ("weight_bytes", "weights (files loaded; PyTorch: float params in memory)")
# (record key, label); a key "a.b" reads rec[a][b]; "peak_over_baseline" is computed
MEMORY_FIELDS = (
    ("peak_over_baseline", "peak RSS over baseline, own process"),
    ("load_and_warmup_rss_increase_bytes", "load + warm-up RSS increase, in-process"),
    ("warmup_peak_gpu_bytes_over_resident", "GPU memory: warm-up peak over resident"),
)
# byte counts of a variant that are not memory quantities of that variant: its files, and the
# in-process peak RSS of the whole benchmark process (shared by every variant)
NOT_MEMORY = ("peak_rss_bytes",)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike) -> None:
    """Write the figure as PNG, atomically (readers never see half a file)."""
    from passion_deploy.io_utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def ordered_components(names) -> list[str]:
    names = list(names)
    return [c for c in PIPELINE_ORDER if c in names] + [c for c in names if c not in PIPELINE_ORDER]


def variant_order(rec: dict) -> list[str]:
    """Every variant of the record, the artifact's first, then in order of first appearance."""
    seen = []
    art = rec.get("artifact_variant", "int_onnx")
    for c in rec["components"].values():
        for v in c["variants"]:
            if v not in seen:
                seen.append(v)
    return ([art] if art in seen else []) + [v for v in seen if v != art]


def colors_for(variants: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(variants)}


def latency_stats(r: dict) -> tuple[float, float, float] | None:
    """(median, min, max) in seconds: from the samples when present, else the stored fields."""
    if r.get("samples_s"):
        t = summary(r["samples_s"])
        return t["median_s"], t["min_s"], t["max_s"]
    if "median_s" in r:
        return r["median_s"], r.get("min_s", r["median_s"]), r.get("max_s", r["median_s"])
    return None


def _time_unit(seconds: float) -> tuple[str, float]:
    return ("s", 1.0) if seconds >= 2.0 else ("ms", 1e3)


def latency_figure(rec: dict):
    comps = ordered_components(rec["components"])
    variants = variant_order(rec)
    colors = colors_for(variants)
    art = rec.get("artifact_variant", "int_onnx")
    fig = _figure(max(4.2 * len(comps), 6.0), 5.0)
    axes = fig.subplots(1, len(comps), squeeze=False)[0]
    for ax, comp in zip(axes, comps):
        vs = {v: latency_stats(r) for v, r in rec["components"][comp]["variants"].items()}
        vs = {v: s for v, s in vs.items() if s is not None}
        present = [v for v in variants if v in vs]
        unit, k = _time_unit(max((s[2] for s in vs.values()), default=0.0))
        med = [vs[v][0] * k for v in present]
        lo = [(vs[v][0] - vs[v][1]) * k for v in present]
        hi = [(vs[v][2] - vs[v][0]) * k for v in present]
        bars = ax.bar(range(len(present)), med, color=[colors[v] for v in present], yerr=[lo, hi],
                      capsize=5, error_kw={"elinewidth": 1.2, "ecolor": "black"})
        ref = vs[art][0] if art in vs else None
        for b, v in zip(bars, present):
            b.set_gid(f"{comp}/{v}")
            if ref:
                ax.annotate(f"{vs[v][0] / ref:.2f}x", (b.get_x() + b.get_width() / 2, vs[v][2] * k),
                            xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
        shape = "x".join(str(d) for d in next(iter(rec["components"][comp].get("input", {"": []}).values()), []))
        ax.set_title(f"{comp}" + (f" ({shape})" if shape else ""), fontsize=10)
        ax.set_ylabel(f"latency, {unit} (median; whiskers min-max)", fontsize=8)
        ax.set_xticks(range(len(present)), present, fontsize=8, rotation=20, ha="right")
        ax.set_ylim(0, max((vs[v][2] * k for v in present), default=1.0) * 1.18 or 1.0)
        ax.grid(axis="y", alpha=0.3)
    handles = [_patch(colors[v]) for v in variants]
    fig.legend(handles, [label(v) for v in variants], loc="lower center", ncol=min(len(variants), 3),
               fontsize=8, frameon=False)
    fig.suptitle(f"{_title(rec)}: latency per component\n"
                 "labels: median / artifact median (below 1: faster than the artifact)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.93))
    return fig


def _patch(color):
    from matplotlib.patches import Patch

    return Patch(facecolor=color)


def _title(rec: dict) -> str:
    return f"{rec.get('quant_config', '?')} {rec.get('target', '')}".strip()


def memory_value(r: dict, key: str):
    if key == "weight_bytes":
        v = r.get("weight_bytes_on_disk", r.get("weight_bytes_in_memory"))
    elif key == "peak_over_baseline":  # a fresh process's peak over its RSS with onnxruntime imported
        sub = r.get("subprocess_memory") if isinstance(r.get("subprocess_memory"), dict) else {}
        peak, base = sub.get("peak_rss_bytes"), sub.get("baseline_rss_bytes")
        v = peak - base if isinstance(peak, (int, float)) and isinstance(base, (int, float)) else None
    else:
        v = r
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def memory_fields(rec: dict) -> list[tuple[str, str]]:
    """The memory quantities (weights aside) present for at least one variant of the record: the
    known ones, then any other `*_bytes` number of a variant (a GPU memory field of a new
    backend, say), labelled by its key."""
    rs = [r for c in rec["components"].values() for r in c["variants"].values()]
    known = [(k, lab) for k, lab in MEMORY_FIELDS if any(memory_value(r, k) is not None for r in rs)]
    extra = []
    for r in rs:
        for k, v in r.items():
            if (k.endswith("_bytes") and not k.startswith(("weight_", "ir_")) and k not in NOT_MEMORY
                    and k not in dict(MEMORY_FIELDS) and k not in dict(extra) and memory_value(r, k) is not None):
                extra.append((k, k))
    return known + extra


def memory_figure(rec: dict):
    """Top row: weight bytes per variant (labelled in MB). Bottom row, when the record has any:
    each memory quantity as a group with a bar per variant that has it."""
    comps = ordered_components(rec["components"])
    variants = variant_order(rec)
    colors = colors_for(variants)
    fields = memory_fields(rec)
    rows = 2 if fields else 1
    fig = _figure(max(4.2 * len(comps), 6.0), 3.3 * rows + 1.0)
    axes = fig.subplots(rows, len(comps), squeeze=False)
    width = 0.8 / max(len(variants), 1)
    for col, comp in enumerate(comps):
        cv = rec["components"][comp]["variants"]
        ax = axes[0][col]
        wv = [(v, memory_value(cv[v], WEIGHTS[0])) for v in variants if v in cv]
        wv = [(v, w) for v, w in wv if w is not None]
        bars = ax.bar(range(len(wv)), [w / 1e6 for _, w in wv], color=[colors[v] for v, _ in wv])
        for b, (v, w) in zip(bars, wv):
            b.set_gid(f"{comp}/{v}/{WEIGHTS[0]}")
            ax.annotate(_mb_text(w), (b.get_x() + b.get_width() / 2, w / 1e6), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(wv)), [v for v, _ in wv], fontsize=8, rotation=20, ha="right")
        ax.set_ylim(0, max((w for _, w in wv), default=0) / 1e6 * 1.18 or 1.0)
        ax.set_ylabel("weights, MB", fontsize=8)
        ax.set_title(comp, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if rows == 1:
            continue
        ax = axes[1][col]
        top = 0.0
        for j, v in enumerate(variants):
            if v not in cv:
                continue
            xs, ys, keys = [], [], []
            for i, (key, _) in enumerate(fields):
                val = memory_value(cv[v], key)
                if val is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(val / 1e6)
                    keys.append(key)
            if xs:
                for b, key in zip(ax.bar(xs, ys, width=width, color=colors[v]), keys):
                    b.set_gid(f"{comp}/{v}/{key}")
                top = max(top, max(ys))
        ax.set_xticks(range(len(fields)), [_wrap(lab, 24) for _, lab in fields], fontsize=7)
        ax.set_ylabel("memory, MB", fontsize=8)
        ax.set_ylim(min(0.0, *(b.get_height() for b in ax.patches)) * 1.1, top * 1.1 or 1.0)
        ax.grid(axis="y", alpha=0.3)
    fig.legend([_patch(colors[v]) for v in variants], [label(v) for v in variants], loc="lower center",
               ncol=min(len(variants), 3), fontsize=8, frameon=False)
    fig.suptitle(f"{_title(rec)}: weight bytes and memory per variant", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    return fig


def _mb_text(n: float) -> str:
    mb = n / 1e6
    return f"{mb:,.0f}" if mb >= 100 else f"{mb:.1f}" if mb >= 10 else f"{mb:.2f}"


def _wrap(text: str, width: int = 18) -> str:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "\n".join(lines + [cur])


def layer_series(verify: dict) -> dict[str, tuple[list[int], list[float], list[str]]]:
    """Per component in pipeline order: (x positions along the pipeline's depth, SQNR dB, layer
    names); components follow each other on one axis (the encoder's layers first). verify.json
    writes an exact layer's SQNR as "inf", which float() reads."""
    out, start = {}, 0
    layers = verify.get("layers") or {}
    for comp in ordered_components(layers):
        rows = layers[comp]
        if not rows:
            continue
        out[comp] = (list(range(start, start + len(rows))), [float(r["sqnr_db"]) for r in rows],
                     [r.get("layer", str(i)) for i, r in enumerate(rows)])
        start += len(rows)
    return out


def layer_error_figure(verify: dict):
    from matplotlib import colormaps

    series = layer_series(verify)
    if not series:
        raise ValueError("verify.json has no per-layer table (run passion-export --verify with layer tables)")
    fig = _figure(10.0, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["tab10"]
    finite = [y for _, ys, _ in series.values() for y in ys if math.isfinite(y)]
    cap = (max(finite) if finite else 100.0) + 10.0
    for i, (comp, (xs, ys, names)) in enumerate(series.items()):
        col = cmap((i + 3) % 10)
        fin = [(y, x, n) for x, y, n in zip(xs, ys, names) if math.isfinite(y)]
        low = f", lowest {min(fin)[0]:.1f} dB" if fin else ""
        ax.plot(xs, [y if math.isfinite(y) else math.nan for y in ys], marker="o", markersize=2.5, linewidth=1.2,
                color=col, label=f"{comp}: {len(xs)} layers{low}", gid=comp)
        inf_x = [x for x, y in zip(xs, ys) if not math.isfinite(y)]
        if inf_x:
            ax.scatter(inf_x, [cap] * len(inf_x), marker="^", color=col, s=18, zorder=3)
        if fin:  # the component's weakest layer: a ring around its point
            y, x, _ = min(fin)
            ax.scatter([x], [y], s=70, facecolors="none", edgecolors=col, linewidths=1.3, zorder=3)
        if xs[0] > 0:
            ax.axvline(xs[0] - 0.5, color="grey", linewidth=0.6, linestyle="--")
    lo = min(finite) if finite else 0.0
    ax.set_ylim(max(lo - 10.0, 0.0) if lo > 0 else lo - 10.0, cap + 6.0)
    if any(not math.isfinite(y) for _, ys, _ in series.values() for y in ys):
        ax.text(0.99, 0.98, "▲ exact layer (SQNR inf)", transform=ax.transAxes, ha="right", va="top", fontsize=7)
    ax.set_xlabel("quantized layer, in pipeline order (encoder -> UNet -> decoder); ring: lowest layer", fontsize=8)
    ax.set_ylabel("SQNR vs fake-quant, dB", fontsize=8)
    ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=min(len(series), 3), fontsize=8, frameon=False)
    fig.suptitle(f"{verify.get('quant_config', '')} {verify.get('target', '')}: per-layer SQNR, artifact vs "
                 "fake-quant".strip(), fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return fig
