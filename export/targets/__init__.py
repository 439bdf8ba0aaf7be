"""Export targets: one contract, one folder per target, one registry line per target.

A `Target` is a plug-in behind a small contract (the shape of torch.export / ExecuTorch
backends): it has a name, its own command-line options, writes its files for one component
from the deploy IR (and says what the manifest records about them), adds its top-level
manifest fields, and opens an artifact directory as an SR runtime (export/runtime.py). The
exporter, passion-export, passion-sr, --verify and passion-bench reach a target only through
`get_target` / `open_artifact`; adding a target is adding a folder and a line to REGISTRY.

A target's folder exposes `TARGET` in its __init__.py, which imports nothing heavy (ONNX,
TensorRT, Triton load when a target's work needs them), so the CLI can list every target.
"""
from __future__ import annotations

import argparse
import importlib
import os

from .. import artifact

REGISTRY = {
    "onnx": "passion_deploy.export.targets.onnx",  # integer ONNX for ONNX Runtime's CPU int8 kernels
    "openvino": "passion_deploy.export.targets.openvino",  # OpenVINO IR of the Q/DQ graph for its CPU plugin
    "triton": "passion_deploy.export.targets.triton",  # packed IR run by the Triton kernels (GPU)
    "trt": "passion_deploy.export.targets.trt",  # explicit Q/DQ ONNX -> TensorRT engines (GPU)
}


class Target:
    """The contract. Subclasses set `name` and `help` and implement `write_component` and `open`."""

    name = ""
    help = ""
    # the runtime rebuilds the PyTorch pipeline around the integer parts (triton): the artifact
    # then carries the source checkpoint, FP weights included, so it runs from its folder alone
    runs_source_pipeline = False

    # -- options ----------------------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The target's own passion-export options (an argument group)."""

    def options_from_args(self, args: argparse.Namespace) -> dict:
        """The options `export_artifact` takes, from passion-export's parsed arguments."""
        return {}

    def resolve_options(self, options: dict) -> dict:
        """Check and complete the options before any work (ExportError names a bad one)."""
        return dict(options)

    # -- export -------------------------------------------------------------------------------
    def write_component(self, job, name: str, graph) -> tuple[list[str], dict]:
        """Write the target's files for component `name` (deploy IR graph `graph`) into
        job.out_dir; returns (file names to seal, fields for the component's manifest entry)."""
        raise NotImplementedError

    def manifest_fields(self, job) -> dict:
        """Top-level manifest fields of this target (what its runtime checks on load)."""
        return {}

    def summary(self, manifest: dict) -> str:
        """A few words for passion-export's result line."""
        return self.name

    def report_lines(self, manifest: dict) -> list[str]:
        """Extra lines for passion-export's result (after the per-component lines)."""
        return []

    def incomplete(self, manifest: dict) -> str | None:
        """Why the artifact lacks part of what this target makes here (passion-export exits 3), or None."""
        return None

    def no_timing(self, manifest: dict) -> str | None:
        """Why timing this artifact on this machine would say nothing (passion-export skips it), or None."""
        return None

    # -- run ----------------------------------------------------------------------------------
    def open(self, model_dir: str | os.PathLike, **kwargs):
        """The artifact directory as an SR runtime (export/runtime.py's contract)."""
        raise NotImplementedError

    def open_for_timing(self, model_dir: str | os.PathLike, threads: int | None = None, timing_only_isa: bool = False):
        """The runtime as passion-bench times it (benchmarks/harness.py): sessions are opened
        inside its memory sampling; a target that cannot be timed here refuses in one sentence."""
        return self.open(model_dir)


def target_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_target(name: str) -> Target:
    if name not in REGISTRY:
        raise artifact.ArtifactError(f"target {name!r} has no implementation in this version; "
                                     f"choose from {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).TARGET


def open_artifact(model_dir: str | os.PathLike, **kwargs):
    """The runtime of an artifact directory: its manifest names the target (every file is checked first)."""
    m = artifact.read_manifest(model_dir)
    if m["target"] not in REGISTRY:
        raise artifact.ArtifactError(f"{model_dir}: target {m['target']!r} has no runtime in this version")
    return get_target(m["target"]).open(model_dir, **kwargs)
