"""passion-export's work: checkpoint -> deploy IR -> target artifacts -> sealed directory."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import onnx
import torch
from tqdm import tqdm

from passion_deploy.io_utils import sha256_file

from . import artifact
from .irfile import save_ir, weight_bytes
from .onnx_lower import lower_graph
from .trace import COMPONENTS, ExportError, trace_component

TARGETS = ("onnx", "triton", "trt")
BUILT_TARGETS = TARGETS
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin for the graph itself
QUANT_PARAM_SUFFIXES = (".x_min", ".x_max", ".let_scale", ".let_offset", ".s_qk", ".s_vw")


def parse_tile(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ExportError(f"--tile {text!r}: expected LATENT_HxW such as 64x64") from None
    if h <= 0 or w <= 0:
        raise ExportError(f"--tile {text!r}: sides must be positive")
    return h, w


def resolve_isa(isa: str) -> str:
    if isa == "auto":
        return "vnni" if artifact.cpu_has_vnni() else "portable"
    if isa not in ("portable", "vnni"):
        raise ExportError(f"--isa {isa!r}: choose auto, portable or vnni")
    return isa


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


def component_modules(pipe, component: str) -> list[torch.nn.Module]:
    vae = pipe.vae
    if component == "unet":
        return [pipe.unet]
    if component == "vae_encoder":
        return [m for m in (vae.encoder, vae.quant_conv) if m is not None]
    return [m for m in (vae.post_quant_conv, vae.decoder) if m is not None]


def fp32_bytes(pipe, component: str) -> int:
    """Bytes of the component's FP32 weights (quantization parameters excluded)."""
    n = 0
    for m in component_modules(pipe, component):
        n += sum(p.numel() for name, p in m.named_parameters() if not name.endswith(QUANT_PARAM_SUFFIXES))
    return 4 * n


def save_onnx(model: onnx.ModelProto, out_dir: Path, stem: str) -> list[str]:
    """Write <stem>.onnx (+ <stem>.onnx.data beyond 2 GB) atomically; returns the file names."""
    big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    name, data = f"{stem}.onnx", f"{stem}.onnx.data"
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=out_dir))
    try:
        if big:
            onnx.save_model(model, str(tmp / name), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp / name))
        files = [data, name] if big else [name]
        for f in files:  # data first: a model file never points at missing weights
            (tmp / f).replace(out_dir / f)
        if not big and (out_dir / data).exists():
            (out_dir / data).unlink()
        return files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fixed_input_shapes(graph, comp: str, tile: tuple[int, int], vae_factor: int) -> dict[str, tuple]:
    """The trt target's fixed shapes: the latent tile for the UNet and decoder, its image for
    the encoder (the VAE graphs were traced on a small image; their ops are size-generic)."""
    shapes = {k: tuple(v) for k, v in graph.inputs.items()}
    main = list(graph.inputs)[0]
    side = tile if comp != "vae_encoder" else (tile[0] * vae_factor, tile[1] * vae_factor)
    shapes[main] = (1, shapes[main][1]) + tuple(side)
    return shapes


def write_qdq_onnx(graph, shapes: dict, out_dir: Path, comp: str) -> tuple[onnx.ModelProto, list[str]]:
    """The trt target's Q/DQ ONNX, refused unless it follows TensorRT's rules and onnx.checker's."""
    from .qdq_lower import lower_graph_qdq
    from .qdq_rules import qdq_violations

    model = lower_graph_qdq(graph, shapes)
    bad = qdq_violations(model)
    if bad:
        raise ExportError(f"{comp}: the Q/DQ graph breaks TensorRT's explicit-quantization rules: {bad[0]}"
                          + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    files = save_onnx(model, out_dir, f"{comp}.qdq")
    onnx.checker.check_model(str(out_dir / f"{comp}.qdq.onnx"))  # by path: works beyond 2 GB
    return model, files


def export_artifact(ckpt: str, out_dir: str | Path, target: str = "onnx", components: tuple[str, ...] = COMPONENTS,
                    tile: tuple[int, int] | None = None, isa: str = "auto", fold: bool = True,
                    progress: bool = True, pipe=None, trt: dict | None = None) -> dict:
    """Export the calibrated checkpoint `ckpt` (path or bundled name) to `out_dir`; returns the manifest.

    Every target writes the deploy IR of each component (`<component>.ir.safetensors`: packed
    weight codes, per-layer integer recipes, the graph). `onnx` lowers it to integer ONNX
    beside it; `triton` needs nothing else: its runtime (triton_runtime.py) builds the kernel
    operands from the IR on load; `trt` writes the explicit-quantization ONNX (qdq_lower.py) at
    the fixed tile and, where TensorRT and a GPU are present, builds the INT8 and FP16 engines
    (trt_build.py; `trt`: {"float_precision", "max_batch", "timing_cache", "build_engines"})."""
    from passion_deploy.checkpoint import load_checkpoint, resolve_checkpoint

    if target not in BUILT_TARGETS:
        raise ExportError(f"target {target!r} is not built yet; use --target {' or '.join(BUILT_TARGETS)}")
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown or not components:
        raise ExportError(f"--components: unknown {unknown[0]!r}; choose from {', '.join(COMPONENTS)}" if unknown
                          else "--components: name at least one component")
    isa = resolve_isa(isa) if target == "onnx" else None  # the ISA choice is the CPU int8 path's
    t0 = time.perf_counter()
    ckpt_path = resolve_checkpoint(ckpt)
    if pipe is None:
        pipe = load_checkpoint(ckpt)
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
    probes = trace_probes(pipe, tile)
    files, comps = [], {}
    trt = dict(trt or {})
    engines, engines_missing = {}, []
    if target == "trt":
        from .trt_build import missing_for_engines

        engines_missing = missing_for_engines() if trt.get("build_engines", True) else []
    bar = tqdm(components, desc="export", unit="component", disable=not progress)
    for comp in bar:
        bar.set_postfix_str(f"{comp}: tracing")
        graph, _ = trace_component(pipe, comp, probes[comp], quantized=True, fold=fold)
        bar.set_postfix_str(f"{comp}: writing IR")
        ir_name = f"{comp}.ir.safetensors"
        save_ir(graph, out_dir / ir_name)
        onnx_files = []
        if target == "onnx":
            bar.set_postfix_str(f"{comp}: lowering to ONNX")
            model = lower_graph(graph, isa)
            onnx_files = save_onnx(model, out_dir, comp)
            del model
        if target == "trt":
            bar.set_postfix_str(f"{comp}: Q/DQ ONNX")
            shapes = fixed_input_shapes(graph, comp, tile, pipe.vae_factor)
            qdq, onnx_files = write_qdq_onnx(graph, shapes, out_dir, comp)
            if trt.get("build_engines", True) and not engines_missing:
                from .trt_build import build_component_engines

                bar.set_postfix_str(f"{comp}: TensorRT engines")
                fp_graph, _ = trace_component(pipe, comp, probes[comp], quantized=False, fold=fold)
                engines[comp] = build_component_engines(out_dir, comp, qdq, lower_graph(fp_graph), shapes,
                                                        trt.get("float_precision", "fp32"), trt.get("max_batch", 1),
                                                        trt.get("timing_cache"), progress)
                onnx_files = onnx_files + [e["engine"] for e in engines[comp].values()]
            del qdq
        files += [ir_name] + onnx_files
        if "context" in graph.inputs and target == "onnx":  # dynamic constants: the runtime feeds t=999 and this context
            from safetensors.numpy import save_file

            from passion_deploy.io_utils import atomic_path

            with atomic_path(out_dir / "context.safetensors") as tmp:
                save_file({"context": pipe.context.numpy().astype("float32")}, str(tmp))
            files.append("context.safetensors")
        wb = weight_bytes(graph)
        comps[comp] = {
            "ir": ir_name,
            "inputs": {k: list(v) for k, v in graph.inputs.items()},
            "outputs": {k: list(v) for k, v in graph.outputs.items()},
            "folded_constants": fold if comp == "unet" else None,
            "quantized_layers": sum(1 for n in graph.nodes if n.op in ("qconv", "qlinear")),
            "quantized_attention": sum(1 for n in graph.nodes if n.op == "qattention"),
            "ir_file_bytes": (out_dir / ir_name).stat().st_size,
            "fp32_weight_bytes": fp32_bytes(pipe, comp),
            **wb,
        }
        if target in ("onnx", "trt"):
            stem = comp if target == "onnx" else f"{comp}.qdq"
            data = f"{stem}.onnx.data"
            comps[comp].update(onnx=f"{stem}.onnx", onnx_data=data if data in onnx_files else None,
                               onnx_bytes=sum((out_dir / f).stat().st_size for f in onnx_files if ".onnx" in f))
        if target == "trt":
            comps[comp]["fixed_input_shapes"] = {k: list(v) for k, v in shapes.items()}
        comps[comp]["ir_vs_fp32"] = round(comps[comp]["ir_file_bytes"] / comps[comp]["fp32_weight_bytes"], 4)
    manifest = {
        "target": target,
        "source_checkpoint": {"name": str(ckpt), "path": str(ckpt_path.resolve()), "sha256": sha256_file(ckpt_path),
                              "preset": pipe.preset, "weights_source": getattr(pipe, "weights_source", "unknown")},
        "quant_config": json.loads(pipe.quant_config.to_json()),
        "quant_config_name": pipe.quant_config.name,
        "pipeline": {"timestep": 999, "scaling_factor": pipe.scaling_factor, "sqrt_alpha": pipe.sqrt_a,
                     "sqrt_one_minus_alpha": pipe.sqrt_1ma, "vae_factor": pipe.vae_factor,
                     "size_multiple": pipe.size_multiple, "latent_tile": list(tile)},
        "components": comps,
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    if target == "onnx":
        manifest["isa"] = isa
    elif target == "trt":
        from .trt_build import tensorrt_info

        manifest["engines"] = engines or None
        manifest["engines_missing"] = engines_missing
        manifest["tensorrt"] = tensorrt_info(trt.get("float_precision", "fp32"), trt.get("max_batch", 1)) if engines else None
    else:  # the runtime's kernel operand encodings (kernels/operands.py); the latent tile is the CUDA-graph shape
        from passion_deploy.kernels.operands import WEIGHT_DTYPE

        manifest["kernels"] = {"activation_operands": "u8", "weight_operands": WEIGHT_DTYPE,
                               "cuda_graph_latent_tile": list(tile)}
    return artifact.write_manifest(out_dir, manifest, files)
