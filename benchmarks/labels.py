"""Readable names of benchmark variants (the keys of a passion-bench record), for tables and charts."""

LABELS = {"int_onnx": "integer ONNX (artifact)", "fp32_onnx": "FP32 ONNX Runtime", "torch_fp32": "PyTorch FP32 eager",
          "triton": "Triton integer kernels (artifact)", "torch_fp16": "PyTorch FP16 (CUDA graphs)",
          "trt_int8": "TensorRT INT8", "trt_fp16": "TensorRT FP16", "qdq_onnx": "Q/DQ ONNX",
          "ov_int8": "OpenVINO int8 kernels (artifact)", "ov_dequant": "OpenVINO Q/DQ, dequant mode (artifact)",
          "ov_fp32": "OpenVINO FP32", "ov_default": "OpenVINO default precision", "nncf_int8": "NNCF INT8 (OpenVINO)"}


def label(variant: str) -> str:
    """A variant's readable name; a variant this module does not know is shown by its key."""
    return LABELS.get(variant, variant)
