"""The one timing loop and the memory meters (passion_deploy/measure.py): the order it calls the
variants in, what a sample is and how it is summarised, on a fake clock; the peak RSS it samples
and the fresh-process probe of one ONNX model, on real memory. No speed is judged here."""
import pytest

from passion_deploy import measure


def test_variants_alternate_after_their_warm_ups():
    order = []
    calls = {v: (lambda v=v: order.append(v)) for v in "abc"}
    measure.time_alternating(calls, runs=3, warmup=2)
    assert order == list("aabbcc") + list("abc") * 3


def test_a_sample_is_one_call_per_unit_and_every_sample_is_kept(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])
    b_times = iter([0.1, 0.5, 0.2])

    def a():
        clock[0] += 0.3  # a sample of 3 operand sets: 0.1 s each

    def b():
        clock[0] += next(b_times)
    got = measure.time_alternating({"a": a, "b": b}, runs=3, units={"a": 3})
    assert got["a"]["samples_s"] == pytest.approx([0.1] * 3)
    assert got["b"]["samples_s"] == pytest.approx([0.1, 0.5, 0.2])
    assert (got["b"]["median_s"], got["b"]["min_s"], got["b"]["max_s"], got["b"]["runs"]) == pytest.approx((0.2, 0.1, 0.5, 3))
    assert "peak_rss_bytes" not in got["a"]


def test_percentile_is_the_nearest_rank():
    s = [float(x) for x in range(10, 0, -1)]
    assert [measure.percentile(s, q) for q in (0, 10, 50, 99, 100)] == [1.0, 1.0, 5.0, 10.0, 10.0]


def test_the_peak_rss_of_a_variant_covers_what_it_held():
    held = 200 << 20

    def hold():
        x = b"\x01" * held  # written, so resident
        measure.time.sleep(0.05)  # held across several of the 2 ms samples
        del x
    start = measure.rss_bytes()
    got = measure.time_alternating({"hold": hold, "idle": lambda: None}, runs=2, peak_rss=True)
    assert got["hold"]["peak_rss_bytes"] >= start + 0.9 * held


def test_one_onnx_model_is_measured_in_a_fresh_process(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((256, 256), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 256])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    got = measure.fresh_process_peak(tmp_path / "m.onnx", {"x": np.ones((4, 256), np.float32)}, 1, tmp_path)
    assert "error" not in got, got
    assert 0 < got["baseline_rss_bytes"] <= got["after_load_rss_bytes"] <= got["peak_rss_bytes"]
