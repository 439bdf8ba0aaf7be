"""The onnx target: integer ONNX for ONNX Runtime's CPU int8 kernels (lower.py), run by
runtime.OnnxSR. Its one option is the CPU instruction set the int8 GEMMs may assume."""
from __future__ import annotations

from dataclasses import dataclass, field

from ... import artifact
from ...ir.int_algebra import ISAS
from ...ir.trace import ExportError
from .. import CpuRuntimeTarget, ExportReport, ServeSpec, onnx_component_model


def resolve_isa(isa: str) -> str:
    if isa == "auto":
        return "vnni" if artifact.cpu_has_vnni() else "portable"
    if isa not in ISAS:
        raise ExportError(f"--isa {isa!r}: choose auto, portable or vnni")
    return isa


@dataclass(frozen=True)
class OnnxOptions:
    isa: str = field(default="auto", metadata={
        "flag": "--isa", "choices": ("auto", *ISAS),
        "help": "onnx target's int8 kernels: portable (exact on every x86 CPU), vnni (int8 weights everywhere: "
                "fastest, exact only with VNNI), auto (vnni when this CPU has it)"})


class OnnxTarget(CpuRuntimeTarget):
    name = "onnx"
    help = "integer ONNX for ONNX Runtime's CPU int8 kernels"
    options = OnnxOptions
    runtime = "OnnxSR"
    manifest_needs = ("isa",)
    component_needs = ("onnx",)

    def resolve_options(self, options) -> dict:
        return {"isa": resolve_isa(self.make_options(options).isa)}

    def lower(self, job, name: str, graph) -> tuple[list[str], dict]:
        from ...onnx_graph import save_onnx
        from .lower import lower_graph

        job.status("lowering to ONNX")
        files = save_onnx(lower_graph(graph, job.options["isa"]), job.out_dir, name)
        return files, artifact.onnx_file_fields(job.out_dir, name, files)

    def manifest_fields(self, job) -> dict:
        return {"isa": job.options["isa"]}

    def serve_spec(self, art) -> ServeSpec:
        comps = art.manifest["components"]
        return ServeSpec(gpu=False, components={n: onnx_component_model(c) for n, c in comps.items()})

    def report(self, manifest: dict) -> ExportReport:
        return ExportReport(f"onnx, isa {manifest.get('isa')}")


TARGET = OnnxTarget()
