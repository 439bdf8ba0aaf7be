"""The trt target: explicit-quantization ONNX checked against TensorRT's rules (export/qdq),
and, where TensorRT and a GPU exist, INT8 engines plus FP16 baseline engines
(build.py, fp16.py), run by runtime.TrtSR, or by runtime.QdqOnnxSR in ONNX Runtime elsewhere."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from passion_deploy.models.components import COMPONENTS

from ... import artifact
from ...ir.trace import ExportError
from .. import ComponentModel, ExportReport, ServeSpec, Target, onnx_component_model

FLOAT_PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class TrtOptions:
    float_precision: str = field(default="fp32", metadata={
        "flag": "--trt-float", "choices": FLOAT_PRECISIONS,
        "help": "precision of the INT8 engines' float ops (norms, activations, softmax, the shift terms); the Q/DQ "
                "convs and matmuls are INT8 either way. fp16 is faster, further from the fake-quant model, and refused "
                "when a quantization scale does not survive FP16. The baseline engines are FP16"})
    max_batch: int = field(default=1, metadata={"flag": "--max-batch", "help": "largest batch of tiles the engines accept"})
    timing_cache: Path | None = field(default=None, metadata={
        "flag": "--timing-cache", "metavar": "FILE",
        "help": "TensorRT timing cache, reused between builds (default: ~/.cache/passion-deploy/trt-VERSION-GPU.timing)"})
    build_engines: bool = field(default=True, metadata={"flag": "--no-engines",
                                                        "help": "write and verify the Q/DQ ONNX only"})


def batch_shapes(shapes: dict[str, tuple], max_batch: int) -> dict[str, tuple]:
    """The graphs' input shapes: the fixed tile, with a dynamic batch dimension when the engines
    take more than one tile per call (their profile spans batch 1 to max_batch)."""
    if max_batch == 1:
        return shapes
    return {k: (None,) + tuple(v[1:]) for k, v in shapes.items()}


class TrtTarget(Target):
    name = "trt"
    help = "TensorRT: Q/DQ ONNX + INT8 and FP16 engines"
    options = TrtOptions
    component_needs = ("onnx", "fixed_input_shapes")

    def resolve_options(self, options) -> dict:
        from .build import default_timing_cache, missing_for_engines

        o = self.make_options(options)
        if o.max_batch < 1:
            raise ExportError(f"--max-batch {o.max_batch}: an engine takes at least one tile per call")
        if o.float_precision not in FLOAT_PRECISIONS:
            raise ExportError(f"--trt-float {o.float_precision!r}: choose fp32 or fp16")
        opts = {"float_precision": o.float_precision, "max_batch": o.max_batch, "build_engines": o.build_engines,
                "timing_cache": Path(o.timing_cache) if o.timing_cache else None}
        opts["engines_missing"] = missing_for_engines() if opts["build_engines"] else []
        if opts["build_engines"] and not opts["engines_missing"] and opts["timing_cache"] is None:
            opts["timing_cache"] = default_timing_cache()
        return opts

    def lower(self, job, name: str, graph) -> tuple[list[str], dict]:
        import onnx

        from ...onnx_graph import lower_float, save_onnx
        from ...qdq.lower import lower_graph_qdq
        from ...qdq.rules import qdq_violations

        job.status("Q/DQ ONNX")
        shapes = job.fixed_input_shapes(graph, name)  # one tile, batch 1: the engines' profile minimum
        graph_shapes = batch_shapes(shapes, job.options["max_batch"])
        qdq = lower_graph_qdq(graph, graph_shapes)
        bad = qdq_violations(qdq)
        if bad:
            raise ExportError(f"{name}: the Q/DQ graph breaks TensorRT's explicit-quantization rules: {bad[0]}"
                              + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        files = save_onnx(qdq, job.out_dir, f"{name}.qdq")
        onnx.checker.check_model(str(job.out_dir / f"{name}.qdq.onnx"))  # by path: works beyond 2 GB
        fields = {**artifact.onnx_file_fields(job.out_dir, f"{name}.qdq", files),
                  "fixed_input_shapes": {k: list(v) for k, v in shapes.items()}}
        o = job.options
        if o["build_engines"] and not o["engines_missing"]:
            from .build import build_component_engines

            job.status("TensorRT engines")
            fp = lower_float(job.trace(name, quantized=False), input_shapes=graph_shapes)
            engines = build_component_engines(job.out_dir, name, qdq, fp, shapes, o["float_precision"], o["max_batch"],
                                              o["timing_cache"], job.progress)
            job.state.setdefault("engines", {})[name] = engines
            files = files + [e["engine"] for e in engines.values()]
        return files, fields

    def manifest_fields(self, job) -> dict:
        o = job.options
        engines = job.state.get("engines")
        info = None
        if engines:
            from .build import tensorrt_info

            info = tensorrt_info(o["float_precision"], o["max_batch"])
        return {"engines": engines or None, "engines_missing": o["engines_missing"], "tensorrt": info}

    def report(self, manifest: dict) -> ExportReport:
        from .build import INSTALL_HINT

        engines = manifest.get("engines") or {}
        lines = tuple(f"  {comp:12s} engines: " + ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB ({v['build_seconds']} s)"
                                                          for k, v in e.items())
                      for comp, e in engines.items())
        missing = manifest.get("engines_missing")
        return ExportReport(
            "trt: TensorRT Q/DQ ONNX" + (", INT8 + FP16 engines" if engines else ", no engines"), lines,
            incomplete=f"built no engines: this machine lacks {' and '.join(missing)}; {INSTALL_HINT}" if missing else None,
            no_timing=None if engines else ("there are no engines, and the Q/DQ graph's unfused run in ONNX Runtime "
                                            "says nothing about TensorRT's speed"))

    def open(self, art, timing=False, threads=None, timing_only_isa=False, **kwargs):
        from .runtime import open_for_timing, open_trt

        if timing:
            return open_for_timing(art)
        return open_trt(art, threads=threads, **kwargs)

    def serve_spec(self, art) -> ServeSpec:
        """The INT8 engines as TensorRT plans at their fixed tile and batch; without engines, the
        Q/DQ graphs on the onnxruntime backend (TensorRT's arithmetic checked, not its speed)."""
        m = art.manifest
        engines = m.get("engines") or {}
        if not engines:
            return ServeSpec(gpu=True, components={n: onnx_component_model(c, what="Q/DQ ONNX")
                                                   for n, c in m["components"].items()})
        if set(m["components"]) - set(engines):
            return ServeSpec(gpu=True, components=None,
                             tiles_per_call=int((m.get("tensorrt") or {}).get("max_batch", 1)))
        comps = {}
        for n in (c for c in COMPONENTS if c in m["components"]):
            plan = engines[n]["int8"]["engine"]
            comps[n] = ComponentModel("tensorrt_plan", {plan: "model.plan"}, m["components"][n]["fixed_input_shapes"],
                                      f"TensorRT INT8 plan ({plan})", gpu=True, platform=True)
        batch = int((m.get("tensorrt") or {}).get("max_batch", 1))
        return ServeSpec(gpu=True, components=comps, fixed_shapes=True, max_batch=batch, tiles_per_call=batch)


TARGET = TrtTarget()
