"""The exporter: deploy IR, folding, packing and lowering to the triton / onnx / trt targets."""
