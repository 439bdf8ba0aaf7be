"""The openvino target: the Q/DQ graph as OpenVINO IR with int8 weights, compiled in f32 unless bf16
is asked for, exact on the CPU at hand or refused (int8 kernels saturate without VNNI), verified
on the bundled checkpoints, and benchmarked against OpenVINO FP32 and NNCF INT8."""
import io
import json
import sys
from contextlib import redirect_stderr

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

ov = pytest.importorskip("openvino")

from artifact_helpers import reseal  # noqa: E402
from passion_deploy.cli import bench as bench_cli  # noqa: E402
from passion_deploy.cli import export as export_cli  # noqa: E402
from passion_deploy.export import artifact  # noqa: E402
from passion_deploy.export.ir.trace import ExportError  # noqa: E402
from passion_deploy.export.targets import open_artifact  # noqa: E402
from passion_deploy.export.targets import openvino as ov_target  # noqa: E402
from passion_deploy.export.targets.openvino import ovcore  # noqa: E402
from passion_deploy.export.targets.openvino.runtime import OpenVinoSR  # noqa: E402

VNNI = artifact.onednn_has_vnni()  # as oneDNN sees it (ONEDNN_MAX_CPU_ISA caps it)


def _export(out, *args):
    err = io.StringIO()
    with redirect_stderr(err):
        rc = export_cli.main(["--target", "openvino", "--out", str(out), "--no-progress", "--bench-runs", "0", *args])
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory):
    """The Done-when command, on this CPU: passion-export --ckpt tiny-w8a8 --target openvino --verify."""
    out = tmp_path_factory.mktemp("ov") / "w8a8"
    rc, err = _export(out, "--ckpt", "tiny-w8a8", "--verify", "--probes", "1")
    return out, rc, err


def test_tiny_w8a8_exports_verifies_and_records_the_mode_this_cpu_needs(w8a8):
    out, rc, err = w8a8
    assert rc == 0, err
    m = artifact.read_manifest(out)
    o = m["openvino"]
    assert m["target"] == "openvino" and o["precision"] == "f32"
    assert o["mode"] == ("int8" if VNNI else "int8_narrow") and o["mode_chosen"].startswith("auto: this CPU has")
    assert o["exported_on"]["vnni"] == VNNI
    for comp, c in m["components"].items():
        assert {c["openvino_xml"], c["openvino_bin"], c["ir"]} <= set(m["files"])  # sealed like every file
        assert c["quantized_ops"] > 0 and c["openvino_int8_weight_bytes"] > 0
    # the weights stay int8 in the .bin: the UNet's i8 constants hold its packed-weight bytes (not fp16/fp32 copies)
    model = ov.Core().read_model(str(out / m["components"]["unet"]["openvino_xml"]))
    i8 = sum(op.get_byte_size() for op in model.get_ops()
             if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8)
    assert i8 >= m["components"]["unet"]["packed_weight_bytes"]
    assert not any(op.get_element_type() == ov.Type.f16 for op in model.get_ops() if op.get_type_name() == "Constant")
    assert m["components"]["unet"]["input_shapes"]["latent"] == [1, 4] + m["pipeline"]["latent_tile"]
    assert m["components"]["vae_decoder"]["input_shapes"]["latent"] == [1, 4, None, None]
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] and report["target"] == "openvino"
    assert all(r["psnr_vs_fakequant_db"] >= 45 for r in report["components"].values())
    assert ov_target.KERNELS[o["mode"]] in report["runtime"]


def test_tiny_w6a6_verifies(tmp_path):
    """W6A6's first and last layers are 8-bit (where int8 kernels break without VNNI), and its 6-bit
    codes make the decoder the component most sensitive to a code rounded the other way (44.99 dB
    with OpenVINO's own FakeQuantize rounding, see convert.py)."""
    rc, err = _export(tmp_path / "w6", "--ckpt", "tiny-w6a6", "--components", "vae_encoder,vae_decoder", "--verify",
                      "--probes", "1")
    assert rc == 0, err
    report = json.loads((tmp_path / "w6" / "verify.json").read_text())
    assert report["passed"] and all(r["psnr_vs_fakequant_db"] >= 45 for r in report["components"].values())


def test_the_runtime_compiles_f32_and_runs_the_vae_at_any_size(w8a8):
    rt = open_artifact(w8a8[0])
    assert isinstance(rt, OpenVinoSR) and rt.config["INFERENCE_PRECISION_HINT"] == "f32"
    assert ("LP_TRANSFORMS_MODE" in rt.config) == (rt.mode == "dequant")
    th, tw = rt.latent_tile
    for hw in ((th, tw), (th // 2, tw)):
        img = rt.decode(torch.randn(1, 4, *hw))
        assert img.shape == (1, 3, hw[0] * rt.vae_factor, hw[1] * rt.vae_factor)
    found = rt.models["vae_decoder"].found
    assert len(rt.models["vae_decoder"].compiled) == 2 and found["precision"] == "f32"
    assert (found["int8_primitives"] == 0) == (rt.mode != "int8")  # int8_narrow: no tiny-w8a8 decoder layer is narrow
    with pytest.raises(ValueError, match="latent tiles"):
        rt.unet_eps(torch.randn(1, 4, th // 2, tw))


def test_dequant_graph_is_one_float_op_per_layer_and_tracks_fake_quant(tiny_traced):
    """The dequant mode's graph (fq_graph) of every tiny component: one Conv / MatMul per quantized
    layer on its fake-quantized activation (two per attention core), no Split, no Q/DQ pair, fewer
    ops than the Q/DQ graph of the same IR; run in ONNX Runtime (true division) on the reference's
    own input, it stays within the flipped-code level of the other lowerings (> 40 dB)."""
    from passion_deploy.export.onnx_graph import session
    from passion_deploy.export.qdq.lower import lower_graph_qdq
    from passion_deploy.export.targets.openvino.convert import guard_divisions
    from passion_deploy.export.targets.openvino.fq_graph import fake_quant_op_count, lower_graph_fq
    from passion_deploy.metrics import psnr

    for comp, (g, ref, name, inp) in tiny_traced.items():
        model = guard_divisions(lower_graph_fq(g))
        producer = {o: n for n in model.graph.node for o in n.output}
        ops = [n.op_type for n in model.graph.node]
        # fq_graph names a fake-quant's last node <layer>.act (linear/conv) or <attention>.q / .p
        on_fq = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul") and n.input[0] in producer
                 and producer[n.input[0]].op_type in ("Mul", "Concat") and producer[n.input[0]].name.split(".")[-2] in ("act", "q", "p")]
        assert len(on_fq) == fake_quant_op_count(g) > 0, comp
        assert "QuantizeLinear" not in ops and not [n for n in model.graph.node if n.op_type == "Split"
                                                     and producer[n.input[0]] in on_fq], comp  # no all-ones channels
        assert len(ops) < len(lower_graph_qdq(g).graph.node), comp
        out = session(model.SerializeToString()).run(None, {name: inp.numpy()})[0]
        assert psnr(torch.from_numpy(out), ref, peak=float(ref.max() - ref.min())) > 40, comp


# -- exactness: measured on a single Q/DQ conv, then the refusals built on it ----------------------

def _ort(path, x):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_dequant_mode_rounds_activations_as_onnx_runtime_does(tmp_path):
    """The dequant graph's quantizer behind an LET transform, (x - o) / s, then Div(D) -> Round ->
    Clip -> Mul (fq_graph.fake_quant), against ONNX Runtime, which divides as the fake-quant does.
    OpenVINO divides by multiplying with the reciprocal (one ulp off), so only values within an ulp
    or so of a half step may take the neighbouring code: none of 4e5 random activations do. On
    values built to sit on half steps, guard_divisions (which keeps the CPU plugin from folding the
    Sub and both Divs into one multiply-add) moves a tenth as many codes as the unguarded graph,
    each by one code. OpenVINO's own FakeQuantize (what it makes of a Q/DQ pair, the int8 mode's
    graph) also multiplies by 1/scale, which is why the dequant graph does not use Q/DQ pairs."""
    from passion_deploy.export.ir.int_algebra import Grid
    from passion_deploy.export.onnx_graph import OnnxBuilder, save_onnx
    from passion_deploy.export.targets.openvino.convert import guard_divisions
    from passion_deploy.export.targets.openvino.ovcore import convert
    from passion_deploy.export.targets.openvino.fq_graph import fake_quant

    s, o, d = 1.37, 0.0519, 0.0173
    grid = Grid(np.array(d, np.float32), np.array(-140), 8, False)  # codes j in [-140, 115]
    b = OnnxBuilder()
    let = b.node("Div", [b.node("Sub", ["x", b.scalar(np.float32(o), np.float32)], "let"), b.scalar(np.float32(s), np.float32)], "let")
    y = fake_quant(b, let, grid, "act")
    b.nodes.append(helper.make_node("Identity", [y], ["y"]))

    def model():
        g = helper.make_graph(list(b.nodes), "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 400000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(b.inits))
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 400000)) * 1.2).astype(np.float32)
    half = x.copy()
    half[0, :100000] = ((rng.integers(-160, 140, 100000) + 0.5) * d * s + o).astype(np.float32)  # half steps, clipping
    save_onnx(model(), tmp_path, "fq")
    cfg = ovcore.compile_config("f32", "dequant", 1)
    guarded = ovcore.core().compile_model(convert(guard_divisions(model()), tmp_path, "guarded"), "CPU", cfg)
    plain = ovcore.core().compile_model(convert(model(), tmp_path, "plain"), "CPU", cfg)
    ref = _ort(tmp_path / "fq.onnx", x)
    assert len(np.unique(ref)) == 256  # every code of the grid is met
    assert np.array_equal(guarded({"x": x})[0], ref)
    ref = _ort(tmp_path / "fq.onnx", half)
    moved_guarded = np.abs(guarded({"x": half})[0] - ref) / d
    moved_plain = int((plain({"x": half})[0] != ref).sum())
    assert moved_guarded.max() < 1.001 and 10 * int((moved_guarded > 0).sum()) < moved_plain

    inits = [numpy_helper.from_array(np.float32(d), "d"), numpy_helper.from_array(np.int8(0), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "d", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "d", "z"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 400000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    save_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path, "qdq")
    x = (rng.standard_normal((1, 400000)) * 0.5).astype(np.float32)
    x[0, :100000] = ((rng.integers(-140, 140, 100000) + 0.5) * d).astype(np.float32)  # half steps, saturation
    qdq_ref = _ort(tmp_path / "qdq.onnx", x)
    fq = ovcore.core().compile_model(ov.Core().read_model(str(tmp_path / "qdq.onnx")), "CPU", cfg)({"x": x})[0]
    assert not np.array_equal(fq, qdq_ref)


def _qdq_conv(path, w: np.ndarray):
    c = w.shape[0]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.5), "s"),
             numpy_helper.from_array(np.int8(0), "z"), numpy_helper.from_array(np.ones(c, np.float32), "sw"),
             numpy_helper.from_array(np.zeros(c, np.int8), "zw")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["a"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["dw"], axis=0),
             helper.make_node("Conv", ["a", "dw"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return ov.Core().read_model(str(path))


@pytest.fixture(scope="module")
def conv8(tmp_path_factory):
    """A Q/DQ conv with full-range 8-bit codes (weights and activations), its exact result in float64."""
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (32, 32, 3, 3)).astype(np.int8)
    codes = rng.integers(-128, 128, (1, 32, 8, 8)).astype(np.float32)
    exact = torch.nn.functional.conv2d(torch.from_numpy(codes).double(), torch.from_numpy(w).double(), padding=1).numpy() * 0.5
    return _qdq_conv(tmp_path_factory.mktemp("conv") / "conv.onnx", w), codes * 0.5, exact


def _run(model, mode, x):
    c = ovcore.core().compile_model(model, "CPU", ovcore.compile_config("f32", mode, 1))
    return c, c({"x": x})[0]


def test_dequant_mode_is_exact_on_any_cpu(conv8):
    model, x, exact = conv8
    c, y = _run(model, "dequant", x)
    assert np.abs(y - exact).max() == 0
    assert ovcore.check_compiled(c, "dequant", "f32", "t")["int8_primitives"] == 0


@pytest.mark.skipif(VNNI, reason="OpenVINO's int8 kernels are exact with VNNI; their saturation shows only without it")
def test_int8_mode_saturates_without_vnni(conv8):
    model, x, exact = conv8
    c, y = _run(model, "int8", x)
    assert ovcore.int8_primitives(c)[0] == 1
    assert np.abs(y - exact).max() > 1000  # pair sums clipped at 16 bits: thousands of codes off, not rounding
    with pytest.raises(artifact.ArtifactError, match="int8 primitives with its low-precision transformations switched off"):
        ovcore.check_compiled(c, "dequant", "f32", "t")  # what the runtime says if an OpenVINO ignored the switch


def test_auto_mode_follows_vnni_and_int8_is_refused_without_it(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(artifact, "cpu_has_vnni", lambda: True)
    assert ov_target.resolve_mode("auto") == ("int8", "auto: this CPU has VNNI")
    assert ov_target.resolve_mode("int8") == ("int8", "asked for")
    monkeypatch.setattr(artifact, "cpu_has_vnni", lambda: False)
    assert ov_target.resolve_mode("auto")[0] == "int8_narrow"  # test_openvino_narrow.py
    with pytest.raises(ExportError, match="--ov-mode int8 is not exact on this CPU") as e:
        ov_target.resolve_mode("int8")
    assert "\n" not in str(e.value)
    with pytest.raises(ExportError, match="--ov-mode int8_qdq is not exact on this CPU"):
        ov_target.resolve_mode("int8_qdq")  # the former int8 graph runs the same kernels


def test_passion_export_refuses_int8_without_vnni_in_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(artifact, "cpu_has_vnni", lambda: False)
    rc, err = _export(tmp_path / "x", "--ckpt", "tiny-w8a8", "--ov-mode", "int8")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--ov-mode dequant" in err
    assert not (tmp_path / "x").exists()  # refused before any work


def test_an_int8_artifact_is_refused_on_a_cpu_without_vnni(w8a8, tmp_path, monkeypatch):
    import shutil

    d = tmp_path / "int8"
    shutil.copytree(w8a8[0], d)
    m = json.loads((d / "manifest.json").read_text())
    m["openvino"]["mode"] = "int8"  # as exported on a VNNI machine
    reseal(d, m)  # as exported on a VNNI machine
    monkeypatch.setattr(artifact, "cpu_has_vnni", lambda: False)
    with pytest.raises(artifact.ArtifactError, match="exported with --ov-mode int8, which is not exact on this CPU"):
        open_artifact(d)
    monkeypatch.setattr(artifact, "cpu_has_vnni", lambda: True)
    assert open_artifact(d).mode == "int8"


class _Compiled:
    """What check_compiled reads of a compiled model: its precision and its runtime graph."""

    def __init__(self, precision, inner):
        self.precision, self.inner = precision, inner

    def get_property(self, key):
        return self.precision if key == "INFERENCE_PRECISION_HINT" else self.inner.get_property(key)

    def get_runtime_model(self):
        return self.inner.get_runtime_model()


def test_a_bf16_compile_is_refused_unless_asked_for(conv8):
    c, _ = _run(conv8[0], "dequant", conv8[1])
    bf16 = _Compiled(ov.Type.bf16, c)
    with pytest.raises(artifact.ArtifactError, match="compiled it in bf16 although the artifact was exported and verified in f32"):
        ovcore.check_compiled(bf16, "dequant", "f32", "t")
    assert ovcore.check_compiled(bf16, "dequant", "bf16", "t")["precision"] == "bf16"
    # asked for, bf16 is passed to OpenVINO; a CPU without bf16 runs f32, and says so
    got = ovcore.core().compile_model(conv8[0], "CPU", ovcore.compile_config("bf16", "dequant", 1))
    assert ovcore.effective_precision(got) == ("bf16" if ovcore.cpu_info()["bf16"] else "f32")
    assert ovcore.compile_config(None)["PERFORMANCE_HINT"] == "LATENCY" and "INFERENCE_PRECISION_HINT" not in ovcore.compile_config(None)


def test_without_openvino_the_target_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    rc, err = _export(tmp_path / "x", "--ckpt", "tiny-w8a8")
    assert rc == 2 and err.strip() == ("passion-export: the openvino target needs OpenVINO, which is not installed here: "
                                       "pip install 'passion-deploy[openvino]'")


# -- passion-bench: the CPU users' baselines, fidelity, full SR -----------------------------------

def test_bench_times_openvino_fp32_and_nncf_int8_with_fidelity_and_full_sr(w8a8, tmp_path, capsys):
    pytest.importorskip("nncf")
    rec_path = tmp_path / "rec.json"
    assert bench_cli.main(["--model", str(w8a8[0]), "--components", "vae_decoder", "--vae-size", "32", "--runs", "5",
                           "--threads", "1", "--no-memory", "--no-torch", "--no-progress", "--sr-size", "64",
                           "--json", str(rec_path)]) == 0
    rec = json.loads(rec_path.read_text())
    art = f"ov_{ov_target.AUTO_INT8}" if VNNI else f"ov_{ov_target.AUTO_NO_VNNI}"
    assert rec["artifact_variant"] == art and rec["openvino"]["mode"] == art[3:]
    # where the artifact's time goes, per compiled shape: the plugin's counters by node and exec type
    prof = rec["exec_profile"]
    assert "vae_decoder 1x4x8x8" in prof and all(p["by_type"] and p["total_ms"] > 0 for p in prof.values())  # + full SR's
    for row in ("vae_decoder", "sr_64px"):
        vs = rec["components"][row]["variants"]
        expect = {art, "fp32_onnx", "ov_fp32", "nncf_int8"} | ({"ov_default"} if ovcore.default_precision() != "f32" else set())
        assert set(vs) == expect
        assert all(len(v["samples_s"]) == 5 for v in vs.values())
        assert vs["fp32_onnx"]["psnr_vs_fp32_db"] == "inf" or vs["fp32_onnx"]["psnr_vs_fp32_db"] > 90
        assert vs["ov_fp32"]["psnr_vs_fp32_db"] == "inf" or vs["ov_fp32"]["psnr_vs_fp32_db"] > 90
        assert 20 < vs["nncf_int8"]["psnr_vs_fp32_db"] < 90 and 20 < vs[art]["psnr_vs_fp32_db"] < 90
    assert rec["components"]["sr_64px"]["input"] == {"lr": [1, 3, 16, 16]}
    nncf_row = rec["components"]["vae_decoder"]["variants"]["nncf_int8"]
    assert nncf_row["calibration_samples"] == 18 and "calibration set" in nncf_row["calibration"]
    assert nncf_row["ov_compiled"]["precision"] == "f32" and nncf_row["ov_compiled"]["int8_primitives"] > 0
    if ovcore.default_precision() == "f32":
        assert "no bf16" in rec["baselines_not_timed"]["ov_default"]
    md = capsys.readouterr().out
    assert "| vae_decoder | 1x4x8x8 | NNCF INT8 (OpenVINO) |" in md and " dB vs FP32 |" in md
    assert "OpenVINO default precision: not timed" in md or "OpenVINO default precision (" in md


def test_bench_times_only_the_baselines_asked_for(w8a8, tmp_path, capsys):
    """--baselines: a subset of the float baselines (full SR of sd21 with every baseline at once
    outgrew 24 GiB); a name the artifact has not is refused in one sentence that lists its own."""
    rec_path = tmp_path / "rec.json"
    assert bench_cli.main(["--model", str(w8a8[0]), "--components", "vae_decoder", "--vae-size", "32", "--runs", "5",
                           "--threads", "1", "--no-memory", "--no-torch", "--no-progress", "--no-fidelity",
                           "--baselines", "ov_fp32", "--json", str(rec_path)]) == 0
    rec = json.loads(rec_path.read_text())
    assert set(rec["components"]["vae_decoder"]["variants"]) == {rec["artifact_variant"], "ov_fp32"}
    capsys.readouterr()
    assert bench_cli.main(["--model", str(w8a8[0]), "--baselines", "trt_fp16", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no baseline 'trt_fp16'" in err and "nncf_int8" in err
