"""The openvino target's int8_narrow mode (export/targets/openvino/narrow_graph.py), for CPUs without
VNNI: int8 kernels on the convs whose integer operands cannot saturate AVX2's int16 pair sums, the
fake-quant graph in f32 on the other layers (linears and attention cores too: slower as int8 there); what auto picks there, what the runtime accepts, and the
tiny-w6a6 export under ONEDNN_MAX_CPU_ISA=AVX2 passing --verify's per-layer gate."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino")

from layer_graphs import conv_case, single  # noqa: E402
from passion_deploy.export import artifact  # noqa: E402
from passion_deploy.export.ir.trace import ExportError  # noqa: E402
from passion_deploy.export.targets import openvino as ov_target  # noqa: E402
from passion_deploy.export.targets.openvino import narrow_graph as ng  # noqa: E402
from passion_deploy.export.targets.openvino import ovcore  # noqa: E402
from passion_deploy.export.targets.openvino.runtime import check_cpu  # noqa: E402

# the layers PassionSR keeps at 8 bits in the tiny W6A6 pipeline: their operands can saturate
EIGHT_BIT = {"unet": {"conv_out"}, "vae_decoder": {"post_quant_conv", "decoder.conv_out"},
             "vae_encoder": {"encoder.conv_out", "quant_conv"}}


def _conv(bits: str):
    _layer, x, _ref, rec = conv_case("3x3s1", bits, split=False)
    return rec, x


def _with_weights_within(rec, lo: int, hi: int):
    """`rec` with its weight codes clipped so that every grid value j = q + zp lies in [lo, hi]."""
    groups = []
    for wg in rec.weights:
        zp = np.asarray(wg.grid.zp, np.int64).reshape((-1,) + (1,) * (wg.codes.ndim - 1))
        codes = np.clip(wg.codes.astype(np.int64), lo - zp, hi - zp).astype(wg.codes.dtype)
        groups.append(dataclasses.replace(wg, codes=codes))
    return dataclasses.replace(rec, weights=groups)


# -- the rule -------------------------------------------------------------------------------------

def test_a_6_bit_layer_cannot_saturate_and_an_8_bit_one_can():
    rec6, _ = _conv("w6a6")
    rec8, _ = _conv("w8a8")
    (g6,), (g8,) = ng.layer_gemms(rec6, 4), ng.layer_gemms(rec8, 4)
    assert g6.a_dtype == "u8" and g6.a[1] <= 63 and g6.b_dtype == "s8"
    assert g8.a == (0, 255) and max(-g8.b[0], g8.b[1]) > 100
    assert ng.cannot_saturate(rec6, 4) and not ng.cannot_saturate(rec8, 4)


def test_the_rule_reads_the_operands_not_the_bit_width():
    """An 8-bit layer whose weights happen to lie in [-64, 64] cannot saturate (2 * 255 * 64 = 32640;
    a single conv with codes in [-64, 63] measured exact without VNNI), one more code on either side
    can (2 * 255 * 65 = 33150 > 32767); a 6-bit
    activation grid far from 0 (its u8 operand on [192, 255]) can, with full-range weights."""
    rec8, _ = _conv("w8a8")
    assert ng.cannot_saturate(_with_weights_within(rec8, -64, 64), 4)
    assert not ng.cannot_saturate(_with_weights_within(rec8, -65, 63), 4)
    assert not ng.cannot_saturate(_with_weights_within(rec8, -64, 65), 4)
    rec6, _ = _conv("w6a6")
    act6 = rec6.acts[0]
    assert ng.cannot_saturate(dataclasses.replace(rec8, acts=[act6]), 4)  # 8-bit weights, u8 operand <= 63
    far = dataclasses.replace(act6, zp=np.array(192 - act6.qmin))  # 6-bit codes, grid values j in [192, 255]
    (gm,) = ng.layer_gemms(dataclasses.replace(rec8, acts=[far]), 4)
    assert gm.a[1] == 255  # no u8 zero point brings those codes below 192
    assert not ng.cannot_saturate(dataclasses.replace(rec8, acts=[far]), 4)
    assert ng.cannot_saturate(dataclasses.replace(_with_weights_within(rec8, -64, 64), acts=[far]), 4)


# -- the graph: a 6-bit layer int8, an 8-bit one f32 ----------------------------------------------

@pytest.mark.parametrize("bits", ["w6a6", "w8a8"])
def test_a_narrow_layer_is_lowered_int8_and_a_wide_one_as_the_fake_quant(bits, tmp_path):
    """In the ONNX: a 6-bit conv as the int8 graph writes it (u8 QuantizeLinear, no Round), an 8-bit
    one as the fake-quant graph (Round, no Q/DQ pair, its Divs guarded). Compiled with the mode's
    settings (low-precision transformations on): the 6-bit conv an int8 primitive, the 8-bit one an
    f32 Conv on f32 inputs; both track the fake-quant layer in f32 (ONNX Runtime and OpenVINO)."""
    from passion_deploy.export.targets.openvino.convert import NO_FOLD

    rec, x = _conv(bits)
    g = single("qconv", rec, {"x": x}, (1, 6, 11, 9))
    model = ng.lower_graph_narrow(g)
    ops = [n.op_type for n in model.graph.node]
    narrow = bits == "w6a6"
    assert ("QuantizeLinear" in ops) == narrow and ("Round" in ops) != narrow
    assert any(NO_FOLD in n.input for n in model.graph.node) != narrow
    c = ovcore.core().compile_model(ovcore.convert(model, tmp_path, "m"), "CPU", ovcore.compile_config("f32", ng.MODE, 1))
    n_int, n_all = ovcore.int8_primitives(c)
    assert n_all >= 1 and n_int == (1 if narrow else 0)
    bad, found = ovcore.f32_layer_int8_kernels(c, [rec.name])
    assert found >= 1 and (bad != []) == narrow
    with torch.no_grad():
        from passion_deploy.metrics import psnr

        layer, x2, ref, _ = conv_case("3x3s1", bits, split=False)
        y = c({"x": x2.numpy()})[0]
    assert psnr(torch.from_numpy(y), torch.from_numpy(ref), peak=float(ref.max() - ref.min())) > 60


@pytest.fixture(scope="module")
def w6a6_graphs():
    """The bundled tiny-w6a6 pipeline's UNet (at its 32x32 latent tile, where it was calibrated) and
    VAE decoder traced to the deploy IR on random latents."""
    import passion_deploy
    from passion_deploy.export.ir.trace import trace_unet, trace_vae_decoder

    pipe = passion_deploy.load("tiny-w6a6")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return {"unet": trace_unet(pipe, torch.randn(1, 4, 32, 32, generator=g))[0],
                "vae_decoder": trace_vae_decoder(pipe, torch.randn(1, 4, 8, 8, generator=g))[0]}


@pytest.mark.parametrize("comp", ["unet", "vae_decoder"])
def test_tiny_w6a6_runs_its_6_bit_convs_int8_and_the_rest_in_f32(w6a6_graphs, comp, tmp_path):
    """Every quantized conv of the tiny W6A6 component but the 8-bit first/last ones is int8 by the
    rule, every linear and attention core f32; compiled as the runtime compiles it, the f32 layers'
    convs and matmuls run f32 kernels on f32 inputs (the low-precision transformations, on for the
    int8 layers, leave them alone), and the int8 convs give at least one int8 primitive per
    K-group. The runtime's check refuses the compiled model if one of the int8 layers is claimed to
    be f32 (the check sees int8 kernels)."""
    g = w6a6_graphs[comp]
    as_int8 = ng.int8_layers(g)
    ops = {n.name: n.op for n in g.nodes if n.name in as_int8}
    f32 = {layer for layer, int8 in as_int8.items() if not int8}
    assert f32 == EIGHT_BIT[comp] | {layer for layer, op in ops.items() if op != "qconv"}
    c = ovcore.core().compile_model(ovcore.convert(ng.lower_graph_narrow(g), tmp_path, comp), "CPU",
                                    ovcore.compile_config("f32", ng.MODE, 2))
    bad, found = ovcore.f32_layer_int8_kernels(c, sorted(f32))
    assert bad == [] and found >= len(f32) - sum(op == "qattention" for op in ops.values())
    for op in c.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if op.get_friendly_name().startswith(tuple(f"n.{layer}." for layer in EIGHT_BIT[comp])) and \
                rt["layerType"].astype(str) == "Convolution":
            assert rt["runtimePrecision"].astype(str) == "f32" and "f32" in rt["primitiveType"].astype(str)
    wide_int8 = [n for n in g.nodes if as_int8.get(n.name)]
    n_int, _ = ovcore.int8_primitives(c)
    int8_gemms = sum(len(g.recipes[n.attrs["recipe"]].weights) for n in wide_int8)
    assert wide_int8 and n_int >= int8_gemms > 0
    ovcore.check_compiled(c, ng.MODE, "f32", "t", sorted(f32))
    an_int8_layer = next(n.name for n in wide_int8 if n.op == "qconv")
    with pytest.raises(artifact.ArtifactError, match="layers exported to run in f32 as int8 primitives"):
        ovcore.check_compiled(c, ng.MODE, "f32", "t", [an_int8_layer])


# -- the mode: auto, refusals, the runtime, the serve spec ----------------------------------------

def _cpu(monkeypatch, vnni: bool, cap: str | None = None, flags=("avx2", "avx512_vnni")):
    monkeypatch.setattr(artifact, "cpu_has_vnni", lambda: vnni)
    monkeypatch.setattr(artifact, "cpu_flags", lambda: set(flags))
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)


@pytest.mark.parametrize("vnni, cap, want", [
    (True, None, "int8"), (False, None, "int8_narrow"),
    (True, "AVX2", "int8_narrow"), (True, "avx512_core", "int8_narrow"), (True, "AVX512_CORE_VNNI", "int8"),
    (True, "AVX512_CORE_AMX", "int8"), (True, "ALL", "int8"), (False, "AVX512_CORE_VNNI", "int8_narrow"),
    (True, "AVX2_VNNI", "int8_narrow"),  # an AVX-512 VNNI CPU without AVX-VNNI capped to AVX2_VNNI
])
def test_auto_takes_int8_with_vnni_as_onednn_sees_it_and_int8_narrow_without(monkeypatch, vnni, cap, want):
    _cpu(monkeypatch, vnni, cap)
    mode, why = ov_target.resolve_mode("auto")
    assert mode == want
    assert why == "auto: this CPU has VNNI" if want == "int8" else why.startswith("auto: this CPU has no VNNI")
    assert ov_target.resolve_mode("int8_narrow") == ("int8_narrow", "asked for")  # exact on every x86 CPU
    if want == "int8":
        assert ov_target.resolve_mode("int8") == ("int8", "asked for")
    else:
        for explicit in ov_target.INT8_MODES:
            with pytest.raises(ExportError, match=f"--ov-mode {explicit} is not exact on this CPU.*int8_narrow"):
                ov_target.resolve_mode(explicit)


def test_avx2_vnni_cap_keeps_vnni_on_a_cpu_with_avx_vnni(monkeypatch):
    _cpu(monkeypatch, True, "AVX2_VNNI", flags=("avx2", "avx_vnni"))
    assert artifact.onednn_has_vnni() and ov_target.resolve_mode("auto")[0] == "int8"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # oneDNN's older name for the variable
    assert not artifact.onednn_has_vnni()


def _manifest(mode: str) -> dict:
    comp = {"openvino_xml": "unet.xml", "openvino_bin": "unet.bin", "input_shapes": {"latent": [1, 4, 8, 8]}}
    if mode == ng.MODE:
        comp.update(openvino_int8_layers=3, openvino_f32_layers=["conv_out"])
    return {"openvino": {"mode": mode, "precision": "f32", "version": "2026.4.1"}, "components": {"unet": comp}}


def test_the_runtime_runs_an_int8_narrow_artifact_without_vnni_and_refuses_int8(monkeypatch):
    _cpu(monkeypatch, False)
    check_cpu(_manifest(ng.MODE), "art")
    check_cpu(_manifest("dequant"), "art")
    for mode in ov_target.INT8_MODES:
        with pytest.raises(artifact.ArtifactError, match=f"exported with --ov-mode {mode}, which is not exact"):
            check_cpu(_manifest(mode), "art")
    _cpu(monkeypatch, True, "AVX2")  # oneDNN capped below VNNI: its int8 kernels saturate as without it
    with pytest.raises(artifact.ArtifactError, match="exported with --ov-mode int8, which is not exact"):
        check_cpu(_manifest("int8"), "art")
    _cpu(monkeypatch, True)
    check_cpu(_manifest("int8"), "art")


def test_int8_narrow_compiles_with_the_low_precision_transformations_on_and_serves_so():
    assert "LP_TRANSFORMS_MODE" not in ovcore.compile_config("f32", ng.MODE)
    assert ovcore.compile_config("f32", "dequant")["LP_TRANSFORMS_MODE"] == "NO"
    for mode in (ng.MODE, "dequant"):
        spec = ov_target.TARGET.serve_spec(SimpleNamespace(manifest=_manifest(mode)))
        assert ("LP_TRANSFORMS_MODE" in spec.components["unet"].parameters) == (mode == "dequant")


def test_the_report_names_the_layers_that_run_in_f32():
    m = _manifest(ng.MODE)
    m["openvino"].update(mode_chosen="auto: this CPU has no VNNI", exact_on=ov_target.EXACT_ON[ng.MODE])
    m["components"]["unet"].update(openvino_bytes=1e6, openvino_int8_weight_bytes=5e5, quantized_ops=7)
    line = ov_target.TARGET.report(m).lines[0]
    assert line.endswith("7 int8 or fake-quantized convs/matmuls; 3 layers int8, 1 f32 (conv_out)")
    assert "every x86 CPU" in ov_target.EXACT_ON[ng.MODE] and ov_target.EXACT_ON["int8"] == "CPUs with VNNI"


# -- the export under AVX2 (oneDNN capped in a fresh process) --------------------------------------

def _python_env(**extra) -> dict:
    """This process's environment for a child Python that imports the same passion_deploy (the
    checkout's or the installed one) and OpenVINO with `extra` set before oneDNN starts."""
    import passion_deploy

    root = str(Path(passion_deploy.__file__).parent.parent)
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


@pytest.mark.slow
def test_tiny_w6a6_under_avx2_exports_int8_narrow_and_every_layer_passes(tmp_path):
    """`passion-export --ckpt tiny-w6a6 --target openvino --verify` with oneDNN capped to AVX2 (no
    VNNI: what an AVX2-only CPU runs; the variable is read when oneDNN starts, so in a fresh
    process): auto picks int8_narrow and says so, the 8-bit layers are the f32 ones, and every
    quantized layer passes --verify's per-layer gate (with every layer int8 the 8-bit post_quant_conv
    and quant_conv fail there: 50 and 4 dB). 12.5 minutes on this shared 2-core machine."""
    out = tmp_path / "w6"
    code = ("import sys; from passion_deploy.cli.export import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "--ckpt", "tiny-w6a6", "--target", "openvino", "--out", str(out),
                        "--verify", "--probes", "1", "--bench-runs", "0", "--no-progress"],
                       env=_python_env(ONEDNN_MAX_CPU_ISA="AVX2"), cwd=tmp_path, capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    m = artifact.read_manifest(out)
    o = m["openvino"]
    assert o["mode"] == "int8_narrow" and o["mode_chosen"].startswith("auto: this CPU has no VNNI")
    assert o["exported_on"]["onednn_max_cpu_isa"] == "AVX2" and o["exported_on"]["onednn_vnni"] is False
    assert o["exact_on"].startswith("every x86 CPU")
    for comp, c in m["components"].items():
        assert EIGHT_BIT[comp] < set(c["openvino_f32_layers"]) and c["openvino_int8_layers"] > 10, comp
    report = json.loads((out / "verify.json").read_text())
    crit = report["criterion"]
    assert report["passed"] and crit["gate"] == "layers" and crit["layers_failed"] == []
    rows = [row for comp_rows in report["layers"].values() for row in comp_rows]
    assert len(rows) == crit["layers_checked"] == 167 and all(row["passed"] for row in rows)
    assert "int8 convs where the operands cannot saturate" in r.stderr + r.stdout
