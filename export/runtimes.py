"""Which runtime runs an artifact directory: the manifest's target decides.

    onnx     runtime.OnnxSR          ONNX Runtime sessions (CPU)
    triton   triton_runtime.TritonSR the diffusers pipeline with the integer layers on Triton
             kernels (GPU; Triton's interpreter on a CPU)
    trt      trt_runtime.TrtSR       TensorRT engines (GPU with TensorRT), else
             trt_runtime.QdqOnnxSR   the Q/DQ ONNX in ONNX Runtime (CPU, to check it)

Both offer encode / unet_eps / denoise / decode / __call__, `reference_pipeline()` (the
fake-quant model it is verified against) and `layer_outputs()` (per-layer values for --verify).
"""
from __future__ import annotations

import os

from . import artifact


def open_artifact(model_dir: str | os.PathLike, **kwargs):
    """The runtime of an artifact directory (the manifest and every file are checked first)."""
    m = artifact.read_manifest(model_dir)
    if m["target"] == "onnx":
        from .runtime import OnnxSR

        return OnnxSR(model_dir, **kwargs)
    if m["target"] == "triton":
        from .triton_runtime import TritonSR

        return TritonSR(model_dir, **kwargs)
    if m["target"] == "trt":
        from .trt_runtime import open_trt

        return open_trt(model_dir, **kwargs)
    raise artifact.ArtifactError(f"{model_dir}: target {m['target']!r} has no runtime in this version")
