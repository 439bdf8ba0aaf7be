"""Export targets: one contract, one folder per target, one registry line per target.

A `Target` is a plug-in behind a small contract (the shape of torch.export / ExecuTorch
backends, with torchao's typed configs):

    options       a frozen dataclass of the target's settings; passion-export's flags are
                  generated from its fields (type, default, `flag`/`help`/`choices` metadata)
    lower         the deploy IR of one component -> the target's files + its manifest fields
                  (`manifest_fields` adds the top-level ones once every component is lowered)
    open          a checked `artifact.Artifact` -> an SR runtime (export/runtime.py)
    serve_spec    what a server needs: whether it runs on a GPU, which files Triton's own
                  backends load per component, fixed shapes, the batch the files take

plus `report`: what passion-export says about an artifact, as data the CLI prints. The exporter,
the CLIs, --verify, passion-bench and serving/ reach a target only through this module; nothing
outside export/targets/ names one (tests/targets/test_target_names.py and .importlinter check it).
Adding a target is adding a folder and a line to REGISTRY.

A target's folder exposes `TARGET` in its __init__.py, which imports nothing heavy (ONNX,
TensorRT, Triton load when a target's work needs them), so the CLI can list every target.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field

from .. import artifact
from ..ir.trace import ExportError

REGISTRY = {
    "onnx": "passion_deploy.export.targets.onnx",  # integer ONNX for ONNX Runtime's CPU int8 kernels
    "openvino": "passion_deploy.export.targets.openvino",  # OpenVINO IR of the Q/DQ graph for its CPU plugin
    "triton": "passion_deploy.export.targets.triton",  # packed IR run by the Triton kernels (GPU)
    "trt": "passion_deploy.export.targets.trt",  # explicit Q/DQ ONNX -> TensorRT engines (GPU)
}


@dataclass(frozen=True)
class NoOptions:
    """The options of a target that has none."""


@dataclass(frozen=True)
class ComponentModel:
    """One component as a model of Triton Inference Server's own backends."""

    backend: str  # onnxruntime, openvino, or the tensorrt_plan platform
    files: dict  # artifact file -> its name in the model's version folder
    inputs: dict  # input name -> shape with the batch dimension, as the file takes it
    description: str
    gpu: bool = False  # KIND_GPU instances
    parameters: dict = field(default_factory=dict)  # config.pbtxt parameters (plugin properties)
    platform: bool = False  # written as `platform:` (TensorRT plans), not `backend:`


@dataclass(frozen=True)
class ServeSpec:
    """What serving an artifact needs (passion-serve, --write-repo, passion-batch)."""

    gpu: bool  # the runtime wants a GPU: Triton's KIND_GPU instances, Ray's GPU workers
    components: dict | None  # component -> ComponentModel; None: Triton's own backends cannot load them
    fixed_shapes: bool = False  # every dimension fixed at the tile (engines): outputs follow the component table
    max_batch: int = 1  # tiles per call the files take (1: the batch is in the dims, Triton cannot stack requests)
    tiles_per_call: int | None = None  # the most tiles one call of the runtime takes (engines built for a batch); None: any
    notes: tuple[str, ...] = ()  # what a deployer should know (said with the repository)


@dataclass(frozen=True)
class ExportReport:
    """What passion-export says about an artifact it wrote (the CLI prints it)."""

    summary: str  # a few words for the result line
    lines: tuple[str, ...] = ()  # extra lines after the per-component ones
    incomplete: str | None = None  # why part of what the target makes here is missing (passion-export exits 3)
    no_timing: str | None = None  # why timing it on this machine would say nothing (the latency comparison is skipped)


class Target:
    """The contract. Subclasses set `name`, `help`, `options` and implement `lower`, `open` and `serve_spec`."""

    name = ""
    help = ""
    options: type = NoOptions
    # what `open` reads from the manifest: top-level fields and fields of every component entry
    manifest_needs: tuple[str, ...] = ()
    component_needs: tuple[str, ...] = ()
    # the runtime rebuilds the PyTorch pipeline around the integer parts (triton): the artifact
    # then carries the source checkpoint, FP weights included, so it runs from its folder alone
    runs_source_pipeline = False

    # -- options ----------------------------------------------------------------------------
    def make_options(self, options) -> object:
        """The target's options dataclass from an instance, a dict or keyword arguments."""
        if isinstance(options, self.options):
            return options
        if dataclasses.is_dataclass(options):
            raise ExportError(f"the {self.name} target takes {self.options.__name__}, not {type(options).__name__}")
        options = dict(options or {})
        names = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ExportError(f"the {self.name} target has no option {unknown[0]!r}"
                              + (f" (it has {', '.join(sorted(names))})" if names else ""))
        return self.options(**options)

    def resolve_options(self, options) -> dict:
        """Check and complete the options before any work (ExportError names a bad one): the
        settings lowering uses, as a dict (resolved values such as the ISA auto picked)."""
        return dataclasses.asdict(self.make_options(options))

    # -- lower --------------------------------------------------------------------------------
    def lower(self, job, name: str, graph) -> tuple[list[str], dict]:
        """Write the target's files for component `name` (deploy IR graph `graph`) into
        job.out_dir; returns (file names to seal, fields for the component's manifest entry)."""
        raise NotImplementedError

    def manifest_fields(self, job) -> dict:
        """Top-level manifest fields of this target (what its runtime checks on load)."""
        return {}

    # -- open ---------------------------------------------------------------------------------
    def open(self, art: artifact.Artifact, timing: bool = False, **kwargs):
        """The artifact as an SR runtime (export/runtime.py's contract). timing=True: as
        passion-bench times it (benchmarks/harness.py: sessions opened later, inside its memory
        sampling; `threads`, `timing_only_isa`); a target that cannot be timed here refuses in
        one sentence."""
        raise NotImplementedError

    # -- serve --------------------------------------------------------------------------------
    def serve_spec(self, art: artifact.Artifact) -> ServeSpec:
        return ServeSpec(gpu=False, components=None)

    # -- say ----------------------------------------------------------------------------------
    def report(self, manifest: dict) -> ExportReport:
        return ExportReport(self.name)


class CpuRuntimeTarget(Target):
    """A target whose runtime runs in this process on the CPU (onnx, openvino): its package's
    `runtime` module holds the SR runtime class named by `runtime` (taking the artifact, `threads`
    and the runtime's keyword arguments) and `open_for_timing(art, threads, timing_only_isa)`,
    passion-bench's way in. That module loads on the first open: its engine is an optional package."""

    runtime = ""  # the SR runtime class's name in <the target's package>.runtime

    def open(self, art: artifact.Artifact, timing: bool = False, threads: int | None = None,
             timing_only_isa: bool = False, **kwargs):
        module = importlib.import_module(".runtime", type(self).__module__)
        if timing:
            return module.open_for_timing(art, threads, timing_only_isa)
        return getattr(module, self.runtime)(art, threads=threads, **kwargs)


def onnx_component_model(c: dict, onnx_key: str = "onnx", gpu: bool = False, what: str = "ONNX") -> ComponentModel:
    """A component's ONNX file (+ external weights, which keep the name the graph refers to) on
    Triton's onnxruntime backend."""
    files = {c[onnx_key]: "model.onnx"}
    if c.get("onnx_data"):
        files[c["onnx_data"]] = c["onnx_data"]
    return ComponentModel("onnxruntime", files, c["inputs"], f"{what} ({c[onnx_key]}, onnxruntime backend)", gpu)


def target_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_target(name: str) -> Target:
    if name not in REGISTRY:
        raise artifact.ArtifactError(f"target {name!r} has no implementation in this version; "
                                     f"choose from {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).TARGET


def load(model_dir: str | os.PathLike | artifact.Artifact) -> tuple[artifact.Artifact, Target]:
    """The checked artifact and its target: the manifest names the target, which must be
    registered, and must hold what that target reads (each refused in one sentence)."""
    art = artifact.load(model_dir)
    if art.target not in REGISTRY:
        raise artifact.ArtifactError(f"{art.dir}: target {art.target!r} has no runtime in this version", art.dir)
    tgt = get_target(art.target)
    art.require(tgt.name, tgt.manifest_needs, tgt.component_needs)
    return art, tgt


def open_artifact(model_dir: str | os.PathLike | artifact.Artifact, **kwargs):
    """The runtime of an artifact directory (or of an Artifact already loaded)."""
    art, tgt = load(model_dir)
    return tgt.open(art, **kwargs)


def open_for_timing(model_dir: str | os.PathLike | artifact.Artifact, threads: int | None = None,
                    timing_only_isa: bool = False):
    """The runtime as passion-bench times it (Target.open with timing=True)."""
    art, tgt = load(model_dir)
    return tgt.open(art, timing=True, threads=threads, timing_only_isa=timing_only_isa)


def serve_spec(model_dir: str | os.PathLike | artifact.Artifact) -> ServeSpec:
    art, tgt = load(model_dir)
    return tgt.serve_spec(art)


def export_report(manifest: dict) -> ExportReport:
    return get_target(manifest["target"]).report(manifest)
