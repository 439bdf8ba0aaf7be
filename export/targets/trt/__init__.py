"""The trt target: explicit-quantization ONNX checked against TensorRT's rules (export/qdq),
and, where TensorRT and a GPU exist, INT8 engines plus FP16 baseline engines
(build.py, fp16.py), run by runtime.TrtSR, or by runtime.QdqOnnxSR in ONNX Runtime elsewhere."""
from __future__ import annotations

from pathlib import Path

from ... import artifact
from ...ir.trace import ExportError
from .. import Target

FLOAT_PRECISIONS = ("fp32", "fp16")
DEFAULTS = {"float_precision": "fp32", "max_batch": 1, "timing_cache": None, "build_engines": True}


def batch_shapes(shapes: dict[str, tuple], max_batch: int) -> dict[str, tuple]:
    """The graphs' input shapes: the fixed tile, with a dynamic batch dimension when the engines
    take more than one tile per call (their profile spans batch 1 to max_batch)."""
    if max_batch == 1:
        return shapes
    return {k: (None,) + tuple(v[1:]) for k, v in shapes.items()}


class TrtTarget(Target):
    name = "trt"
    help = "TensorRT: Q/DQ ONNX + INT8 and FP16 engines"

    def add_arguments(self, parser) -> None:
        g = parser.add_argument_group("trt target")
        g.add_argument("--trt-float", default="fp32", choices=list(FLOAT_PRECISIONS),
                       help="precision of the INT8 engines' float ops (norms, activations, softmax, the shift terms); the "
                            "Q/DQ convs and matmuls are INT8 either way. fp16 is faster, further from the fake-quant model, "
                            "and refused when a quantization scale does not survive FP16. The baseline engines are FP16")
        g.add_argument("--max-batch", type=int, default=1, help="largest batch of tiles the engines accept")
        g.add_argument("--timing-cache", metavar="FILE",
                       help="TensorRT timing cache, reused between builds (default: ~/.cache/passion-deploy/trt-VERSION-GPU.timing)")
        g.add_argument("--no-engines", action="store_true", help="write and verify the Q/DQ ONNX only")

    def options_from_args(self, args) -> dict:
        return {"float_precision": args.trt_float, "max_batch": args.max_batch, "build_engines": not args.no_engines,
                "timing_cache": Path(args.timing_cache) if args.timing_cache else None}

    def resolve_options(self, options: dict) -> dict:
        from .build import default_timing_cache, missing_for_engines

        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise ExportError(f"the trt target has no option {unknown[0]!r}")
        opts = {**DEFAULTS, **options}
        if opts["max_batch"] < 1:
            raise ExportError(f"--max-batch {opts['max_batch']}: an engine takes at least one tile per call")
        if opts["float_precision"] not in FLOAT_PRECISIONS:
            raise ExportError(f"--trt-float {opts['float_precision']!r}: choose fp32 or fp16")
        opts["engines_missing"] = missing_for_engines() if opts["build_engines"] else []
        if opts["build_engines"] and not opts["engines_missing"] and opts["timing_cache"] is None:
            opts["timing_cache"] = default_timing_cache()
        return opts

    def write_component(self, job, name: str, graph) -> tuple[list[str], dict]:
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

    def summary(self, manifest: dict) -> str:
        return "trt: TensorRT Q/DQ ONNX" + (", INT8 + FP16 engines" if manifest.get("engines") else ", no engines")

    def report_lines(self, manifest: dict) -> list[str]:
        return [f"  {comp:12s} engines: " + ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB ({v['build_seconds']} s)" for k, v in e.items())
                for comp, e in (manifest.get("engines") or {}).items()]

    def incomplete(self, manifest: dict) -> str | None:
        from .build import INSTALL_HINT

        if not manifest.get("engines_missing"):
            return None
        return (f"built no engines: this machine lacks {' and '.join(manifest['engines_missing'])}; {INSTALL_HINT}")

    def no_timing(self, manifest: dict) -> str | None:
        if manifest.get("engines"):
            return None
        return ("there are no engines, and the Q/DQ graph's unfused run in ONNX Runtime says nothing about "
                "TensorRT's speed")

    def open(self, model_dir, **kwargs):
        from .runtime import open_trt

        return open_trt(model_dir, **kwargs)

    def open_for_timing(self, model_dir, threads=None, timing_only_isa=False):
        from .runtime import open_for_timing

        return open_for_timing(model_dir)


TARGET = TrtTarget()
