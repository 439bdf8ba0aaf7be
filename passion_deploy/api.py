"""The Python API: load, import, quantize, export and open, the work the CLIs shell over.

    pipe = passion_deploy.load("tiny-w8a8")                         # a calibrated fake-quant pipeline
    art = passion_deploy.export_model(pipe, "onnx", "build/tiny")   # an Artifact (checked, sealed)
    sr = passion_deploy.open("build/tiny").upscale(image)           # PIL image or uint8 array -> PIL image

Calibration follows ModelOpt's shape: `quantize(pipe, config, forward_loop)` quantizes a float
pipeline and runs the caller's loop (or `images=`) through it to set every quantizer; export is
a separate, explicit step. Every refusal is a PassionError naming the file and the problem.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch

from .errors import PassionError

if TYPE_CHECKING:
    from PIL import Image

    from .export.artifact import Artifact
    from .models.pipeline import OneStepSR


def load(ckpt: str | os.PathLike, weights: str | os.PathLike | None = None, lora: str | os.PathLike | None = None,
         device: str = "cpu") -> "OneStepSR":
    """The fake-quant pipeline of a calibrated checkpoint (a .safetensors path or a bundled name:
    tiny-w8a8, tiny-w6a6), on `device` (auto, cpu, cuda, cuda:N). A checkpoint saved without FP
    weights is built on `weights` (+ `lora`), the ones it was calibrated on."""
    from .checkpoint import load_checkpoint
    from .devices import resolve_device

    return load_checkpoint(ckpt, weights=weights, lora=lora).to(resolve_device(device))


def import_passionsr(config, out: str | os.PathLike | None = None, include_fp_weights: bool = True,
                     progress: bool = False):
    """PassionSR's released model as this project's fake-quant pipeline: `config` is its inference
    YAML (naming the SD checkpoint, the OSEDiff LoRA and the quantization .pth) or an
    importers.ImportJob (importers.job_from_flags: the files named one by one). Written to `out`
    (.safetensors) when given. Returns the ImportResult: `.pipe`, `.summary`, `.lines`."""
    from .importers import ImportJob, ImportRefused, import_passionsr as run_import, job_from_yaml, write_checkpoint

    if out is not None and Path(out).suffix != ".safetensors":
        raise ImportRefused(f"{out}: the checkpoint is a .safetensors file", out)
    result = run_import(config if isinstance(config, ImportJob) else job_from_yaml(config), progress=progress)
    if out is not None:
        write_checkpoint(result, Path(out), include_fp_weights=include_fp_weights)
    return result


def quantize(pipe, config: str = "w8a8", forward_loop: Callable | None = None,
              images: Iterable[torch.Tensor] | None = None, progress: bool = False):
    """Quantize the float pipeline `pipe` with `config` (w8a8, w6a6, w8a8-unet, w6a6-unet or a
    config file) and set every quantizer from calibration data: `forward_loop(model)` runs the
    caller's data through the model (ModelOpt's way), or `images` are LR-upscaled batches
    (B x 3 x H x W in [0, 1], one size: the UNet is calibrated at that tile). This is the
    statistics pass; passion-calibrate runs PassionSR's full DQC from its YAML."""
    from .calibrate.stats import statistics_pass
    from .config import resolve_quant_config
    from .quant import quantize_pipeline

    if (forward_loop is None) == (images is None):
        raise PassionError("quantize: give forward_loop or images (one of them)")
    q = quantize_pipeline(pipe, resolve_quant_config(config))
    if images is not None:
        statistics_pass(q, images, progress=progress)
    else:
        batches = []
        forward_loop(_Recorder(batches))  # the loop's inputs, then the two-sweep pass over them
        statistics_pass(q, batches, progress=progress)
    return q


class _Recorder:
    """What forward_loop sees as the model: it keeps each batch the loop feeds it (the statistics
    pass sweeps the data twice, so the inputs are gathered first) and returns nothing."""

    def __init__(self, batches: list):
        self.batches = batches

    def __call__(self, lr_up: torch.Tensor):
        self.batches.append(lr_up.detach())


def export_model(pipe_or_ckpt, target: str, out: str | os.PathLike, options=None, components: tuple[str, ...] | None = None,
                 tile: tuple[int, int] | None = None, verify: bool = False, progress: bool = False,
                 dynamic_constants: bool = False, weights: str | os.PathLike | None = None,
                 lora: str | os.PathLike | None = None) -> "Artifact":
    """Compile a calibrated pipeline (or a checkpoint path / bundled name) into `out` for `target`
    (onnx, openvino, trt, triton: export.targets.target_names()); `options` is the target's
    options dataclass (target_options(target)) or a dict of its fields. Returns the sealed
    Artifact; verify=True also judges it against the fake-quant model (Artifact.verification:
    verify_artifact's report). `dynamic_constants` keeps t and the
    context as graph inputs; `weights` / `lora`: the FP weights of a checkpoint saved without them."""
    from .export.artifact import load as load_artifact
    from .export.exporter import export_artifact
    from .models.components import COMPONENTS

    if isinstance(pipe_or_ckpt, (str, os.PathLike)):
        ckpt, pipe = str(pipe_or_ckpt), None
    else:
        pipe = pipe_or_ckpt
        if getattr(pipe, "checkpoint_path", None) is None:
            raise PassionError("export_model: the pipeline has no checkpoint file; save it first "
                               "(checkpoint.save_checkpoint) and pass it or its path: the artifact records its source")
        ckpt = str(pipe.checkpoint_path)
    export_artifact(ckpt, out, target, COMPONENTS if components is None else tuple(components), tile, fold=not dynamic_constants,
                    progress=progress, pipe=pipe, weights=weights, lora=lora, options=options if options is not None else {})
    art = load_artifact(out)
    if verify:
        art.verification = verify_artifact(art, progress=progress)
    return art


def verify_artifact(art, min_psnr: float = 45.0, probes: int = 3, progress: bool = False, device: str = "auto") -> dict:
    """The artifact (a directory or an Artifact) against the fake-quant model it came from: the
    report passion-export --verify writes to DIR/verify.json; "passed" says whether every
    component and the end-to-end output meet the bar."""
    from .devices import resolve_device
    from .export.verify import verify_artifact as run_verify

    report, _ = run_verify(art, min_psnr, probes, progress, device=resolve_device(device))
    return report


def target_options(target: str):
    """The options dataclass of a target (its fields are passion-export's flags)."""
    from .export.targets import get_target

    return get_target(target).options


@dataclass
class Upscaler:
    """An opened artifact: `upscale` takes a PIL image or an H x W x 3 uint8 array and returns the
    4x image (PIL); calling it on a 1 x 3 x H x W tensor in [0, 1] (the LR upscaled to the
    model's size) returns the model's output tensor, untiled."""

    runtime: object
    color_fix: str = "adain"

    def upscale(self, image) -> "Image.Image":
        from PIL import Image

        from .images import to_uint8
        from .runner import SRModel, super_resolve

        lr = _as_tensor(image)
        rt = self.runtime
        sr = super_resolve(SRModel(rt, rt.backend, rt.latent_tile, rt.description), lr, color_fix=self.color_fix)
        return Image.fromarray(to_uint8(sr), "RGB")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runtime(x)

    @property
    def artifact(self) -> "Artifact":
        return self.runtime.artifact


def _as_tensor(image) -> torch.Tensor:
    """A PIL image (any mode) or an H x W x 3 uint8 array as a 3 x H x W float tensor in [0, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise PassionError(f"upscale: expected a PIL image or an H x W x 3 uint8 array, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float() / 255.0


def open(artifact_dir: "str | os.PathLike | Artifact", device: str = "auto", color_fix: str = "adain") -> Upscaler:  # noqa: A001
    """An exported artifact as an Upscaler. The target decides where it runs (ONNX Runtime and
    OpenVINO on the CPU, TensorRT and the Triton kernels on a GPU where there is one); an explicit
    `device` of cuda[:N] is refused in one sentence where this machine or the target has no GPU."""
    from .devices import resolve_device
    from .export.targets import load as load_target

    art, tgt = load_target(artifact_dir)
    asked = resolve_device(device)  # an unknown device or a missing GPU is refused here
    if device != "auto" and asked.type == "cuda" and not tgt.serve_spec(art).gpu:
        raise PassionError(f"{art.dir}: a {tgt.name} artifact runs on the CPU; open it with device='cpu' or 'auto'", art.dir)
    return Upscaler(tgt.open(art), color_fix)
