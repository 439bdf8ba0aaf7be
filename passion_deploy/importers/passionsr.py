"""Import a PassionSR model: its ldm config, SD checkpoint, OSEDiff LoRA, context and quantization
checkpoints become the project's fake-quant pipeline, and from there a calibrated checkpoint.

    job = job_from_yaml("infer.yaml")           # or job_from_flags(...)
    result = import_passionsr(job)              # the fake-quant OneStepSR, PassionSR's function
    write_checkpoint(result, "m.safetensors")   # loadable by load_checkpoint, exportable

Steps, each refusing bad input with one sentence that names the file: architecture from the
ldm YAML (ldm_config), FP weights through diffusers' converters, the LoRA merged as PassionSR
merges it (models/loading.merge_osediff_lora), every layer wrapped (quant/wrap), PassionSR's
tensors mapped by the converters' own naming (ldm_names) and checked against the model
(quant_tensors) before anything is loaded.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import CONTEXT_TENSOR, CUSTOM_PRESET, pipeline_from_architecture, save_checkpoint
from ..models import WeightsError, load_context, loading
from ..models.presets import get_preset
from ..quant.wrap import quantize_pipeline
from .errors import ImportRefused
from .inference_yaml import ImportJob
from .ldm_config import LdmArchitecture, matching_preset, read_ldm_config
from .ldm_names import NameMap, name_maps
from .quant_tensors import ComponentImport, apply_quant_tensors, check_eight_bit_layers, latent_tile, read_quant_tensors

LORA_LAYOUTS = {"osediff.ckpt": "PassionSR's layout", "osediff.pkl": "OSEDiff's layout", "safetensors": "peft safetensors"}
DEFAULT_TILE = 64  # PassionSR's tile_config.latent_tiled_size, when nothing in the files ties the tile


@dataclass
class FPModel:
    """The merged FP pipeline and what went into it."""

    pipe: object
    arch: LdmArchitecture
    names: dict[str, NameMap]
    merged: dict = field(default_factory=dict)


@dataclass
class ImportResult:
    pipe: object  # fake-quant OneStepSR with PassionSR's parameters
    summary: dict  # JSON-able; stored in the checkpoint's metadata
    lines: list[str]  # the human summary


def _context(job: ImportJob, context_dim: int) -> torch.Tensor:
    try:
        ctx = load_context(job.context)
    except WeightsError as e:
        raise ImportRefused(str(e)) from None
    if ctx.dim() != 3 or ctx.shape[0] != 1 or ctx.shape[-1] != context_dim:
        if job.context is None:
            raise ImportRefused(f"{job.ldm_config}: the UNet's context_dim is {context_dim}, so the bundled SD2.1 "
                                "context (1024) does not fit; give PassionSR's context_embedding_path (--context)")
        raise ImportRefused(f"{job.context}: the context has shape {tuple(ctx.shape)}, the UNet needs "
                            f"1 x tokens x {context_dim} (the ldm config's context_dim)")
    return ctx


def build_fp_pipeline(job: ImportJob, progress: bool = True) -> FPModel:
    """The FP pipeline PassionSR quantizes: SD weights with the OSEDiff LoRA merged."""
    arch = read_ldm_config(job.ldm_config)
    preset = matching_preset(arch)
    configs = {"unet": get_preset(preset).unet_config(), "vae": get_preset(preset).vae_config()} if preset else \
        {"unet": dict(arch.unet), "vae": dict(arch.vae)}
    configs = json.loads(json.dumps(configs))  # tuples -> lists: the form checkpoint metadata records
    steps = tqdm(total=3, desc="passion-import: FP model", unit="step", disable=not progress, leave=False)
    pipe = pipeline_from_architecture(configs, _context(job, arch.context_dim))
    if preset:  # a named preset needs no recorded architecture
        pipe.preset, pipe.architecture = preset, None
    steps.set_postfix_str(f"reading {job.sd_ckpt.name}")
    steps.update()
    checkpoint = loading.read_single_file(job.sd_ckpt)
    unet_sd, vae_sd = loading.convert_single_file(checkpoint, pipe.unet, pipe.vae, job.sd_ckpt, pipe.preset)
    names = name_maps(checkpoint, pipe.unet.config, pipe.vae.config, job.sd_ckpt)
    del checkpoint
    pipe.unet.load_state_dict(unet_sd)
    pipe.vae.load_state_dict(vae_sd)
    pipe.weights_source = loading.single_file_source(job.sd_ckpt)
    del unet_sd, vae_sd
    steps.update()
    merged = {}
    if job.lora is not None:
        steps.set_postfix_str(f"merging {job.lora.name}")
        m = loading.merge_osediff_lora(pipe.unet, pipe.vae, job.lora)
        pipe.weights_source += loading.lora_source(job.lora)
        merged = dataclasses.asdict(m)
    steps.update()
    steps.close()
    return FPModel(pipe, arch, names, merged)


def _read_part(job: ImportJob, fp: FPModel, comp: str) -> dict[str, torch.Tensor]:
    path = job.quant_ckpt[comp]
    sd = loading.read_torch_file(path)
    module = getattr(fp.pipe, comp)
    cfg = getattr(job.quant, comp)
    check_eight_bit_layers(module, fp.names[comp], comp, cfg.weight_bits, path)
    values = read_quant_tensors(sd, module, fp.names[comp], comp, path)
    if comp == "unet":
        tokens = fp.pipe.context.shape[1]
        for key, v in values.items():
            if key.endswith(".attn2.processor.s_vw") and v.numel() != tokens:
                ldm = fp.names["unet"].to_ldm[key.removesuffix(".processor.s_vw")]
                raise ImportRefused(f"{path}: tensor 'model.model.{ldm}.scale_factor_vw' has {v.numel()} entries but "
                                    f"the context has {tokens} tokens")
    return values


def import_passionsr(job: ImportJob, progress: bool = True) -> ImportResult:
    """The fake-quant pipeline of a PassionSR model (fails before changing anything it returns)."""
    fp = build_fp_pipeline(job, progress)
    pipe = quantize_pipeline(fp.pipe, job.quant)
    parts: dict[str, ComponentImport] = {}
    for comp in tqdm([c for c in ("unet", "vae") if c in job.quant_ckpt], desc="passion-import: quantization",
                     unit="part", disable=not progress, leave=False):
        values = _read_part(job, fp, comp)
        parts[comp] = apply_quant_tensors(getattr(pipe, comp), values, fp.names[comp])
    n_levels = len(pipe.unet.config.block_out_channels)
    tile = latent_tile(parts["unet"].s_vw, n_levels)
    if tile == -1:
        raise ImportRefused(f"{job.quant_ckpt['unet']}: the self-attention scale_factor_vw lengths "
                            f"({sorted(set(parts['unet'].s_vw.values()))}) do not fit one square latent tile")
    pipe.latent_tile = (tile or job.tile_hint or DEFAULT_TILE,) * 2
    summary = _summary(job, fp, pipe, parts)
    return ImportResult(pipe, summary, summary_lines(summary))


def _summary(job: ImportJob, fp: FPModel, pipe, parts: dict[str, ComponentImport]) -> dict:
    comps = {}
    for comp, imp in parts.items():
        cfg = getattr(job.quant, comp)
        comps[comp] = {
            "file": str(job.quant_ckpt[comp]), "bits": cfg.tag, "split": cfg.split, "let_form": cfg.let_form,
            "layers": imp.layers, "attention_blocks": imp.attentions, "norms": imp.norms,
            "norms_differing_from_sd": imp.norms_changed, "eight_bit_layers": imp.eight_bit,
        }
    return {
        "from": "PassionSR", "source": job.source, "ldm_config": str(job.ldm_config), "preset": pipe.preset,
        "sd_checkpoint": str(job.sd_ckpt), "weights_source": pipe.weights_source,
        "lora": None if job.lora is None else {"file": str(job.lora), **fp.merged},
        "context": str(job.context) if job.context else "bundled SD2.1 empty-prompt context",
        "context_shape": list(pipe.context.shape), "latent_tile": list(pipe.latent_tile),
        "parts": comps, "notes": list(job.notes),
    }


def summary_lines(s: dict) -> list[str]:
    lines = [f"PassionSR model from {s['source']}: preset {s['preset']}, latent tile {s['latent_tile'][0]}"]
    for comp, p in s["parts"].items():
        name = "UNet" if comp == "unet" else "VAE"
        eight = ", ".join(p["eight_bit_layers"]) or "none"
        lines.append(f"  {name}: {p['layers']} layers, {p['attention_blocks']} quantized attention blocks, {p['norms']} norms "
                     f"from {Path(p['file']).name}; {p['bits']}{' split' if p['split'] else ''}, 8-bit: {eight}; "
                     f"linear LET form {p['let_form']}")
        if p["norms_differing_from_sd"]:
            lines.append(f"  {name}: {p['norms_differing_from_sd']} norm tensors differ from the SD checkpoint's; "
                         "PassionSR's values are used, as PassionSR loads them")
    lines.append(f"  FP weights: {Path(s['sd_checkpoint']).name}")
    lora = s["lora"]
    if lora:
        per = "; ".join(f"{'UNet' if c == 'unet' else 'VAE'} {n} pairs at rank {lora['ranks'][c]} (scale {lora['scale'][c]:g})"
                        + (f", {lora['replaced'][c]} base tensors replaced" if lora["replaced"][c] else "")
                        for c, n in lora["pairs"].items() if n)
        dropped = f"; {lora['dropped']} VAE decoder-adapter tensors dropped" if lora["dropped"] else ""
        layout = LORA_LAYOUTS.get(lora["file_format"], lora["file_format"])
        lines.append(f"  LoRA merged: {Path(lora['file']).name} ({layout}): {per}{dropped}")
    else:
        lines.append("  LoRA: none")
    lines.append(f"  context: {s['context']} {tuple(s['context_shape'])}")
    lines += [f"  note: {n}" for n in s["notes"]]
    return lines


def write_checkpoint(result: ImportResult, out: str | Path, include_fp_weights: bool = True) -> None:
    """The project's calibrated checkpoint of an imported model, with its context and the summary."""
    save_checkpoint(result.pipe, out, include_fp_weights=include_fp_weights, extra={"import": result.summary},
                    more_tensors={CONTEXT_TENSOR: result.pipe.context.detach().contiguous().cpu()})


__all__ = ["CUSTOM_PRESET", "FPModel", "ImportResult", "build_fp_pipeline", "import_passionsr", "summary_lines",
           "write_checkpoint"]
