"""The explicit-quantization (Q/DQ) ONNX graph: one lowering (lower.py) and one rules checker
(rules.py) shared by every engine that fuses QuantizeLinear/DequantizeLinear pairs into
integer kernels: TensorRT (targets/trt) and OpenVINO's int8 mode (targets/openvino). One graph, two
engines; OpenVINO's f32 dequant mode runs the fake-quant graph instead (targets/openvino/fq_graph.py)."""
