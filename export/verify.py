"""--verify: run the artifact and the fake-quant reference on the same real-photo probes.

Any artifact: the runtime comes from the manifest's target (targets.open_artifact), and each
runtime supplies the fake-quant reference it is judged against and its layers (`run_layers`).

The gate is per layer (export/layer_gate.py): every quantized conv, linear and attention core of
the artifact, cut from the artifact's own graph or module, is fed the fake-quant model's own
input to that layer on every probe and must be within float precision of the fake-quant layer's
output, except elements explained by activation codes at a rounding boundary, which are counted
(`boundary_codes`, `boundary_elements`) and allowed up to a small share. This does not depend on
how chaotic the model is: on a random-weight miniature one flipped code moves a component by
tens of dB while every layer is exact, so the end-to-end dB is a symptom, the per-layer match
the fact. TensorRT engines, whose layers live inside fused kernels, are judged by their
components only, and the report says so (`layers_note`, COMPONENTS_ONLY_BAR_DB).

Reported beside the gate: per component (each fed the reference's own input, so errors do not
compound) and end to end, max_abs_err, psnr_vs_fakequant_db, psnr_vs_fp_db (plus the
reference's own PSNR vs FP); these fail only below a loose floor (`min_psnr`, DEFAULT_MIN_PSNR)
that catches gross errors. PSNR: images are clamped to [0, 1] with peak 1; latents and eps use
the reference's range as peak. And the model's own noise sensitivity, for context:
`reference_sensitivity_db`, the fake-quant model against itself with its input multiplied by
(1 + 1e-5 * noise), and `reference_rounding_sensitivity_db`, each fake-quant component against
itself with every quantized conv/linear output multiplied by (1 + 2^-23 * noise), one float32
rounding step (a flipped code deep in the model propagates; a calibrated real model barely
moves, a random-weight miniature moves to ~35 dB). In the components-only judgement these set
the bars: a component's bar is COMPONENTS_ONLY_BAR_DB or its own lowest rounding value minus
SENSITIVITY_MARGIN_DB where that is lower, end to end likewise with the 1e-5 input change.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from passion_deploy.io_utils import atomic_write_text
from passion_deploy.metrics import db_value as _round
from passion_deploy.metrics import output_psnr as psnr
from passion_deploy.models.components import component as component_of

from .exporter import probe_images
from .fp_model import fp_copy
from .ir.irfile import load_ir
from .layer_capture import capture_layer_io
from .targets import open_artifact

DEFAULT_MIN_PSNR = 20.0  # the loose floor: a gross error (a wrong component, a broken graph), not fidelity
# engines whose layers cannot be run one by one are judged by their components, at this bar (or
# the fake-quant component's own rounding level minus the margin, where that is lower)
COMPONENTS_ONLY_BAR_DB = 45.0
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


def sqnr(out: np.ndarray, ref: np.ndarray) -> float:
    noise = float(((out.astype(np.float64) - ref) ** 2).sum())
    sig = float((ref.astype(np.float64) ** 2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(max(sig, 1e-30) / noise)


class ComponentCheck:
    """One component of the artifact against the reference on the probes: its output (pooled
    dB), and, where the runtime can cut its layers (`run_layers`), the per-layer gate
    (export/layer_gate.py): every quantized layer of the artifact fed the fake-quant layer's own
    input on every probe, against the fake-quant layer's output. Each probe's layers are judged as
    soon as they are captured and only their counts are kept: the inputs and outputs of every
    layer of an sd21 VAE at 512 px alone fill gigabytes, and three components' of them did not fit
    a 24 GiB machine (measured: killed for memory)."""

    def __init__(self, rt, pipe, component: str, tables: bool, progress: bool = False):
        self.rt, self.pipe, self.component, self.progress = rt, pipe, component, progress
        self.tally = Tally(image=component_of(component).output_is_image)
        self.nodes = None
        self.counts: dict[str, dict] = {}
        if tables:
            self.g = load_ir(rt.dir / rt.manifest["components"][component]["ir"])
            self.nodes = [n for n in self.g.nodes if n.op in ("qconv", "qlinear", "qattention")]

    def capture(self, run_ref):
        """`run_ref()` (the fake-quant component), its quantized layers judged on the inputs and
        outputs it gave them."""
        if self.nodes is None:
            return run_ref()
        res = []
        got = capture_layer_io(self.pipe, self.component, [n.name for n in self.nodes], lambda: res.append(run_ref()))
        self._judge(got)
        return res[0]

    def _judge(self, io: dict) -> None:
        """Each layer of the artifact on the fake-quant layer's own input of one probe, its counts
        pooled into self.counts (layer_gate)."""
        from . import layer_gate as lg

        root = getattr(self.pipe, component_of(self.component).root)
        # one layer at a time, its capture dropped once judged (the sd21 UNet's 258 take most of an hour)
        for n in tqdm(self.nodes, desc=f"gate: {self.component}", unit="layer", leave=False, disable=not self.progress):
            mod = root.get_submodule(n.name)
            ins, ref = io.pop(n.name)
            (out,) = self.rt.run_layers(self.component, {n.name: [[t.float().cpu().numpy() for t in ins]]})[n.name]
            out = lg.as_tensor(out).to(ref.dtype).reshape(ref.shape)
            ins, ref = [t.cpu() for t in ins], ref.cpu()
            st = (lg.judge_attention(mod, mod.processor, *ins, ref, out) if n.op == "qattention"
                  else lg.judge_quant_layer(mod, ins[0], ref, out))
            self.counts[n.name] = lg.merge(self.counts.get(n.name), st)

    def run(self, x: torch.Tensor, ref: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
        out = self.rt.run(self.component, x)
        self.tally.add(out, ref, fp)
        return out

    def layer_table(self) -> list[dict] | None:
        """The gate's rows, one per quantized layer, pooled over the probes (layer_gate)."""
        if self.nodes is None:
            return None
        from . import layer_gate as lg

        rows = []
        for n in self.nodes:
            rec = self.g.recipes[n.attrs["recipe"]]
            bits = f"A{rec.q.bits}" if n.op == "qattention" else f"W{rec.w_bits}A{rec.a_bits or 'fp'}"
            rows.append({"layer": n.name, "op": n.op, "bits": bits, **lg.finish(self.counts[n.name])})
        return rows


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
    checks = {c: ComponentCheck(rt, pipe, c, layer_tables, progress) for c in m["components"]}
    e2e = Tally(image=True)
    sens, rounding = [], {}
    for x in tqdm(probes, desc="verify", unit="probe", disable=not progress):
        x = x.to(device)

        def reference(c, run):  # the reference's run, its layers' inputs and outputs kept for the gate
            return checks[c].capture(run) if c in checks else run()
        z = reference("vae_encoder", lambda: pipe.encode(x))
        eps = reference("unet", lambda: pipe.unet_eps(z))
        z0 = pipe.z0_from_eps(z, eps)
        img = reference("vae_decoder", lambda: pipe.decode(z0))
        # each component on the reference's own input, so errors do not compound
        z_art = checks["vae_encoder"].run(x, z, fp.encode(x)) if "vae_encoder" in checks else rt.encode(x)
        if "unet" in checks:
            checks["unet"].run(z, eps, fp.unet_eps(z))
        if "vae_decoder" in checks:
            checks["vae_decoder"].run(z0, img, fp.decode(z0))
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
        report["layers"] = {c: chk.layer_table() for c, chk in checks.items()}
    else:
        report["layers_note"] = (f"{rt.description}: its layers live inside fused engines and cannot be run one by one, "
                                 "so this artifact is judged by its components only (each fed the reference's own input)")
    report["criterion"] = judge(report, min_psnr)
    ok = report["criterion"]["passed"]
    report["passed"] = ok
    atomic_write_text(model_dir / "verify.json", json.dumps(report, indent=2) + "\n")
    return report, ok


@torch.no_grad()
def verify_layers(model_dir: str | Path, components: list[str] | None = None, n_probes: int = 1, rt=None) -> dict[str, list[dict]]:
    """The per-layer gate alone (no component or end-to-end runs): {component: rows}, each row
    with "passed" (export/layer_gate.py). For tests and quick checks of one component."""
    rt = rt if rt is not None else open_artifact(Path(model_dir))
    pipe = rt.reference_pipeline()
    th, tw = rt.latent_tile
    probes, _ = probe_images((th * rt.vae_factor, tw * rt.vae_factor), count=n_probes)
    comps = components or list(rt.manifest["components"])
    checks = {c: ComponentCheck(rt, pipe, c, True) for c in comps}
    for x in probes:
        z = pipe.encode(x)
        z0 = pipe.z0_from_eps(z, pipe.unet_eps(z))
        runs = {"vae_encoder": lambda: pipe.encode(x), "unet": lambda: pipe.unet_eps(z), "vae_decoder": lambda: pipe.decode(z0)}
        for c, chk in checks.items():
            chk.capture(runs[c])
    return {c: chk.layer_table() for c, chk in checks.items()}


def _at_least(db, bar: float) -> bool:
    return db == "inf" or db >= bar


def _bar(per_probe: list, min_psnr: float) -> float:
    """`min_psnr`, or the reference's own lowest finite value minus the margin when that is lower."""
    finite = [s for s in per_probe if s != "inf"]
    floor = min(finite) if finite else None
    return min_psnr if floor is None or floor >= min_psnr else round(floor - SENSITIVITY_MARGIN_DB, 2)


def judge(report: dict, min_psnr: float) -> dict:
    """The pass criterion (module docstring), with what it used. With layer tables: every layer
    passes the per-layer gate, and every component and the pipeline stay above the loose floor
    `min_psnr`. Without (engines whose layers cannot be cut): the components alone, each at
    `min_psnr` or its own rounding level minus the margin, end to end likewise."""
    rounding = report.get("reference_rounding_sensitivity_db", {}).get("per_probe", {})
    layers = report.get("layers")
    e2e = report["end_to_end"]["psnr_vs_fakequant_db"]
    e2e_sens = report["reference_sensitivity_db"]["per_probe"] + rounding.get("end_to_end", [])
    if layers is not None:
        rows = [(c, r) for c, rs in layers.items() for r in (rs or [])]
        failed = [f"{c}:{r['layer']}" for c, r in rows if not r["passed"]]
        # the floor, or below it the fake-quant model's own noise level minus the margin: a chaotic
        # model (a random-weight miniature moves to ~13 dB end to end under a 1e-5 input change)
        floors = {c: _bar(rounding.get(c, []), min_psnr) for c in report["components"]}
        low = [c for c, r in report["components"].items() if not _at_least(r["psnr_vs_fakequant_db"], floors[c])]
        e2e_floor = _bar(e2e_sens, min_psnr)
        return {"gate": "layers", "layers_checked": len(rows), "layers_failed": failed,
                "boundary_codes": sum(r["boundary_codes"] for _, r in rows),
                "boundary_elements": sum(r["boundary_elements"] for _, r in rows),
                "floor_db": min_psnr, "component_floors_db": floors, "components_below_floor": low,
                "end_to_end_bar_db": e2e_floor, "passed": not failed and not low and _at_least(e2e, e2e_floor)}
    min_psnr = max(min_psnr, COMPONENTS_ONLY_BAR_DB)
    e2e_bar = _bar(e2e_sens, min_psnr)
    bars = {c: _bar(rounding.get(c, []), min_psnr) for c in report["components"]}
    low = [c for c, r in report["components"].items() if not _at_least(r["psnr_vs_fakequant_db"], bars[c])]
    return {"gate": "components", "component_bar_db": min_psnr, "component_bars_db": bars,
            "component_bars_from_reference_sensitivity": sorted(c for c, b in bars.items() if b < min_psnr),
            "components_below_bar": low, "end_to_end_bar_db": e2e_bar,
            "end_to_end_bar_from_reference_sensitivity": e2e_bar < min_psnr,
            "passed": not low and _at_least(e2e, e2e_bar)}


def verdict_line(report: dict) -> str:
    c = report["criterion"]
    if c.get("gate") == "layers":
        e2e = report["end_to_end"]["psnr_vs_fakequant_db"]
        n, failed = c["layers_checked"], c["layers_failed"]
        layers = (f"{len(failed)} of {n} quantized layers fail (" + ", ".join(failed[:8]) + (", ..." if len(failed) > 8 else "") + ")"
                  if failed else f"all {n} quantized layers within float precision of the fake-quant layer"
                  + (f" but for {c['boundary_elements']} elements from {c['boundary_codes']} activation codes at a rounding "
                     "boundary" if c["boundary_codes"] else ""))
        floors = c.get("component_floors_db", {})
        floor = ("components below their floor: " + ", ".join(f"{n} (floor {floors.get(n, c['floor_db'])} dB)"
                                                               for n in c["components_below_floor"])
                 if c["components_below_floor"] else
                 f"components and end to end ({e2e} dB) above the {c['floor_db']} dB floor"
                 + ("" if c["end_to_end_bar_db"] >= c["floor_db"] else
                    f" or the fake-quant model's own noise level minus {SENSITIVITY_MARGIN_DB:g} dB (end to end {c['end_to_end_bar_db']} dB)"))
        if not c["components_below_floor"] and not _at_least(e2e, c["end_to_end_bar_db"]):
            floor = f"end to end {e2e} dB is below its floor {c['end_to_end_bar_db']} dB"
        return f"  per-layer gate: {layers}; {floor}: {'PASS' if c['passed'] else 'FAIL'}"
    return _components_verdict(report)


def _components_verdict(report: dict) -> str:
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
    note = "components only (the engines' layers cannot be run one by one); " if "layers_note" in report else ""
    return (f"  {note}end-to-end {e2e} dB vs fake-quant, bar {c['end_to_end_bar_db']} dB; {comps}: "
            f"{'PASS' if c['passed'] else 'FAIL'} ({why})")


def summary_lines(report: dict) -> list[str]:
    lines = []
    for c, r in list(report["components"].items()) + [("end-to-end", report["end_to_end"])]:
        lines.append(f"  {c:12s} {r['psnr_vs_fakequant_db']:>7} dB vs fake-quant   {r['psnr_vs_fp_db']:>6} dB vs FP "
                     f"(fake-quant itself {r['fakequant_psnr_vs_fp_db']} dB vs FP)   max abs err {r['max_abs_err']:.3g}")
    for c, rows in (report.get("layers") or {}).items():
        rows = rows or []
        ok = sum(r["passed"] for r in rows)
        worst = max(rows, key=lambda r: r["max_rel_err"], default=None)
        line = (f"  {c:12s} layers: {ok}/{len(rows)} pass, {sum(r['boundary_codes'] for r in rows)} boundary codes "
                f"({sum(r['boundary_elements'] for r in rows)} elements)")
        if worst is not None:
            line += f", largest error {worst['max_rel_err']:.2g} of the output range at {worst['layer']}"
        lines.append(line)
    if "layers_note" in report:
        lines.append("  " + report["layers_note"])
    return lines
