"""The triton target: the deploy IR itself is the artifact (packed int8/int6 weights and the
integer recipes); runtime.TritonSR builds the kernel operands from it on load (operands.py,
layers.py, modules.py) and runs the diffusers pipeline with its integer layers on kernels/."""
from __future__ import annotations

from passion_deploy.devices import cuda_available

from .. import ExportReport, ServeSpec, Target


class TritonTarget(Target):
    name = "triton"
    help = "packed IR run by the Triton integer kernels (GPU; Triton's interpreter on a CPU)"
    manifest_needs = ("kernels",)
    runs_source_pipeline = True  # the diffusers modules around the kernel layers

    def lower(self, job, name: str, graph) -> tuple[list[str], dict]:
        return [], {}  # the IR the exporter wrote is all the kernels load

    def manifest_fields(self, job) -> dict:
        # the runtime's kernel operand encodings (kernels/operands.py); the latent tile is the CUDA-graph shape
        from passion_deploy.kernels.operands import WEIGHT_DTYPE

        return {"kernels": {"activation_operands": "u8", "weight_operands": WEIGHT_DTYPE,
                            "cuda_graph_latent_tile": list(job.tile)}}

    def report(self, manifest: dict) -> ExportReport:
        return ExportReport("triton", no_timing=None if cuda_available() else (
            "without a GPU the kernels ran in Triton's interpreter, whose timings say nothing about the kernels"))

    def open(self, art, timing=False, threads=None, timing_only_isa=False, **kwargs):
        from .runtime import TritonSR

        return TritonSR(art, **kwargs)

    def serve_spec(self, art) -> ServeSpec:
        # the kernels run inside the Python backend's process: no component file for Triton's own backends
        return ServeSpec(gpu=True, components=None)


TARGET = TritonTarget()
