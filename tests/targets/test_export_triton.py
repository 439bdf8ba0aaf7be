"""passion-export --target triton on the tiny preset, run in Triton's interpreter (no GPU needed).

Pipelines are statistics-calibrated here at 32 px (an 8x8 latent tile: the interpreter pays
per kernel launch, so the tile is as small as the tiny UNet allows) and saved with their FP
weights, so the checkpoints do not depend on the bundled ones. W8A8 must pass --verify at
>= 45 dB end to end vs the fake-quant model. W6A6 gets a sharper check instead of that bar:
every kernel layer and attention core, fed the fake-quant model's own inputs, equals the
fake-quant module to float rounding; end to end it is then as close as one flipped 6-bit code
allows (a float-rounding tie resolved the other way moves the tiny W6A6 image by ~39 dB, the
fake-quant model's own reaction to a 1e-5 change of its input; see export/verify.py)."""
import json
import shutil

import numpy as np
import pytest
import torch

from passion_deploy.kernels import use_interpreter_without_gpu

use_interpreter_without_gpu()
pytest.importorskip("triton", reason="the triton target needs triton (pip install triton)")

from passion_deploy.checkpoint import save_checkpoint  # noqa: E402
from passion_deploy.cli import bench as bench_cli  # noqa: E402
from passion_deploy.cli import export as export_cli  # noqa: E402
from passion_deploy.cli import sr as sr_cli  # noqa: E402
from passion_deploy.export import artifact  # noqa: E402
from passion_deploy.export.artifact import ArtifactError  # noqa: E402
from passion_deploy.export.exporter import export_artifact, probe_images  # noqa: E402
from passion_deploy.export.targets.onnx.runtime import OnnxSR  # noqa: E402
from passion_deploy.export.targets import open_artifact  # noqa: E402
from passion_deploy.export.targets.triton.modules import DequantModule  # noqa: E402
from passion_deploy.export.targets.triton.runtime import TritonSR  # noqa: E402
from passion_deploy.export.verify import psnr  # noqa: E402
from passion_deploy.quant.attention import QuantAttnProcessor  # noqa: E402
from passion_deploy.quant.layers import QuantLayer  # noqa: E402

PX = 32  # image side of the probes and calibration: latent tile 8x8 (16 px leaves a 1-token half uncalibrated)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The interpreter surrounds every launch with small torch copies; with the other core busy,
    a second OpenMP thread spin-waits on them (the W8A8 export + verify took 95 s with 2 threads,
    56 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def calibrated(config: str):
    from passion_deploy.calibrate import statistics_pass
    from passion_deploy.config import NAMED_CONFIGS
    from passion_deploy.models import build_pipeline
    from passion_deploy.quant import quantize_pipeline

    g = torch.Generator().manual_seed(0)
    lo = torch.rand(2, 3, PX // 8, PX // 8, generator=g)
    x = torch.nn.functional.interpolate(lo, size=(PX, PX), mode="bicubic", align_corners=False).clamp(0, 1)
    pipe = quantize_pipeline(build_pipeline("tiny"), NAMED_CONFIGS[config])
    statistics_pass(pipe, [x[:1], x[1:]], progress=False)
    return pipe


@pytest.fixture(scope="module")
def w8_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-w8a8-32.safetensors"
    save_checkpoint(calibrated("w8a8"), path, include_fp_weights=True)
    return path


@pytest.fixture(scope="module")
def art8(w8_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "tiny"
    assert export_cli.main(["--ckpt", str(w8_ckpt), "--target", "triton", "--out", str(out), "--verify",
                            "--probes", "1", "--bench-runs", "0", "--no-progress"]) == 0
    return out


def test_w8a8_exports_and_verifies_at_45_db(art8, w8_ckpt):
    m = json.loads((art8 / "manifest.json").read_text())
    assert m["target"] == "triton" and m["format_version"] == artifact.FORMAT_VERSION and "isa" not in m
    assert m["source_checkpoint"]["sha256"] == artifact.sha256_file(w8_ckpt)
    assert m["pipeline"]["latent_tile"] == [8, 8] and m["kernels"]["cuda_graph_latent_tile"] == [8, 8]
    # the packed deploy IR is the whole artifact: one sealed file per component, no ONNX
    # the packed IR of each component, and the pipeline the kernels run inside (FP weights included)
    assert set(m["files"]) == {"unet.ir.safetensors", "vae_encoder.ir.safetensors", "vae_decoder.ir.safetensors",
                               "source.safetensors"} and m["source_checkpoint"]["copy"] == "source.safetensors"
    for c in m["components"].values():
        assert "onnx" not in c and m["files"][c["ir"]]["sha256"] == artifact.sha256_file(art8 / c["ir"])
        assert c["packed_weight_bytes"] * 4 == c["quantized_layers_fp32_bytes"]  # int8 codes
    r = json.loads((art8 / "verify.json").read_text())
    assert r["target"] == "triton" and "interpreter" in r["runtime"] and r["passed"] is True
    e2e = r["end_to_end"]["psnr_vs_fakequant_db"]
    assert e2e == "inf" or e2e >= 45.0, f"W8A8 end to end {e2e} dB vs fake-quant"
    for comp, c in r["components"].items():
        assert c["psnr_vs_fakequant_db"] == "inf" or c["psnr_vs_fakequant_db"] >= 45.0, comp
        assert abs(c["psnr_vs_fp_db"] - c["fakequant_psnr_vs_fp_db"]) < 0.5, comp
    rows = r["layers"]["unet"]
    assert {row["op"] for row in rows} == {"qconv", "qlinear", "qattention"}
    assert len(rows) == m["components"]["unet"]["quantized_layers"] + m["components"]["unet"]["quantized_attention"]
    assert rows[0]["layer"] == "conv_in" and (rows[0]["sqnr_db"] == "inf" or rows[0]["sqnr_db"] > 60)
    print(f"\nW8A8 triton vs fake-quant: end to end {e2e} dB, "
          + ", ".join(f"{k} {v['psnr_vs_fakequant_db']} dB" for k, v in r["components"].items())
          + f"; fake-quant vs itself under a 1e-5 input change: {r['reference_sensitivity_db']['per_probe']} dB")


def test_tampered_packed_weights_are_refused(art8, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(art8, d)
    with pytest.raises(ArtifactError, match="is a 'triton' artifact, not 'onnx'"):
        OnnxSR(d)
    data = bytearray((d / "unet.ir.safetensors").read_bytes())
    data[-100] ^= 0x01  # one bit of the packed weight codes
    (d / "unet.ir.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"unet\.ir\.safetensors: sha256 does not match the manifest"):
        TritonSR(d)
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        open_artifact(d)


def test_passion_sr_and_bench_run_a_triton_artifact(w8_ckpt, tmp_path, capsys):
    """An encoder-only artifact (the interpreter's time goes where the test needs it): passion-sr
    runs it with the checkpoint's fake-quant UNet and decoder, passion-bench times it."""
    from PIL import Image

    art = tmp_path / "enc"
    assert export_cli.main(["--ckpt", str(w8_ckpt), "--target", "triton", "--out", str(art),
                            "--components", "vae_encoder", "--no-progress"]) == 0
    assert set(json.loads((art / "manifest.json").read_text())["files"]) == {"vae_encoder.ir.safetensors", "source.safetensors"}
    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 255, (5, 6, 3), dtype=np.uint8)).save(tmp_path / "lr.png")
    assert sr_cli.main(["-i", str(tmp_path / "lr.png"), "-o", str(tmp_path / "out"), "--model", str(art)]) == 0
    assert "Triton kernels U-W8A8_V-W8A8 on Triton CPU interpreter" in capsys.readouterr().out
    assert Image.open(tmp_path / "out" / "lr.png").size == (24, 20)
    rec_path = tmp_path / "bench.json"
    assert bench_cli.main(["--model", str(art), "--vae-size", "16", "--runs", "5", "--no-progress",
                           "--json", str(rec_path)]) == 0
    out = capsys.readouterr().out
    assert "Triton integer kernels (artifact)" in out and "PyTorch FP32 eager" in out and "interpreter" in out
    rec = json.loads(rec_path.read_text())
    assert rec["target"] == "triton" and rec["settings"]["triton_interpreter"] is True
    assert list(rec["components"]) == ["vae_encoder"]
    c = rec["components"]["vae_encoder"]
    assert set(c["variants"]) == {"triton", "torch_fp32"} and c["input"] == {"image": [1, 3, 16, 16]}
    assert all(len(v["samples_s"]) == 5 and v["min_s"] <= v["median_s"] <= v["max_s"] for v in c["variants"].values())
    assert c["speedup"]["vs_torch_fp32"] == c["variants"]["torch_fp32"]["median_s"] / c["variants"]["triton"]["median_s"]


def isolated_unet_errors(rt, ref, z) -> dict[str, float]:
    """Each kernel layer / attention core of the runtime on the inputs its fake-quant twin saw in
    the reference UNet: max abs error relative to the reference output's max abs value."""
    seen, hooks, patched = {}, [], []
    for name, mod in ref.unet.named_modules():
        if isinstance(mod, QuantLayer):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, n=name: seen.__setitem__(n, ("layer", (i[0].clone(),), o.clone()))))
        elif isinstance(getattr(mod, "processor", None), QuantAttnProcessor):
            proc, orig = mod.processor, mod.processor.attention

            def capture(q, k, v, scale, _orig=orig, _n=name):
                out = _orig(q, k, v, scale)
                seen[_n] = ("attention", (q.clone(), k.clone(), v.clone(), scale), out.clone())
                return out
            proc.attention = capture
            patched.append(proc)
    try:
        with torch.no_grad():
            ref.unet_eps(z)
    finally:
        for h in hooks:
            h.remove()
        for proc in patched:
            del proc.attention
    errors = {}
    with torch.no_grad(), rt.kernel_context():
        for name, (kind, args, want) in seen.items():
            mod = rt.pipe.unet.get_submodule(name)
            if kind == "attention":
                got = mod.processor.attention(*args)
            elif hasattr(mod, "kernel"):
                got = mod(*args)
            else:
                continue  # folded into a constant by the IR (t = 999 / fixed context)
            errors[name] = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
    return errors


def test_w6a6_layers_exact_and_end_to_end_within_one_flipped_code(tmp_path):
    pipe = calibrated("w6a6")
    ckpt = tmp_path / "w6.safetensors"
    save_checkpoint(pipe, ckpt, include_fp_weights=True)
    m = export_artifact(str(ckpt), tmp_path / "a6", target="triton", progress=False, pipe=pipe)
    assert all(0.1875 <= c["packed_weight_bytes"] / c["quantized_layers_fp32_bytes"] < 0.2 for c in m["components"].values())
    rt = TritonSR(tmp_path / "a6")
    assert rt.installed["unet"] == {"kernel_layers": 105, "dequant_layers": 0, "kernel_attention": 14, "folded_layers": 27}
    x = probe_images((PX, PX), count=1)[0][0]
    with torch.no_grad():
        z = pipe.encode(x)
    errors = isolated_unet_errors(rt, pipe, z)
    assert len(errors) == 105 + 14  # every kernel layer and attention core (the 27 folded layers are constants)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-5, f"{worst}: relative error {errors[worst]:.2g} on the fake-quant model's own input"
    # end to end (verify_artifact's per-component passes are left out: the interpreter's time is the budget)
    from passion_deploy.export.fp_model import fp_copy

    with torch.no_grad():
        want, fp_img = pipe(x), fp_copy(pipe)(x)
    got = rt(x)
    e2e, e2e_fp, fq_fp = psnr(got, want, True), psnr(got, fp_img, True), psnr(want, fp_img, True)
    # the fake-quant model against itself under 1e-5 input changes, on all three photo probes:
    # mostly no code moves (inf), and where one does, the image moves by ~39 dB
    flips = []
    with torch.no_grad():
        for p in probe_images((PX, PX), count=3)[0]:
            img = pipe(p)
            flips += [psnr(pipe(p * (1 + 1e-5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(s)))), img, True)
                      for s in range(4)]
    print(f"\nW6A6 triton vs fake-quant: end to end {e2e:.2f} dB ({e2e_fp:.2f} dB vs FP, the fake-quant itself "
          f"{fq_fp:.2f} dB); worst isolated layer {worst} rel. err {errors[worst]:.2g}; fake-quant vs itself under a "
          f"1e-5 input change: {[round(f, 2) for f in flips]} dB")
    assert e2e >= 35.0, f"W6A6 end to end {e2e:.2f} dB vs fake-quant"
    assert abs(e2e_fp - fq_fp) < 0.5


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_weight_only_layers_run_dequantized(kind):
    """Weight-only layers (no activation grid) have no integer GEMM: the runtime runs the float
    op on the IR's dequantized weights, which is what the fake-quant layer computes."""
    from torch import nn

    from passion_deploy.export.ir.recipes import layer_recipe
    from passion_deploy.quant.layers import QuantConv, QuantLinear
    from passion_deploy.quant.quantizer import QuantSpec
    from calib_helpers import calibrated_layer

    torch.manual_seed(0)
    kw = dict(wspec=QuantSpec(6), aspec=QuantSpec(6), split=True, use_let=True, let_form="consistent", s_alpha=0.5,
              only_weight=True)
    layer = QuantConv(nn.Conv2d(6, 5, 3, padding=1), **kw) if kind == "conv" else QuantLinear(nn.Linear(6, 5), **kw)
    x = torch.randn(2, 6, 7, 5) if kind == "conv" else torch.randn(2, 9, 6)
    calibrated_layer(layer, x)
    mod = DequantModule(layer_recipe("w", layer), torch.device("cpu"), torch.float32)
    with torch.no_grad():
        want, got = layer(x), mod(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    if kind == "conv":  # the LET correction is a map, exact at the padded border
        assert not torch.allclose(mod._corrections[(7, 5)][:, 0, 0], mod._corrections[(7, 5)][:, 3, 2])
