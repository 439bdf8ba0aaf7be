"""The Python API: load, import, quantize, export and open, the work the CLIs shell over.

    pipe = passion_deploy.load("tiny-w8a8")                         # a calibrated fake-quant pipeline
    art = passion_deploy.export_model(pipe, "onnx", "build/tiny")   # an Artifact (checked, sealed)
    sr = passion_deploy.open("build/tiny").upscale(image)           # PIL image or uint8 array -> PIL image

Calibration follows ModelOpt's shape: `quantize(pipe, config, forward_loop)` quantizes a float
pipeline and runs the caller's loop (or `images=`) through it to set every quantizer; export is
a separate, explicit step. Every refusal is a PassionError naming the file and the problem.

The commands are shells over these functions: passion-sr, passion-serve and passion-batch run an
Upscaler from `open` (an artifact), `upscaler` (a PyTorch pipeline, as --backend names it) or
`passionsr_upscaler` (PassionSR's model, imported), and compare it with its `fp32_reference`;
passion-bench's record is `benchmark`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch

from .errors import PassionError
from .runner import BACKENDS, Tiling

__all__ = ["ABLATION", "BACKENDS", "Calibration", "CalibrationResult", "Tiling", "Upscaler", "benchmark", "calibration", "export_model", "import_passionsr", "is_checkpoint", "load",
           "open", "passionsr_parameters", "passionsr_upscaler", "quantize", "target_options", "upscaler",
           "verification_lines", "verify_artifact"]

if TYPE_CHECKING:
    from PIL import Image

    from .export.artifact import Artifact
    from .models.pipeline import OneStepSR
    from .runner import SRModel


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


ABLATION = (  # (name, use LET layers, train LET, train LBQ): the rows of PassionSR's ablation table
    ("MinMax", False, False, False),
    ("LET only", True, True, False),
    ("LBQ only", False, False, True),
    ("PassionSR (LET + LBQ)", True, True, True),
)


def calibration(config: str | os.PathLike, out: str | os.PathLike | None = None, preset: str | None = None,
                weights: str | os.PathLike | None = None, lora: str | os.PathLike | None = None,
                random_weights: int | None = None, device: str | None = None, stats_only: bool = False) -> "Calibration":
    """PassionSR's full DQC as passion-calibrate runs it, from a PassionSR PTQ YAML `config`: the
    job read, the output checked, the float pipeline built and the calibration pairs loaded, ready
    to `run`. `out`: the checkpoint (default: quantize_config.output_modelpath/<config name>.safetensors);
    `preset`, `weights`, `lora`, `random_weights`, `device` replace the YAML's; `stats_only` keeps
    the statistics pass and skips the training stages. (`quantize` is the statistics pass alone,
    on any data.) A YAML whose blocks name quant_ckpt is PassionSR's calibrated model: import_passionsr."""
    from .calibrate.data import load_calibration_pairs
    from .calibrate.job import load_job
    from .io_utils import writable_file
    from .models import build_pipeline

    try:
        job = load_job(config, preset, None if weights is None else str(weights), device, random_weights,
                       None if lora is None else str(lora))
        dev = str(_device(job.device))  # the YAML's device unless `device` replaces it; auto: the GPU where there is one
        if out is None and job.output is None:
            raise PassionError(f"{job.source}: give --out or quantize_config.output_modelpath", job.source)
        target = Path(out) if out is not None else job.output / f"{job.quant.name}.safetensors"
        target = writable_file(target, "--out")  # refused now, not after the calibration
        fp = build_pipeline(job.preset, job.weights, job.lora, job.random_weights, job.context).to(dev)
        pairs = [(lr.to(dev), hr.to(dev), n) for lr, hr, n in load_calibration_pairs(job.cali_img_path, job.process_size)]
    except PassionError:
        raise
    except ValueError as e:  # the job's plain ValueErrors (a tile the model cannot take, ...) are refusals too
        raise PassionError(str(e)) from None
    return Calibration(job, fp, pairs, dev, target, stats_only)


class Calibration:
    """A DQC calibration ready to run (made by `calibration`): `job` (the YAML read: .quant, .preset,
    .process_size, .plan), `fp` (the float pipeline on `device`), `pairs` (the LR/HR calibration pairs),
    `out` (the checkpoint it writes). `run` calibrates and writes the checkpoint and its report;
    `ablation_variant` calibrates one row of PassionSR's ablation (ABLATION) and `write_ablation` writes them."""

    def __init__(self, job, fp, pairs: list, device: str, out: Path, stats_only: bool = False):
        self.job, self.fp, self.pairs, self.device, self.out, self.stats_only = job, fp, pairs, device, out, stats_only
        self.report: dict | None = None  # the last run's report (the ablation names its config and held-out images)
        self._eval = None

    @property
    def heldout_eval(self):
        """PSNR vs the float model on held-out photos, built once: the run and every ablation row share it."""
        if self._eval is None:
            from .calibrate.report import make_heldout_eval

            self._eval = make_heldout_eval(self.fp, self.job.process_size, self.device)
        return self._eval

    def _calibrate(self, job, plan, out: Path | None, progress: bool):
        """Quantize a copy of the float pipeline with job.quant and run DQC with `plan`: (q, state, final eval)."""
        from .calibrate.dqc import DQC
        from .quant import quantize_pipeline

        q = quantize_pipeline(copy.deepcopy(self.fp), job.quant)
        desc = {**job.describe(), "plan": repr(plan)}
        try:
            state = DQC(self.fp, q, self.pairs, plan, out, desc, progress=progress, eval_fn=self.heldout_eval).run()
            return q, state, self.heldout_eval(q)
        except ValueError as e:  # the calibration's plain ValueErrors (no batch, sizes that differ) are refusals too
            raise PassionError(str(e)) from None

    def run(self, progress: bool = True) -> "CalibrationResult":
        """DQC with the job's plan (the statistics pass alone with stats_only): writes the checkpoint
        at `out` and its report beside it (CKPT.report.json), and removes the resume file."""
        from .calibrate.report import build_report, write_report
        from .checkpoint import save_checkpoint

        plan = self.job.plan
        if self.stats_only:
            plan = dataclasses.replace(plan, train_let=False, train_lbq=False)
        q, state, final = self._calibrate(self.job, plan, self.out, progress)
        self.report = build_report(self.job, state, self.heldout_eval, final)
        stem = str(self.out).removesuffix(".safetensors")
        report_path = Path(stem + ".report.json")
        save_checkpoint(q.to("cpu"), self.out, extra={"report": report_path.name})
        write_report(report_path, self.report)
        Path(stem + ".partial.safetensors").unlink(missing_ok=True)
        return CalibrationResult(q, self.out, self.report, report_path)

    def ablation_variant(self, name: str, progress: bool = True) -> dict:
        """One ABLATION row calibrated from scratch (nothing written): its held-out PSNR before and
        after, and its seconds."""
        rows = {row[0]: row[1:] for row in ABLATION}
        if name not in rows:
            raise PassionError(f"ablation: no variant {name!r} (choose {', '.join(rows)})")
        use_let, train_let, train_lbq = rows[name]
        quant = self.job.quant
        quant = dataclasses.replace(quant, unet=dataclasses.replace(quant.unet, let=use_let) if quant.unet else None,
                                    vae=dataclasses.replace(quant.vae, let=use_let) if quant.vae else None)
        plan = dataclasses.replace(self.job.plan, train_let=train_let, train_lbq=train_lbq)
        _, state, final = self._calibrate(dataclasses.replace(self.job, quant=quant), plan, None, progress)
        seconds = sum(s["seconds"] for s in state["stages"]) + (state.get("stats_seconds") or 0)
        return {"variant": name, "init": state.get("init_eval"), "calibrated": final, "seconds": round(seconds, 1)}

    def write_ablation(self, rows: list[dict]) -> tuple[dict, Path]:
        """The ablation record of `rows` (after `run`: it names the run's config and held-out images),
        written beside the checkpoint as CKPT.ablation.json: (record, path)."""
        from .io_utils import atomic_write_text

        if self.report is None:
            raise PassionError(f"{self.out}: run the calibration before its ablation", self.out)
        ablation = {"config": self.report["config"], "heldout_images": self.report["heldout"]["images"], "variants": rows}
        path = Path(str(self.out).removesuffix(".safetensors") + ".ablation.json")
        atomic_write_text(path, json.dumps(ablation, indent=2) + "\n")
        return ablation, path


class CalibrationResult:
    """What Calibration.run made: `pipe` (the calibrated fake-quant pipeline, on the CPU as saved),
    `checkpoint`, `report` (what `report_path` holds) and `summary` (the report as a Markdown table)."""

    def __init__(self, pipe, checkpoint: Path, report: dict, report_path: Path):
        self.pipe, self.checkpoint, self.report, self.report_path = pipe, checkpoint, report, report_path

    @property
    def summary(self) -> str:
        from .calibrate.report import markdown_summary

        return markdown_summary(self.report)


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


def verify_artifact(art: "str | os.PathLike | Artifact", min_psnr: float | None = None, probes: int = 3,
                    progress: bool = False, device: "str | torch.device" = "auto") -> dict:
    """The artifact (a directory or an Artifact) against the fake-quant model it came from: the
    report passion-export --verify writes to DIR/verify.json; "passed" says whether every
    component and the end-to-end output meet the bar. The bar is the per-layer gate plus a loose
    floor `min_psnr` (dB vs fake-quant, for gross errors; None: passion-export's default, 20 dB);
    `device` is where the fake-quant reference runs (the artifact runs where its target runs)."""
    from .export.verify import DEFAULT_MIN_PSNR, verify_artifact as run_verify

    report, _ = run_verify(art, DEFAULT_MIN_PSNR if min_psnr is None else min_psnr, probes, progress, device=_device(device))
    return report


def verification_lines(report: dict) -> list[str]:
    """A verify_artifact report as passion-export --verify prints it: one line per component and
    end to end (PSNR vs fake-quant and vs FP), one per component's layer gate, then the verdict."""
    from .export.verify import summary_lines, verdict_line

    return [*summary_lines(report), verdict_line(report)]


def benchmark(artifact_dir: "str | os.PathLike | Artifact", components: list[str] | None = None, runs: int = 5, warmup: int = 1,
              vae_px: int | None = None, threads: int | None = None, torch_baseline: bool = True,
              baselines: list[str] | None = None, timing_only_isa: bool = False, memory: bool = True,
              fidelity: bool = True, sr_px: int | None = None, vs: str | os.PathLike | None = None,
              calib_dir: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
              lora: str | os.PathLike | None = None, device: "str | torch.device | None" = None,
              progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Latency, memory and fidelity of an artifact (a directory or an Artifact) against its float
    baselines, per component, as passion-bench measures them (benchmarks/harness.py): the record
    passion-bench --json writes; `log` gets each line the harness says (a component's result line
    starts with two spaces).
    `baselines`: a subset of the float baselines its runtime names (default: all; `torch_baseline`
    False drops the PyTorch one); `fidelity`: each variant's output on a real photo in dB vs FP32;
    `sr_px`: full SR to that output size as one more row; `vs`: another target's artifact of the
    same checkpoint timed alongside; `device`: where the PyTorch baseline runs (default: where the
    artifact runs); `weights` / `lora`: the FP weights of a source checkpoint saved without them."""
    from .benchmarks.harness import run_benchmark

    return run_benchmark(artifact_dir, components, runs, warmup, vae_px, threads, torch_eager=torch_baseline,
                         progress=progress, log=log, timing_only_isa=timing_only_isa, memory=memory, weights=weights,
                         lora=lora, device=None if device is None else _device(device), vs=vs, fidelity=fidelity,
                         sr_px=sr_px, calib_dir=calib_dir, baselines=baselines)


def target_options(target: str):
    """The options dataclass of a target (its fields are passion-export's flags)."""
    from .export.targets import get_target

    return get_target(target).options


class Upscaler:
    """An SR model ready to run: an opened artifact (`open`) or a PyTorch pipeline (`upscaler`,
    `passionsr_upscaler`). `upscale` takes a PIL image or an H x W x 3 uint8 array and returns the
    4x image (PIL); `upscale_tensor` takes a 3 x h x w tensor in [0, 1] and the tiling, as passion-sr
    runs it; calling it on a 1 x 3 x H x W tensor in [0, 1] (the LR upscaled to the model's size)
    returns the model's output tensor, untiled. `label` names it in a table or a picture."""

    def __init__(self, runtime, color_fix: str = "adain", label: str = "",
                 reference: "Callable[[], Upscaler] | None" = None):
        self.runtime = runtime  # an SR runtime (export/runtime.py's contract)
        self.color_fix = color_fix
        self.label = label or (runtime.backend.upper() if runtime is not None else "")
        self._reference = reference  # builds fp32_reference's model, when it is not this one

    # -- what the model is --------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """fp32, fp16 or fakequant for a PyTorch pipeline; the target's name for an artifact."""
        return self.runtime.backend

    @property
    def description(self) -> str:
        return self.runtime.description

    @property
    def latent_tile(self) -> tuple[int, int]:
        """The UNet's tile in latent pixels (what it was calibrated or exported at)."""
        return self.runtime.latent_tile

    @property
    def fixed_vae_latent_tile(self) -> tuple[int, int] | None:
        """The one VAE tile an artifact of fixed-shape engines runs (None: any size)."""
        return getattr(self.runtime, "fixed_vae_latent_tile", None)

    @property
    def artifact(self) -> "Artifact":
        return self.runtime.artifact

    @property
    def model(self) -> "SRModel":
        """The model as runner.super_resolve takes it."""
        from .runner import SRModel

        rt = self.runtime
        return SRModel(rt, rt.backend, rt.latent_tile, rt.description, self.label)

    def vae_tiles(self, setting="auto") -> tuple[tuple[int, int] | None, tuple[int, int] | None, bool]:
        """(encoder tile, decoder tile, exact) in latent pixels for a Tiling.vae_tile `setting`."""
        from .runner import vae_tiles

        return vae_tiles(self.runtime, self.latent_tile, setting)

    # -- where it runs ---------------------------------------------------------------------------
    def to(self, device: "str | torch.device") -> "Upscaler":
        """A PyTorch pipeline moved to `device` (auto, cpu, cuda, cuda:N or a torch.device); an
        artifact keeps running where its target runs."""
        from .runner import place

        place(self.model, _device(device))  # moves the runtime itself: the SRModel holds it
        return self

    def fp32_reference(self, device: "str | torch.device" = "auto") -> "Upscaler":
        """The FP32 model this one is judged against (passion-sr's FP32 column), on `device`: itself
        when it is FP32; for a calibrated checkpoint or an artifact, the same weights with every
        quantizer off; for PassionSR's imported model, its merged FP model; otherwise the FP32
        pipeline of the same preset and weights. Built on each call."""
        if self.backend == "fp32":
            return self
        if self._reference is None:
            raise PassionError(f"{self.description}: this model has no FP32 reference")
        return self._reference().to(device)

    # -- running ----------------------------------------------------------------------------------
    def upscale(self, image) -> "Image.Image":
        from PIL import Image

        from .images import to_uint8

        return Image.fromarray(to_uint8(self.upscale_tensor(_as_tensor(image))), "RGB")

    def upscale_tensor(self, lr: torch.Tensor, tiling: "Tiling | None" = None, color_fix: str | None = None) -> torch.Tensor:
        """3 x h x w LR in [0, 1] -> 3 x 4h x 4w in [0, 1], tiled as `tiling` says (default: runner.Tiling()),
        colour-fixed with `color_fix` (default: the Upscaler's)."""
        from . import runner

        return runner.super_resolve(self.model, lr, tiling=tiling, color_fix=self.color_fix if color_fix is None else color_fix)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runtime(x)


def _as_tensor(image) -> torch.Tensor:
    """A PIL image (any mode) or an H x W x 3 uint8 array as a 3 x H x W float tensor in [0, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise PassionError(f"upscale: expected a PIL image or an H x W x 3 uint8 array, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float() / 255.0


def _device(device: "str | torch.device") -> torch.device:
    from .devices import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(device)


def open(artifact_dir: "str | os.PathLike | Artifact", device: str = "auto", color_fix: str = "adain") -> Upscaler:  # noqa: A001
    """An exported artifact as an Upscaler. The target decides where it runs (ONNX Runtime and
    OpenVINO on the CPU, TensorRT and the Triton kernels on a GPU where there is one); an explicit
    `device` of cuda[:N] is refused in one sentence where this machine or the target has no GPU."""
    from .devices import resolve_device
    from .export.targets import load as load_target

    from .runner import artifact_label

    art, tgt = load_target(artifact_dir)
    asked = resolve_device(device)  # an unknown device or a missing GPU is refused here
    if device != "auto" and asked.type == "cuda" and not tgt.serve_spec(art).gpu:
        raise PassionError(f"{art.dir}: a {tgt.name} artifact runs on the CPU; open it with device='cpu' or 'auto'", art.dir)
    rt = tgt.open(art)

    def reference() -> Upscaler:
        # a fresh copy of the source checkpoint: the runtime's own runs the components the artifact lacks
        from .export.artifact import load_source_pipeline

        return _quantizers_off(load_source_pipeline(rt.manifest, rt.dir, *rt.source_weights))
    return Upscaler(rt, color_fix, artifact_label(rt), reference)


def upscaler(backend: str = "fp32", preset: str | None = None, ckpt: str | os.PathLike | None = None, config: str = "w8a8",
             weights: str | os.PathLike | None = None, lora: str | os.PathLike | None = None,
             random_weights: int | None = None, device: "str | torch.device" = "auto", color_fix: str = "adain",
             progress: bool = True, calib_exclude: Iterable[str] = ()) -> Upscaler:
    """A PyTorch pipeline as an Upscaler, named as passion-sr's --backend flags name it: `backend`
    fp32 or fp16 on the `preset`'s weights (tiny by default; or `weights` + `lora`, or seeded
    `random_weights` for benchmarks), or fakequant: a calibrated checkpoint `ckpt` (path or bundled
    name; its preset, which a `preset` given must match), else the float pipeline quantized with
    `config` and statistics-calibrated on the bundled photos, less those whose file stem is in
    `calib_exclude` (passion-demo leaves out the photo it shows, so the model is not judged on its
    own calibration data). On `device` (auto: the GPU when there is one). PassionSR's own model,
    imported from its inference YAML: passionsr_upscaler."""
    from .runner import load_model

    # one name given as a string is that photo, not its letters
    exclude = (calib_exclude,) if isinstance(calib_exclude, str) else tuple(calib_exclude)
    m = load_model(preset, backend, weights, lora, random_weights, ckpt, config, progress=progress, calib_exclude=exclude)

    def reference() -> Upscaler:
        if backend == "fakequant" and ckpt is not None:
            from .checkpoint import load_checkpoint

            return _quantizers_off(load_checkpoint(ckpt, preset=preset, weights=weights, lora=lora))
        return upscaler("fp32", preset, weights=weights, lora=lora, random_weights=random_weights, device="cpu",
                        progress=progress)
    return Upscaler(m.pipe, color_fix, m.label, reference).to(device)


def passionsr_upscaler(config: str | os.PathLike, device: "str | torch.device" = "auto", color_fix: str = "adain",
                       progress: bool = True) -> Upscaler:
    """PassionSR's fake-quant model, imported from its inference YAML (the blocks' quant_ckpt, the SD
    checkpoint and the OSEDiff LoRA it names), as an Upscaler on `device`; its fp32_reference is
    PassionSR's merged FP model (its reference-form LET is no identity with the quantizers off)."""
    from .runner import pipeline_model, short_quant_name

    pipe = import_passionsr(config, progress=progress).pipe
    name = pipe.quant_config.name
    m = pipeline_model(pipe, "fakequant", pipe.latent_tile, f"fake-quant {name}, PassionSR's parameters from {config}",
                       f"fake-quant {short_quant_name(name)}")

    def reference() -> Upscaler:
        from .importers import build_fp_pipeline, job_from_yaml

        fp = build_fp_pipeline(job_from_yaml(config)).pipe
        r = pipeline_model(fp, "fp32", m.latent_tile, f"fp32 (PassionSR's FP weights, {Path(config).name})", "FP32")
        return Upscaler(r.pipe, color_fix, r.label)
    return Upscaler(m.pipe, color_fix, m.label, reference).to(device)


def _quantizers_off(pipe) -> Upscaler:
    """A calibrated checkpoint's pipeline with every quantizer off: its FP32 model up to float rounding."""
    from .quant.wrap import set_quant_state
    from .runner import pipeline_model

    set_quant_state(pipe, weight=False, act=False)
    m = pipeline_model(pipe, "fp32", pipe.latent_tile, f"fp32 ({Path(str(pipe.checkpoint_path)).name} with quantizers off)",
                       "FP32")
    return Upscaler(m.pipe, label=m.label)


def passionsr_parameters(config: str | os.PathLike | None) -> str | None:
    """The key through which a PassionSR inference YAML names its calibrated parameters
    (`quantize_config.<block>.quant_ckpt`), or None for a quantization config: a YAML that names
    them is PassionSR's model (passionsr_upscaler), never a config to calibrate with."""
    from .importers import names_quant_ckpt

    return names_quant_ckpt(config) if config else None


def is_checkpoint(name: str | os.PathLike) -> bool:
    """Whether `name` is a calibrated checkpoint (a bundled name such as tiny-w6a6, or a file that is
    not a YAML config) rather than a quantization config (w8a8, ... or a YAML file)."""
    from .checkpoint import BUNDLED

    name = str(name)
    return name in BUNDLED or (Path(name).is_file() and not name.endswith((".yaml", ".yml")))
