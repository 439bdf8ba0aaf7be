"""--verify's per-layer gate (export/layer_gate.py): a correct export passes layer by layer, a
planted defect in one layer fails that layer by name, on the tiny model and on a random-weight
PassionSR-layout miniature that is chaotic end to end."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from artifact_helpers import reseal
from passion_deploy.export import artifact
from passion_deploy.export.exporter import export_artifact
from passion_deploy.export.verify import verify_layers

ENC_LAYER = "encoder.down_blocks.0.resnets.0.conv1"


def _export(ckpt, out, target="onnx", **options):
    export_artifact(str(ckpt), out, target, components=("vae_encoder",), progress=False, **options)
    return out


def _plant(src, dst, component: str, init: str, change):
    """A copy of artifact `src` whose `component` ONNX has initializer `init` changed by
    `change(array) -> array`, the manifest's hash updated (the runtime checks files)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    f = m["components"][component]["onnx"]
    model = onnx.load(str(dst / f))
    (t,) = [t for t in model.graph.initializer if t.name == init]
    t.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(t).copy()), init))
    onnx.save(model, str(dst / f))
    m["files"][f] = artifact.file_record(dst / f)
    reseal(dst, m)  # as if exported so: the planted defect is in the file, not in the manifest
    return dst


def _weight_code_up(w):
    flat = w.reshape(-1)
    i = int(np.argmax(flat < 100))  # a code with room to move one step
    flat[i] += 1
    return w


def _offset_sign(o):
    flat = o.reshape(-1)
    i = int(np.argmax(np.abs(flat)))
    flat[i] = -flat[i]
    return o


def _failed(rows):
    return [r["layer"] for r in rows if not r["passed"]]


@pytest.fixture(scope="module")
def tiny_enc(tmp_path_factory):
    return _export("tiny-w8a8", tmp_path_factory.mktemp("gate") / "tiny")


def test_tiny_export_passes_every_layer(tiny_enc):
    rows = verify_layers(tiny_enc, ["vae_encoder"])["vae_encoder"]
    assert rows and not _failed(rows)
    assert all(r["max_rel_err"] < 1e-3 or r["boundary_elements"] for r in rows)
    assert {"max_abs_err", "boundary_codes", "boundary_elements", "unexplained", "sqnr_db"} <= set(rows[0])


def test_the_gate_shows_its_progress_layer_by_layer(tiny_enc, capsys):
    """--verify's per-layer gate is most of its time (the sd21 UNet's 258 layers, about an hour on
    2 cores): it shows a bar over the layers, and none when progress is off."""
    from passion_deploy.export.verify import verify_artifact

    n_layers = len(verify_layers(tiny_enc, ["vae_encoder"])["vae_encoder"])
    capsys.readouterr()
    verify_artifact(tiny_enc, n_probes=1, progress=True)
    err = capsys.readouterr().err
    assert "gate: vae_encoder" in err and f"/{n_layers} [" in err, err[-400:]
    verify_artifact(tiny_enc, n_probes=1, progress=False)
    assert "gate:" not in capsys.readouterr().err


@pytest.mark.parametrize("init,change", [(f"{ENC_LAYER}.g0.w", _weight_code_up), (f"{ENC_LAYER}.let_offset", _offset_sign)],
                         ids=["weight-code", "let-offset-sign"])
def test_planted_defect_fails_that_layer_by_name(tiny_enc, tmp_path, init, change):
    bad = _plant(tiny_enc, tmp_path / "bad", "vae_encoder", init, change)
    assert _failed(verify_layers(bad, ["vae_encoder"])["vae_encoder"]) == [ENC_LAYER]


# -- a random-weight miniature in PassionSR's layouts (chaotic end to end) -------------------------

@pytest.fixture(scope="module")
def mini_w6(tmp_path_factory):
    from passion_deploy.importers import import_passionsr, job_from_yaml, write_checkpoint
    from passionsr_files import write_passionsr_files

    root = tmp_path_factory.mktemp("passionsr")
    files = write_passionsr_files(root)
    res = import_passionsr(job_from_yaml(files.root / "infer_w6a6.yaml", root=files.root), progress=False)
    ckpt = root / "mini-w6a6.safetensors"
    write_checkpoint(res, ckpt)
    return ckpt


@pytest.fixture(scope="module")
def mini_enc(mini_w6, tmp_path_factory):
    return _export(mini_w6, tmp_path_factory.mktemp("gate") / "mini")


def test_chaotic_miniature_w6a6_passes_layer_by_layer(mini_enc):
    rows = verify_layers(mini_enc, ["vae_encoder"])["vae_encoder"]
    assert rows and not _failed(rows)


def test_chaotic_miniature_planted_defect_fails_by_name(mini_enc, tmp_path):
    m = onnx.load(str(mini_enc / "vae_encoder.onnx"))
    layer = ENC_LAYER if any(t.name == f"{ENC_LAYER}.g0.w" for t in m.graph.initializer) else None
    assert layer is not None
    bad = _plant(mini_enc, tmp_path / "bad", "vae_encoder", f"{layer}.let_offset", _offset_sign)
    assert _failed(verify_layers(bad, ["vae_encoder"])["vae_encoder"]) == [layer]


def test_a_tie_is_measured_in_ulps_of_the_code_an_engine_rounds():
    """A value 40 ulps of |v| = 1.5 below a half step is no tie for an engine that rounds v itself,
    but is one for an engine rounding the unsigned code v + zp with zp = 128 (OpenVINO's
    FakeQuantize: one ulp of 129.5 is 16 of 1.5), as it is for a term |x| / (s D) of 200 code
    units; a value a whole 1e-3 code from the half step is never one (a wrong code stays wrong)."""
    import torch

    from passion_deploy.export.layer_gate import near_tie

    v = torch.tensor([1.5 - 40 * 2.0**-23 * 1.5, 1.5 - 1e-3], dtype=torch.float32)
    assert near_tie(v).tolist() == [False, False]
    assert near_tie(v, v.double().abs() + 128).tolist() == [True, False]
    assert near_tie(v, torch.tensor([200.0, 200.0])).tolist() == [True, False]


@pytest.mark.skipif(not artifact.cpu_has_vnni(), reason="OpenVINO's int8 kernels are exact only with VNNI (spec section 6)")
def test_openvino_int8_graph_passes_every_layer(tmp_path):
    """The openvino target's CPU int8 graph (its FakeQuantize rounds the u8 code with the LET
    transform folded in) passes the gate layer by layer on the tiny encoder: codes it rounds the
    other way lie at half steps within float error of the terms it computes from."""
    pytest.importorskip("openvino")
    out = _export("tiny-w8a8", tmp_path / "ov", target="openvino", options={"mode": "int8"})
    rows = verify_layers(out)["vae_encoder"]
    assert rows and _failed(rows) == []


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_the_gate_reads_each_component_once_not_once_per_layer(tiny_enc, tmp_path, monkeypatch, target):
    """The gate runs one layer at a time; the runtime learns the component's layer names once (the
    openvino target by lowering the graph again, which compiles the whole int8 graph: a minute for
    the sd21 UNet, which once per layer made its --verify hours long; the onnx target by reading
    the model)."""
    if target == "openvino":
        pytest.importorskip("openvino")
        from passion_deploy.export.targets.openvino import convert as where

        art, attr = _export("tiny-w8a8", tmp_path / "ov", target="openvino", options={"mode": "dequant"}), "lower_component"
    else:
        from passion_deploy.export.ort_runtime import OrtRuntime as where

        art, attr = tiny_enc, "component_model"
    calls = []
    real = getattr(where, attr)
    monkeypatch.setattr(where, attr, lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = verify_layers(art, ["vae_encoder"])["vae_encoder"]
    assert len(rows) > 10 and not _failed(rows)
    assert len(calls) == 1, len(calls)


def test_score_flips_counts_the_p_codes_a_moved_score_can_carry():
    """P codes (in code units) 0.02 and 0.11 from a half step are within reach of a score moved by
    1e-3 at values 84 and 117 (each P moves by up to ~2e-3 of itself), one 0.5 away is not, and
    without a moved score only codes at a tie count (sd21 cross-attention: one q code moved five
    P codes of its row, the farthest 0.11 from its half step)."""
    import torch

    from passion_deploy.export.layer_gate import _score_flips

    ps = torch.tensor([[[84.52, 117.61, 50.0, 67.4973, 90.5]]])
    assert _score_flips(ps, 1e-3).flatten().tolist() == [4.0]
    assert _score_flips(ps, 0.0).flatten().tolist() == [1.0]


def _cross_attention(seed=0):
    import torch
    from diffusers.models.attention_processor import Attention

    from calib_helpers import observe_attention
    from passion_deploy.quant.attention import QuantAttnProcessor
    from passion_deploy.quant.quantizer import QuantSpec

    torch.manual_seed(seed)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16)
    hidden, ctx = torch.randn(1, 64, 32) * 3, torch.randn(1, 77, 24) * 3
    proc = QuantAttnProcessor(QuantSpec(8), head_dim=16, s_alpha=0.5)
    attn.set_processor(proc)
    observe_attention(attn, hidden, ctx)
    with torch.no_grad():
        q, k, v = attn.to_q(hidden), attn.to_k(ctx), attn.to_v(ctx)
    return attn, proc, q, k, v


def _engine(attn, proc, q, k, v, moved=None, v_scale=1.0):
    """The core as an engine computes it, with the q code at `moved` (b, token, channel) taken on
    the other side of its half step."""
    import torch

    from passion_deploy.quant.attention import reciprocal

    with torch.no_grad():
        qh, kh, vh = (attn.head_to_batch_dim(t) for t in (q, k, v))
        qq = proc.q_quant(qh * proc.s_qk)
        if moved is not None:
            bh, i, t = moved
            dq = float(proc.q_quant.step_and_zero_point()[0])
            x = float(qh[bh, i, t] * proc.s_qk[t]) / dq
            qq[bh, i, t] += dq * (1.0 if qq[bh, i, t] / dq < x else -1.0)
        kq = proc.k_quant(kh * reciprocal(proc.s_qk))
        p = torch.softmax((qq @ kq.transpose(-1, -2)).float() * attn.scale, dim=-1)
        y = proc.p_quant(p * proc.s_vw) @ (proc.v_quant(vh * reciprocal(proc.s_vw)[:, None]) * v_scale)
        return attn.batch_to_head_dim(y), attn.batch_to_head_dim(proc.attention(qh, kh, vh, attn.scale))


def test_a_q_code_near_its_half_step_is_explained_through_softmax_and_a_wrong_v_is_not():
    """An engine that rounds the shifted code (v - shift, or v + zp) takes a q code 24 ulps of 1
    past a half step (half an ulp of the code it rounds) the other way. That moves a whole row of
    scores and with them the P codes of the row near a half step: the gate explains it by that q
    tie (measured in ulps of |v| + |zp|, as on the sd21 UNet's int8 MHA, where such a code was
    16.5 ulps of 1 from its half step). The same core with V off by one part in 500 fails."""
    import torch

    from passion_deploy.export import layer_gate as lg

    attn, proc, q, k, v = _cross_attention()
    dq, zq = (float(a) for a in proc.q_quant.step_and_zero_point())
    assert abs(zq) > 64  # the shifted code is far larger than v: its ulps are what an engine rounds at
    for i, t in ((i, t) for i in range(q.shape[1]) for t in range(16)):  # the first q code whose move reaches P codes
        s = float(proc.s_qk[t].detach())
        q_tie = q.clone()
        q_tie[0, i, 16 + t] = (0.5 + 24 * 2.0**-23) * dq / s  # v = x s / D just past the half step above code 0
        moved, ref = _engine(attn, proc, q_tie, k, v, moved=(1, i, t))
        if not torch.equal(moved, ref):
            break
    assert not torch.equal(moved, ref)
    q = q_tie
    st = lg.judge_attention(attn, proc, q, k, v, ref, moved)
    assert st["beyond_float"] > 0 and st["unexplained"] == 0 and st["boundary_codes"] >= 1, st
    wrong, _ = _engine(attn, proc, q, k, v, v_scale=1.002)
    assert lg.judge_attention(attn, proc, q, k, v, ref, wrong)["unexplained"] > 0
