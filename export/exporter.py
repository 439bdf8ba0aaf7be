"""passion-export's work: checkpoint -> deploy IR -> target files -> sealed directory.

The exporter owns what every target shares: resolving the checkpoint and the tile, tracing
each component to the deploy IR (`<component>.ir.safetensors`, written for every target),
the stored context of a graph that keeps it as an input, the per-component sizes, and the
manifest. What a target adds (lowered models, engines, its manifest fields) comes from its
`Target` (targets/__init__.py: its `lower` and `manifest_fields`); nothing here branches on
the target's name.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from passion_deploy.models.components import COMPONENTS, component

from . import artifact
from .ir.irfile import save_ir, weight_bytes
from .ir.trace import ExportError, trace_component
from .runtime import pipeline_constants
from .targets import Target, get_target

SOURCE_COPY = "source.safetensors"
QUANT_PARAM_SUFFIXES = (".x_min", ".x_max", ".let_scale", ".let_offset", ".s_qk", ".s_vw")


def parse_tile(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ExportError(f"--tile {text!r}: expected LATENT_HxW such as 64x64") from None
    if h <= 0 or w <= 0:
        raise ExportError(f"--tile {text!r}: sides must be positive")
    return h, w


def probe_images(hw: tuple[int, int], count: int = 3, seed: int = 0) -> tuple[list[torch.Tensor], str]:
    """Real-photo probes (bundled photos, centre squares, LR made the pipeline's way) for square
    sizes; smooth random images when no photos are bundled or the size is not square."""
    from passion_deploy.calibrate.data import bundled_photos, photo_batches

    photos = bundled_photos()[:count]
    if photos and hw[0] == hw[1]:
        return photo_batches(photos, hw[0]), "photos: " + ", ".join(p.stem for p in photos)
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(count, 3, max(hw[0] // 8, 2), max(hw[1] // 8, 2), generator=g)
    imgs = torch.nn.functional.interpolate(lo, size=hw, mode="bicubic", align_corners=False).clamp(0, 1)
    why = "no photos bundled" if not photos else "non-square size"
    return [imgs[i:i + 1] for i in range(count)], f"{count} smooth random images ({why})"


def trace_probes(pipe, tile: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Inputs to trace each component on. Tracing only needs the right shapes (recipes come
    from the calibrated parameters, folded constants from t and the context), so the VAE
    graphs, which accept any size, are traced on a small image and the UNet on a random
    latent of its tile."""
    g = torch.Generator().manual_seed(0)
    small = 2 * pipe.size_multiple
    return {"unet": torch.randn(1, 4, *tile, generator=g),
            "vae_encoder": probe_images((small, small), count=1)[0][0],
            "vae_decoder": torch.randn(1, 4, small // pipe.vae_factor, small // pipe.vae_factor, generator=g)}


def fp32_bytes(pipe, name: str) -> int:
    """Bytes of the component's FP32 weights (quantization parameters excluded)."""
    n = 0
    for m in component(name).modules(pipe):
        n += sum(p.numel() for pname, p in m.named_parameters() if not pname.endswith(QUANT_PARAM_SUFFIXES))
    return 4 * n


@dataclass
class ExportJob:
    """What a target sees of one export: the pipeline, where to write, the tile, its options."""

    pipe: object
    out_dir: Path
    tile: tuple[int, int]
    fold: bool
    progress: bool
    options: dict
    probes: dict = field(default_factory=dict)
    status: object = None  # status(text): shown beside the progress bar
    state: dict = field(default_factory=dict)  # what a target gathers across components for its manifest fields

    def trace(self, name: str, quantized: bool = True):
        """The IR graph of component `name` (quantized, or the same graph with FP weights)."""
        graph, _ = trace_component(self.pipe, name, self.probes[name], quantized=quantized, fold=self.fold)
        return graph

    def fixed_input_shapes(self, graph, name: str) -> dict[str, tuple]:
        """The graph's input shapes with its main input at the tile (the component table's
        fixed-tile rule; the VAE graphs were traced on a small image, their ops are size-generic)."""
        shapes = {k: tuple(v) for k, v in graph.inputs.items()}
        main = component(name).input
        shapes[main] = component(name).input_shape(self.tile, self.pipe.vae_factor, latent_channels=shapes[main][1])
        return shapes


def _check_components(components) -> None:
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown or not components:
        raise ExportError(f"--components: unknown {unknown[0]!r}; choose from {', '.join(COMPONENTS)}" if unknown
                          else "--components: name at least one component")


def _write_context(job: ExportJob) -> str:
    """A graph exported with --dynamic-constants takes the context as an input: store it once."""
    from safetensors.numpy import save_file

    from passion_deploy.io_utils import atomic_path

    with atomic_path(job.out_dir / "context.safetensors") as tmp:
        save_file({"context": job.pipe.context.numpy().astype("float32")}, str(tmp))
    return "context.safetensors"


def _write_source_copy(job: ExportJob) -> str:
    """The fake-quant pipeline the artifact needs at run time (the float modules around a triton
    artifact's kernels, the components an artifact does not contain), FP weights included: the
    folder then runs anywhere, without the checkpoint or the weights it was exported from."""
    from passion_deploy.checkpoint import CONTEXT_TENSOR, save_checkpoint

    job.status("copying the source pipeline")
    # the context goes with it: an imported ("custom") pipeline's is not the bundled one, and its
    # checkpoint is refused without it
    save_checkpoint(job.pipe, job.out_dir / SOURCE_COPY, include_fp_weights=True,
                    more_tensors={CONTEXT_TENSOR: job.pipe.context.detach().contiguous().cpu()})
    return SOURCE_COPY


def component_record(job: ExportJob, name: str, graph, ir_name: str) -> dict:
    """The manifest entry every target shares: inputs/outputs, layer counts, sizes."""
    rec = {
        "ir": ir_name,
        "inputs": {k: list(v) for k, v in graph.inputs.items()},
        "outputs": {k: list(v) for k, v in graph.outputs.items()},
        "folded_constants": job.fold if name == "unet" else None,
        "quantized_layers": sum(1 for n in graph.nodes if n.op in ("qconv", "qlinear")),
        "quantized_attention": sum(1 for n in graph.nodes if n.op == "qattention"),
        "ir_file_bytes": (job.out_dir / ir_name).stat().st_size,
        "fp32_weight_bytes": fp32_bytes(job.pipe, name),
        **weight_bytes(graph),
    }
    rec["ir_vs_fp32"] = round(rec["ir_file_bytes"] / rec["fp32_weight_bytes"], 4)
    return rec


def export_artifact(ckpt: str, out_dir: str | Path, target: str | Target = "onnx", components: tuple[str, ...] = COMPONENTS,
                    tile: tuple[int, int] | None = None, fold: bool = True, progress: bool = True, pipe=None,
                    weights: str | Path | None = None, lora: str | Path | None = None, options=None, **option_kwargs) -> dict:
    """Export the calibrated checkpoint `ckpt` (path or bundled name) to `out_dir`; returns the manifest.

    Every target gets the deploy IR of each component; the target then writes its own files
    from it (targets/<name>/). `options` is the target's options dataclass (Target.options) or a
    dict of its fields; the fields may also come as keywords, e.g. isa="portable" for onnx,
    build_engines=False for trt. `weights` / `lora`: the FP weights a
    checkpoint saved without them was calibrated on (checked against what it records)."""
    from passion_deploy.checkpoint import load_checkpoint, resolve_checkpoint

    tgt = get_target(target) if isinstance(target, str) else target
    _check_components(components)
    opts = tgt.resolve_options(options if options is not None else option_kwargs)
    t0 = time.perf_counter()
    ckpt_path = resolve_checkpoint(ckpt)
    if pipe is None:
        pipe = load_checkpoint(ckpt, weights=weights, lora=lora)
    calibrated = tuple(pipe.latent_tile)
    tile = tuple(tile) if tile else calibrated
    if "unet" in components and tile != calibrated:
        raise ExportError(f"{ckpt_path}: the UNet was calibrated at {calibrated[0]}x{calibrated[1]} latent tiles "
                          f"(its attention scale s_vw has one entry per token), so it cannot be exported at "
                          f"{tile[0]}x{tile[1]}; omit --tile or export only the VAE components")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / artifact.MANIFEST
    if stale.exists():
        stale.unlink()  # the directory is unsealed until the new manifest is written
    job = ExportJob(pipe, out_dir, tile, fold, progress, opts, trace_probes(pipe, tile))
    files, comps = [], {}
    bar = tqdm(components, desc="export", unit="component", disable=not progress)
    for name in bar:
        job.status = lambda text, name=name: bar.set_postfix_str(f"{name}: {text}")
        job.status("tracing")
        graph = job.trace(name)
        job.status("writing IR")
        ir_name = f"{name}.ir.safetensors"
        save_ir(graph, out_dir / ir_name)
        written, fields = tgt.lower(job, name, graph)
        files += [ir_name] + written
        if "context" in graph.inputs:
            files.append(_write_context(job))
        comps[name] = {**component_record(job, name, graph, ir_name), **fields}
        del graph
    source = {"name": str(ckpt), "path": str(ckpt_path.resolve()), "sha256": artifact.file_sha256(ckpt_path),
              "preset": pipe.preset, "weights_source": getattr(pipe, "weights_source", "unknown"),
              # where the FP weights came from on this machine: the reference and the fallback load them again
              "weights": str(Path(weights).resolve()) if weights else None, "lora": str(Path(lora).resolve()) if lora else None}
    if tgt.runs_source_pipeline or set(components) != set(COMPONENTS):
        job.status = lambda text: bar.set_postfix_str(text)
        files.append(_write_source_copy(job))
        source["copy"] = SOURCE_COPY
    manifest = {
        "target": tgt.name,
        "source_checkpoint": source,
        "quant_config": json.loads(pipe.quant_config.to_json()),
        "quant_config_name": pipe.quant_config.name,
        "pipeline": {**pipeline_constants(pipe), "latent_tile": list(tile)},
        "components": comps,
        "export_seconds": round(time.perf_counter() - t0, 1),
        **tgt.manifest_fields(job),
    }
    return artifact.write_manifest(out_dir, manifest, files)
