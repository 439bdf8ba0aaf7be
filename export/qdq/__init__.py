"""The explicit-quantization (Q/DQ) ONNX graph: one lowering (lower.py) and one rules checker
(rules.py) shared by every engine that fuses QuantizeLinear/DequantizeLinear pairs into
integer kernels: TensorRT (targets/trt) and OpenVINO (targets/openvino). One graph, two engines."""
