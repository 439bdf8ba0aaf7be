"""Held-out fidelity of a fake-quant pipeline and the calibration report (JSON + Markdown)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..images import psnr, read_image
from ..io_utils import atomic_write_text
from .data import bundled_photos, center_square, pair_from_hr


def heldout_inputs(size_px: int, device: str = "cpu") -> tuple[list[str], list[torch.Tensor]]:
    """Four tile-sized inputs per bundled photo (quadrants of its centre square at 2x the tile)."""
    names, xs = [], []
    for p in bundled_photos():
        sq = center_square(read_image(p), 2 * size_px)
        for qy in (0, size_px):
            for qx in (0, size_px):
                xs.append(pair_from_hr(sq[:, qy:qy + size_px, qx:qx + size_px])[0][None].to(device))
        names.append(p.stem)
    return names, xs


def make_heldout_eval(fp, size_px: int, device: str = "cpu"):
    """A function q -> {"psnr_vs_fp_db", "per_image"} comparing q's output with fp's on held-out photos."""
    names, xs = heldout_inputs(size_px, device)
    if not xs:
        return None
    with torch.no_grad():
        refs = [fp(x).clamp(0, 1) for x in xs]

    def evaluate(q) -> dict:
        per = []
        with torch.no_grad():
            for x, ref in zip(xs, refs):
                per.append(psnr(q(x).clamp(0, 1), ref))
        per_image = {n: sum(per[4 * i:4 * i + 4]) / 4 for i, n in enumerate(names)}
        return {"psnr_vs_fp_db": round(sum(per) / len(per), 3), "per_image": {k: round(v, 3) for k, v in per_image.items()}}

    evaluate.images = names
    return evaluate


def build_report(job, state: dict, eval_fn, final_eval: dict | None) -> dict:
    return {
        "config": {"file": str(job.source), "preset": job.preset, "weights": job.weights, "quant": job.quant.to_dict(),
                   "process_size": job.process_size, "device": job.device, "plan": repr(job.plan)},
        "statistics_seconds": state.get("stats_seconds"),
        "stages": state["stages"],
        "heldout": {
            "images": list(getattr(eval_fn, "images", [])),
            "init": state.get("init_eval"),
            "calibrated": final_eval,
        },
    }


def markdown_summary(report: dict) -> str:
    lines = ["| stage | params | epochs | loss first | loss last | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for s in report["stages"]:
        lines.append(f"| {s['name']} | {s['params']} | {s['epochs']} | {s['loss_first']:.4g} | {s['loss_last']:.4g} | {s['seconds']:.0f} |")
    h = report["heldout"]
    if h["init"] and h["calibrated"]:
        a, b = h["init"]["psnr_vs_fp_db"], h["calibrated"]["psnr_vs_fp_db"]
        lines.append("")
        lines.append(f"Held-out PSNR vs FP ({', '.join(h['images'])}): statistics init {a:.2f} dB -> calibrated {b:.2f} dB ({b - a:+.2f} dB)")
    return "\n".join(lines)


def write_report(path: Path, report: dict) -> None:
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
