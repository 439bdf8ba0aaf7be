"""The onnx target: integer ONNX for ONNX Runtime's CPU int8 kernels (lower.py), run by
runtime.OnnxSR. Its one option is the CPU instruction set the int8 GEMMs may assume."""
from __future__ import annotations

from ... import artifact
from ...ir.int_algebra import ISAS
from ...ir.trace import ExportError
from .. import Target


def resolve_isa(isa: str) -> str:
    if isa == "auto":
        return "vnni" if artifact.cpu_has_vnni() else "portable"
    if isa not in ISAS:
        raise ExportError(f"--isa {isa!r}: choose auto, portable or vnni")
    return isa


class OnnxTarget(Target):
    name = "onnx"
    help = "integer ONNX for ONNX Runtime's CPU int8 kernels"

    def add_arguments(self, parser) -> None:
        g = parser.add_argument_group("onnx target")
        g.add_argument("--isa", default="auto", choices=["auto", *ISAS],
                       help="onnx target's int8 kernels: portable (exact on every x86 CPU), vnni (int8 weights everywhere: "
                            "fastest, exact only with VNNI), auto (vnni when this CPU has it)")

    def options_from_args(self, args) -> dict:
        return {"isa": args.isa}

    def resolve_options(self, options: dict) -> dict:
        unknown = sorted(set(options) - {"isa"})
        if unknown:
            raise ExportError(f"the onnx target has no option {unknown[0]!r}")
        return {"isa": resolve_isa(options.get("isa", "auto"))}

    def write_component(self, job, name: str, graph) -> tuple[list[str], dict]:
        from ...onnx_graph import save_onnx
        from .lower import lower_graph

        job.status("lowering to ONNX")
        files = save_onnx(lower_graph(graph, job.options["isa"]), job.out_dir, name)
        return files, artifact.onnx_file_fields(job.out_dir, name, files)

    def manifest_fields(self, job) -> dict:
        return {"isa": job.options["isa"]}

    def summary(self, manifest: dict) -> str:
        return f"onnx, isa {manifest.get('isa')}"

    def open(self, model_dir, **kwargs):
        from .runtime import OnnxSR

        return OnnxSR(model_dir, **kwargs)

    def open_for_timing(self, model_dir, threads=None, timing_only_isa=False):
        from .runtime import open_for_timing

        return open_for_timing(model_dir, threads, timing_only_isa)


TARGET = OnnxTarget()
