"""The trt target's CPU check computes TensorRT's integer arithmetic: in the integer view of a
Q/DQ graph (qdq/integer_view.py) every conv sums integer codes exactly and scales the sum once,
and its ONNX Runtime session keeps it that way (no ConvMulFusion / ConvAddFusion folding the
scale and bias into float weights: onnx_graph.INTEGER_VIEW_DISABLED_OPTIMIZERS)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from passion_deploy.export.onnx_graph import session_of_model
from passion_deploy.export.qdq.integer_view import integer_view


def qdq_conv(w: np.ndarray, step: np.ndarray, bias: np.ndarray):
    one, zero = numpy_helper.from_array(np.float32(1.0), "one"), numpy_helper.from_array(np.int8(0), "zero")
    inits = [one, zero, numpy_helper.from_array(w, "w"), numpy_helper.from_array(step, "w_step"),
             numpy_helper.from_array(np.zeros(w.shape[0], np.int8), "w_zero"), numpy_helper.from_array(bias, "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zero"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "w_step", "w_zero"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def test_integer_view_convs_keep_integer_sums():
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (32, 64, 3, 3)).astype(np.int8)
    step = (rng.random(32) * 1e-3 + 1e-4).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    x = rng.integers(-128, 128, (1, 64, 16, 16)).astype(np.float32)
    view = integer_view(qdq_conv(w, step, bias))
    # TensorRT: exact int32 sum, one multiply by the scale, then the bias
    acc = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w.astype(np.float64)), None, 1, 1).float()
    want = (acc * torch.from_numpy(step).view(1, -1, 1, 1) + torch.from_numpy(bias).view(1, -1, 1, 1)).numpy()
    got = session_of_model(view, plain_qdq=True, integer_view=True).run(None, {"x": x})[0]
    assert np.array_equal(got, want)
    # with ONNX Runtime's default fusions the scale goes into float weights: not TensorRT's sums
    fused = session_of_model(view, plain_qdq=True).run(None, {"x": x})[0]
    assert not np.array_equal(fused, want)
