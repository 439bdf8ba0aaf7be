"""--verify: run the artifact and the fake-quant reference on the same real-photo probes.

Any artifact: the runtime comes from the manifest's target (targets.open_artifact), and
each runtime supplies the fake-quant reference it is judged against and its per-layer values
(`run_with_layers`). Writes DIR/verify.json with, per component (each fed the reference's own
input, so errors do not compound) and end to end: max_abs_err, psnr_vs_fakequant_db,
psnr_vs_fp_db (plus the reference's own PSNR vs FP for context), and a per-layer table: SQNR
of every quantized layer's output in the artifact vs the fake-quant layer, on the first probe.

PSNR: images are clamped to [0, 1] with peak 1; latents and eps use the reference's range as
peak. `reference_sensitivity_db` is the fake-quant model against itself with its input image
multiplied by (1 + 1e-5 * noise): a change far below 8-bit image precision. One flipped
activation code propagates through every later quantizer, and the latent error is amplified
1/sqrt(alpha_999) ~ 15x into z0, so this is the agreement to expect from any implementation
that does not reproduce PyTorch's float rounding bit for bit.

Pass criterion (`judge`): every component, fed the reference's own input, reaches `min_psnr`;
and end to end reaches `min_psnr`, or, where the reference itself moves further than that under
the 1e-5 input change (a W6A6 model: one flipped 6-bit code costs ~37-39 dB on the tiny model),
comes within SENSITIVITY_MARGIN_DB of the reference's own lowest value. An artifact cannot be
asked to agree with the reference better than the reference agrees with itself.

The same holds inside a component. `reference_rounding_sensitivity_db` is, per component, the
fake-quant component against itself with every quantized conv/linear output multiplied by
(1 + 2^-23 * noise), one float32 rounding step: exactly the freedom any implementation that is
exact to float precision has (a different summation order, one fused multiply-add). A random-
weight miniature model can move to ~39 dB under it (a flipped code deep in the UNet
propagates), though a calibrated real model does not; where a component's lowest value is
below `min_psnr`, that component's bar is it minus SENSITIVITY_MARGIN_DB, and the report says so.
(A change of the component's input does not measure this: its first quantizer absorbs it.) The
whole pipeline under the same noise ("end_to_end") joins the 1e-5 input change in setting the
end-to-end bar.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from passion_deploy.io_utils import atomic_write_text
from passion_deploy.models.components import component as component_of

from .exporter import probe_images
from .fp_model import fp_copy
from .ir.irfile import load_ir
from .layer_capture import capture_layers
from .targets import open_artifact

DEFAULT_MIN_PSNR = 45.0
SENSITIVITY_MARGIN_DB = 1.0


ROUNDING_STEP = 2.0**-23  # float32's relative rounding step


@torch.no_grad()
def rounding_sensitivity(pipe, component: str, out: torch.Tensor, run, seed: int) -> float:
    """PSNR of `run()` (the fake-quant component, or with `component` "end_to_end" the whole
    pipeline) with one rounding step of noise on every quantized conv/linear output, against its
    clean output `out` (module docstring)."""
    from passion_deploy.models.components import COMPONENTS
    from passion_deploy.quant.layers import QuantConv, QuantLinear

    whole = component == "end_to_end"
    names = COMPONENTS if whole else [component]
    roots = {id(r): r for r in (getattr(pipe, component_of(c).root) for c in names)}.values()
    gen = torch.Generator().manual_seed(seed)

    def jitter(mod, inputs, y):
        return y * (1 + ROUNDING_STEP * torch.randn(y.shape, generator=gen).to(y.device, y.dtype))
    hooks = [m.register_forward_hook(jitter) for r in roots for m in r.modules() if isinstance(m, (QuantConv, QuantLinear))]
    try:
        return psnr(run(), out, whole or component_of(component).output_is_image)
    finally:
        for h in hooks:
            h.remove()


def psnr(out: torch.Tensor, ref: torch.Tensor, image: bool) -> float:
    out, ref = out.double(), ref.double()
    if image:
        out, ref = out.clamp(0, 1), ref.clamp(0, 1)
        peak = 1.0
    else:
        peak = float(ref.max() - ref.min())
    mse = float(((out - ref) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(peak**2 / mse)


class Tally:
    """Pooled error statistics of one comparison over all probes."""

    def __init__(self, image: bool):
        self.image = image
        self.pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, art, ref, fp):
        self.pairs.append(tuple(t.detach().float().cpu() for t in (art, ref, fp)))

    def result(self) -> dict:
        art = torch.cat([p[0].flatten() for p in self.pairs])
        ref = torch.cat([p[1].flatten() for p in self.pairs])
        fp = torch.cat([p[2].flatten() for p in self.pairs])
        a, r = (art.clamp(0, 1), ref.clamp(0, 1)) if self.image else (art, ref)
        return {
            "max_abs_err": float((a - r).abs().max()),
            "psnr_vs_fakequant_db": _round(psnr(art, ref, self.image)),
            "psnr_vs_fp_db": _round(psnr(art, fp, self.image)),
            "fakequant_psnr_vs_fp_db": _round(psnr(ref, fp, self.image)),
            "per_probe_psnr_vs_fakequant_db": [_round(psnr(p[0], p[1], self.image)) for p in self.pairs],
        }


def _round(v: float) -> float | str:
    return "inf" if math.isinf(v) else round(v, 2)


def sqnr(out: np.ndarray, ref: np.ndarray) -> float:
    noise = float(((out.astype(np.float64) - ref) ** 2).sum())
    sig = float((ref.astype(np.float64) ** 2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(max(sig, 1e-30) / noise)


def layer_rows(g, nodes: list, outs: dict[str, np.ndarray], refs: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for n in nodes:
        out, ref = outs[n.name], refs[n.name]
        rec = g.recipes[n.attrs["recipe"]]
        bits = f"A{rec.q.bits}" if n.op == "qattention" else f"W{rec.w_bits}A{rec.a_bits or 'fp'}"
        rows.append({"layer": n.name, "op": n.op, "bits": bits, "sqnr_db": _round(sqnr(out, ref)),
                     "max_abs_err": float(np.abs(out - ref).max())})
    return rows


class ComponentCheck:
    """One component of the artifact against the reference on the probes. On the first probe
    (when per-layer tables are asked for) the artifact's run also yields the outputs of every
    quantized layer, which are held against the same layers of the reference."""

    def __init__(self, rt, pipe, component: str, tables: bool):
        self.rt, self.pipe, self.component = rt, pipe, component
        self.tally = Tally(image=component_of(component).output_is_image)
        self.rows = None
        self.nodes = None
        if tables:
            self.g = load_ir(rt.dir / rt.manifest["components"][component]["ir"])
            self.nodes = [n for n in self.g.nodes if n.op in ("qconv", "qlinear", "qattention")]

    def run(self, x: torch.Tensor, ref: torch.Tensor, fp: torch.Tensor, run_ref) -> torch.Tensor:
        if self.nodes is not None and self.rows is None:
            names = [n.name for n in self.nodes]
            out, outs = self.rt.run_with_layers(self.component, x, names)
            self.rows = layer_rows(self.g, self.nodes, outs, capture_layers(self.pipe, self.component, names, run_ref))
        else:
            out = self.rt.run(self.component, x)
        self.tally.add(out, ref, fp)
        return out


@torch.no_grad()
def verify_artifact(model_dir: "str | Path | artifact.Artifact", min_psnr: float = DEFAULT_MIN_PSNR, n_probes: int = 3,
                    progress: bool = True, layer_tables: bool = True, rt=None, device=None) -> tuple[dict, bool]:
    """Verify any artifact (a directory, or an Artifact already loaded: by its manifest's target);
    `rt`: an already opened runtime; `device`: where the fake-quant reference and its FP copy run
    (the artifact runs where its target runs)."""
    rt = rt if rt is not None else open_artifact(model_dir)
    model_dir = rt.dir
    m = rt.manifest
    device = torch.device(device or "cpu")
    pipe = rt.reference_pipeline().to(device)
    fp = fp_copy(pipe)
    th, tw = rt.latent_tile
    probes, desc = probe_images((th * rt.vae_factor, tw * rt.vae_factor), count=n_probes)
    layer_tables = layer_tables and getattr(rt, "layer_tables", True)
    checks = {c: ComponentCheck(rt, pipe, c, layer_tables) for c in m["components"]}
    e2e = Tally(image=True)
    sens, rounding = [], {}
    for x in tqdm(probes, desc="verify", unit="probe", disable=not progress):
        x = x.to(device)
        z = pipe.encode(x)
        eps = pipe.unet_eps(z)
        z0 = pipe.z0_from_eps(z, eps)
        img = pipe.decode(z0)
        # each component on the reference's own input, so errors do not compound
        z_art = checks["vae_encoder"].run(x, z, fp.encode(x), lambda: pipe.encode(x)) if "vae_encoder" in checks else rt.encode(x)
        if "unet" in checks:
            checks["unet"].run(z, eps, fp.unet_eps(z), lambda: pipe.unet_eps(z))
        if "vae_decoder" in checks:
            checks["vae_decoder"].run(z0, img, fp.decode(z0), lambda: pipe.decode(z0))
        # end to end: rt(x) = decode(denoise(encode(x))), the encoder's output reused
        e2e.add(rt.decode(rt.denoise(z_art)), img, fp(x))
        for c, (out, run) in {"vae_encoder": (z, lambda: pipe.encode(x)), "unet": (eps, lambda: pipe.unet_eps(z)),
                              "vae_decoder": (img, lambda: pipe.decode(z0)), "end_to_end": (img, lambda: pipe(x))}.items():
            if c in checks or c == "end_to_end":
                rounding.setdefault(c, []).append(_round(rounding_sensitivity(pipe, c, out, run, len(sens))))
        # the reference's own sensitivity to a 1e-5 relative change of its input
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(len(sens))).to(device)
        sens.append(psnr(pipe(x * (1 + 1e-5 * noise)), img, image=True))
    report = {
        "model_dir": str(model_dir),
        "target": m["target"],
        "runtime": rt.description,
        "source_checkpoint": m["source_checkpoint"],
        "quant_config": m["quant_config_name"],
        "isa": m.get("isa"),
        "reference_device": str(device),
        "probes": desc,
        "latent_tile": list(rt.latent_tile),
        "components": {c: chk.tally.result() for c, chk in checks.items()},
        "end_to_end": e2e.result(),
        "reference_sensitivity_db": {"per_probe": [_round(s) for s in sens],
                                     "note": "fake-quant vs itself with its input multiplied by (1 + 1e-5 * noise)"},
        "reference_rounding_sensitivity_db": {"per_probe": rounding,
                                              "note": "each fake-quant component vs itself with every quantized "
                                                      "conv/linear output multiplied by (1 + 2^-23 * noise)"},
        "min_psnr_db": min_psnr,
    }
    if layer_tables:
        report["layers"] = {c: chk.rows for c, chk in checks.items()}
    report["criterion"] = judge(report, min_psnr)
    ok = report["criterion"]["passed"]
    report["passed"] = ok
    atomic_write_text(model_dir / "verify.json", json.dumps(report, indent=2) + "\n")
    return report, ok


def _at_least(db, bar: float) -> bool:
    return db == "inf" or db >= bar


def _bar(per_probe: list, min_psnr: float) -> float:
    """`min_psnr`, or the reference's own lowest finite value minus the margin when that is lower."""
    finite = [s for s in per_probe if s != "inf"]
    floor = min(finite) if finite else None
    return min_psnr if floor is None or floor >= min_psnr else round(floor - SENSITIVITY_MARGIN_DB, 2)


def judge(report: dict, min_psnr: float) -> dict:
    """The pass criterion of the module docstring, with the bars it used."""
    rounding = report.get("reference_rounding_sensitivity_db", {}).get("per_probe", {})
    e2e_bar = _bar(report["reference_sensitivity_db"]["per_probe"] + rounding.get("end_to_end", []), min_psnr)
    bars = {c: _bar(rounding.get(c, []), min_psnr) for c in report["components"]}
    low = [c for c, r in report["components"].items() if not _at_least(r["psnr_vs_fakequant_db"], bars[c])]
    return {"component_bar_db": min_psnr, "component_bars_db": bars,
            "component_bars_from_reference_sensitivity": sorted(c for c, b in bars.items() if b < min_psnr),
            "components_below_bar": low, "end_to_end_bar_db": e2e_bar,
            "end_to_end_bar_from_reference_sensitivity": e2e_bar < min_psnr,
            "passed": not low and _at_least(report["end_to_end"]["psnr_vs_fakequant_db"], e2e_bar)}


def verdict_line(report: dict) -> str:
    c = report["criterion"]
    e2e = report["end_to_end"]["psnr_vs_fakequant_db"]
    sens = ", ".join(str(v) for v in report["reference_sensitivity_db"]["per_probe"])
    rounding = report.get("reference_rounding_sensitivity_db", {}).get("per_probe", {})
    whole = rounding.get("end_to_end")
    moves = f"{sens} dB when its input changes by 1e-5" + (
        f", and to {', '.join(str(v) for v in whole)} dB under one float32 rounding step of noise on its quantized "
        "layers" if whole else "")
    why = (f"the fake-quant model itself moves to {moves}, so the end-to-end bar is the lowest minus "
           f"{SENSITIVITY_MARGIN_DB:g} dB" if c["end_to_end_bar_from_reference_sensitivity"]
           else f"fake-quant vs itself: {moves}")
    bars = c.get("component_bars_db", {})
    lowered = c.get("component_bars_from_reference_sensitivity", [])
    if c["components_below_bar"]:
        below = [f"{n} (bar {bars.get(n, c['component_bar_db'])} dB)" for n in c["components_below_bar"]]
        comps = "components below their bar: " + ", ".join(below)
    else:
        comps = f"every component >= {c['component_bar_db']} dB"
        if lowered:
            comps += " or its own rounding level (" + ", ".join(f"{n} {bars[n]} dB" for n in lowered) + ")"
    if lowered:
        why += "; " + "; ".join(f"the fake-quant {n} moves to {', '.join(str(v) for v in rounding[n])} dB under one float32 "
                                f"rounding step of noise on its quantized layers, so its bar is the lowest minus "
                                f"{SENSITIVITY_MARGIN_DB:g} dB" for n in lowered)
    return (f"  end-to-end {e2e} dB vs fake-quant, bar {c['end_to_end_bar_db']} dB; {comps}: "
            f"{'PASS' if c['passed'] else 'FAIL'} ({why})")


def summary_lines(report: dict) -> list[str]:
    lines = []
    for c, r in list(report["components"].items()) + [("end-to-end", report["end_to_end"])]:
        lines.append(f"  {c:12s} {r['psnr_vs_fakequant_db']:>7} dB vs fake-quant   {r['psnr_vs_fp_db']:>6} dB vs FP "
                     f"(fake-quant itself {r['fakequant_psnr_vs_fp_db']} dB vs FP)   max abs err {r['max_abs_err']:.3g}")
    if "layers" in report:
        worst = sorted((row["sqnr_db"] if row["sqnr_db"] != "inf" else 1e9, c, row["layer"])
                       for c, rows in report["layers"].items() for row in rows)[:1]
        n = sum(len(rows) for rows in report["layers"].values())
        if worst:
            lines.append(f"  {n} quantized layers compared; lowest SQNR {worst[0][0]:.1f} dB at {worst[0][1]}:{worst[0][2]}")
    return lines
