"""Run an onnx artifact: its integer ONNX models in ONNX Runtime's CPU sessions.

The int8 GEMMs are exact on every x86 CPU with `--isa portable`; an artifact exported with
`--isa vnni` is refused on a CPU without VNNI, where its int8 products would saturate.
"""
from __future__ import annotations

import os

from ... import artifact
from ...ort_runtime import OrtRuntime, session_variant
from . import TARGET


class OnnxSR(OrtRuntime):
    """The artifact's integer ONNX sessions; components it does not contain run on the
    fake-quant checkpoint it was exported from."""

    contract = TARGET

    def __init__(self, model_dir: str | os.PathLike | artifact.Artifact, threads: int | None = None,
                 load_sessions: bool = True, check_isa: bool = True):
        art = artifact.load(model_dir)
        if check_isa:
            artifact.check_cpu(art.manifest, str(art.dir))
        super().__init__(art, threads, load_sessions)

    @property
    def description(self) -> str:
        m = self.manifest
        return f"ONNX Runtime {m['quant_config_name']} ({m['isa']}) from {self.dir} [{', '.join(sorted(self.sessions))}]"

    def lower(self, g, probes: list[str]):
        from .lower import lower_graph

        return lower_graph(g, self.manifest["isa"], probes=probes)

    timing_baselines = ("fp32_onnx", "torch_fp32")

    def timing_variants(self, name: str, x):
        c = self.manifest["components"][name]
        weights = sum((self.dir / f).stat().st_size for f in (c["onnx"], c.get("onnx_data")) if f)
        return [session_variant("int_onnx", self.dir / c["onnx"], self.main_input(name), self.constant_feeds(name), x,
                                self.threads, {"weight_bytes_on_disk": weights, "ir_bytes_on_disk": c["ir_file_bytes"]})]

    def timing_record(self) -> dict:
        return {"isa": self.manifest["isa"]}

    def timing_settings(self) -> dict:
        # a vnni artifact open on a CPU without VNNI got past its ISA check only as open_for_timing(timing_only_isa)
        return {"ort_intra_op_threads": self.threads or "default",
                "isa_check_skipped_outputs_invalid": self.manifest["isa"] == "vnni" and not artifact.cpu_has_vnni()}


def open_for_timing(model_dir: str | os.PathLike | artifact.Artifact, threads: int | None = None, timing_only_isa: bool = False) -> OnnxSR:
    """passion-bench's way in: no sessions yet (the harness opens them inside its memory sampling).
    timing_only_isa opens a --isa vnni artifact on a CPU without VNNI, where its int8 GEMMs
    saturate: the timing is meaningful, the outputs are not."""
    return OnnxSR(model_dir, threads, load_sessions=False, check_isa=not timing_only_isa)
