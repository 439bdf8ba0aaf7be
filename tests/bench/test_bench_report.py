"""passion-bench --report: Markdown plus PNG charts (latency, memory, per-layer SQNR), from a fresh
benchmark or from a saved record (--from-json)."""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the charts need matplotlib (pip install passion-deploy[report])")

from PIL import Image  # noqa: E402

from passion_deploy.benchmarks import charts, report  # noqa: E402
from passion_deploy.cli import bench as bench_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHA = "ab" * 32


def _variant(samples, weights, peak=None, base=None, inproc=None, **extra):
    s = sorted(samples)
    r = {"samples_s": list(samples), "median_s": s[len(s) // 2], "min_s": s[0], "max_s": s[-1],
         "weight_bytes_on_disk": weights, "peak_rss_bytes": 987_000_000}  # the shared process peak: not plotted
    if peak is not None:
        r["subprocess_memory"] = {"baseline_rss_bytes": base, "after_load_rss_bytes": base + 1, "peak_rss_bytes": peak}
    if inproc is not None:
        r["load_and_warmup_rss_increase_bytes"] = inproc
    r.update(extra)
    return r


def make_record(model_dir: Path) -> dict:
    """Two components (record order: decoder before UNet) x three variants, one of them a name the
    report does not know; asymmetric samples so the median is not the middle of min and max."""
    comps = {
        "vae_decoder": {
            "int_onnx": _variant([0.030, 0.020, 0.021, 0.022, 0.050], 1_000_000, 60_000_000, 50_000_000, 4_000_000),
            "fp32_onnx": _variant([0.041, 0.040, 0.045, 0.039, 0.090], 4_000_000, 80_000_000, 50_000_000, 0),
            "mystery_backend": _variant([0.011, 0.010, 0.012, 0.013, 0.014], 2_000_000, gpu_arena_bytes=7_000_000),
        },
        "unet": {
            "int_onnx": _variant([0.200, 0.150, 0.160, 0.155, 0.400], 3_000_000, 90_000_000, 50_000_000, 9_000_000),
            "fp32_onnx": _variant([0.300, 0.310, 0.290, 0.305, 0.500], 12_000_000, 110_000_000, 50_000_000, 1_000),
            "mystery_backend": _variant([0.100, 0.120, 0.110, 0.090, 0.130], 6_000_000, gpu_arena_bytes=20_000_000),
        },
    }
    rec = {"model_dir": str(model_dir), "target": "onnx", "artifact_variant": "int_onnx",
           "source_checkpoint": {"name": "tiny-w8a8", "preset": "tiny", "weights_source": "bundled", "sha256": SHA},
           "quant_config": "U-W8A8_V-W8A8", "isa": "portable",
           "machine": {"cpu": "Test CPU 9000", "logical_cpus": 2, "cpu_flags": {"avx2": True, "avx512_vnni": False},
                       "load_average": [1.0, 1.0, 1.0], "load_average_end": [1.5, 1.0, 1.0], "torch_threads": 1},
           "versions": {"passion_deploy": "0.1.0", "torch": "2.x", "onnxruntime": "1.x", "onnx": "1.x"},
           "settings": {"runs": 5, "warmup": 1, "ort_intra_op_threads": 1}, "components": {}}
    for comp, vs in comps.items():
        rec["components"][comp] = {"input": {"latent": [1, 4, 8, 8]}, "variants": vs, "ir_vs_fp32_bytes": 0.25,
                                   "speedup": {f"vs_{v}": r["median_s"] / vs["int_onnx"]["median_s"]
                                               for v, r in vs.items() if v != "int_onnx"}}
    return rec


def make_verify(sha: str = SHA) -> dict:
    """Per-layer rows in record order unet, vae_decoder, vae_encoder (not pipeline order); one exact layer."""
    return {"quant_config": "U-W8A8_V-W8A8", "target": "onnx", "source_checkpoint": {"sha256": sha},
            "layers": {"unet": [{"layer": f"u{i}", "op": "qconv", "bits": "W8A8", "sqnr_db": v}
                                for i, v in enumerate([60.0, 45.5, "inf", 30.25, 41.0])],
                       "vae_decoder": [{"layer": "d0", "sqnr_db": 50.0}, {"layer": "d1", "sqnr_db": 35.5}],
                       "vae_encoder": [{"layer": "e0", "sqnr_db": 70.0}, {"layer": "e1", "sqnr_db": 65.0},
                                       {"layer": "e2", "sqnr_db": 62.5}]}}


@pytest.fixture
def art(tmp_path):
    d = tmp_path / "artifact"
    d.mkdir()
    (d / "verify.json").write_text(json.dumps(make_verify()))
    return d


def _bars(ax):
    return [p for p in ax.patches if p.get_gid()]


def test_latency_chart_bars_are_medians_and_whiskers_are_sample_extremes(tmp_path):
    rec = make_record(tmp_path)
    fig = charts.latency_figure(rec)
    axes = fig.get_axes()
    assert [a.get_title().split(" ")[0] for a in axes] == ["unet", "vae_decoder"]  # pipeline order
    assert sum(len(_bars(a)) for a in axes) == 2 * 3  # components x variants
    for ax in axes:
        comp = ax.get_title().split(" ")[0]
        vs = rec["components"][comp]["variants"]
        k = 1e3 if "ms" in ax.get_ylabel() else 1.0
        (cont,) = [c for c in ax.containers if hasattr(c, "errorbar")]
        segs = cont.errorbar.lines[2][0].get_segments()
        assert len(segs) == len(cont.patches) == 3
        for bar, seg in zip(cont.patches, segs):
            v = bar.get_gid().split("/")[1]
            smp = vs[v]["samples_s"]
            assert bar.get_height() == pytest.approx(np.median(smp) * k)
            assert sorted(seg[:, 1]) == pytest.approx([min(smp) * k, max(smp) * k])
            assert seg[0, 0] == pytest.approx(bar.get_x() + bar.get_width() / 2)
        ratios = {t.get_text() for t in ax.texts}
        art = np.median(vs["int_onnx"]["samples_s"])
        assert ratios == {f"{np.median(r['samples_s']) / art:.2f}x" for r in vs.values()}
        assert "1.00x" in ratios
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["integer ONNX (artifact)", "FP32 ONNX Runtime", "mystery_backend"]  # unknown: its key


def test_latency_chart_skips_a_variant_a_component_lacks(tmp_path):
    rec = make_record(tmp_path)
    del rec["components"]["unet"]["variants"]["fp32_onnx"]
    fig = charts.latency_figure(rec)
    assert [len(_bars(a)) for a in fig.get_axes()] == [2, 3]


def test_memory_chart_weights_and_memory_fields(tmp_path):
    rec = make_record(tmp_path)
    fig = charts.memory_figure(rec)
    axes = fig.get_axes()
    assert len(axes) == 4  # weights row and memory row, a column per component
    weights_unet, weights_dec, mem_unet, mem_dec = axes
    for ax, comp in ((weights_unet, "unet"), (weights_dec, "vae_decoder")):
        vs = rec["components"][comp]["variants"]
        bars = _bars(ax)
        assert len(bars) == 3
        assert {b.get_gid().split("/")[1]: b.get_height() for b in bars} == pytest.approx(
            {v: r["weight_bytes_on_disk"] / 1e6 for v, r in vs.items()})
    # memory: peak over baseline (2 onnx variants), in-process increase (2), the unknown GPU field (1)
    ticks = [t.get_text().replace("\n", " ") for t in mem_unet.get_xticklabels()]
    assert ticks == ["peak RSS over baseline, own process", "load + warm-up RSS increase, in-process", "gpu_arena_bytes"]
    for ax, comp in ((mem_unet, "unet"), (mem_dec, "vae_decoder")):
        vs = rec["components"][comp]["variants"]
        got = {tuple(b.get_gid().split("/")[1:]): b.get_height() for b in _bars(ax)}
        want = {}
        for v, r in vs.items():
            if "subprocess_memory" in r:
                sm = r["subprocess_memory"]
                want[(v, "peak_over_baseline")] = (sm["peak_rss_bytes"] - sm["baseline_rss_bytes"]) / 1e6
                want[(v, "load_and_warmup_rss_increase_bytes")] = r["load_and_warmup_rss_increase_bytes"] / 1e6
        want[("mystery_backend", "gpu_arena_bytes")] = vs["mystery_backend"]["gpu_arena_bytes"] / 1e6
        assert got == pytest.approx(want)
        assert not any(b.get_height() == pytest.approx(987.0) for b in _bars(ax))  # shared process peak


def test_layer_chart_one_line_per_component_along_pipeline_depth():
    ver = make_verify()
    fig = charts.layer_error_figure(ver)
    (ax,) = fig.get_axes()
    lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
    assert list(lines) == ["vae_encoder", "unet", "vae_decoder"]  # pipeline order, not the file's
    start = 0
    for comp, ln in lines.items():
        rows = ver["layers"][comp]
        x = np.asarray(ln.get_xdata(), float)
        y = np.asarray(ln.get_ydata(), float)
        assert list(x) == list(range(start, start + len(rows)))  # consecutive along the depth
        want = [math.nan if r["sqnr_db"] == "inf" else r["sqnr_db"] for r in rows]
        np.testing.assert_array_equal(y, np.asarray(want, float))
        start += len(rows)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["vae_encoder: 3 layers, lowest 62.5 dB", "unet: 5 layers, lowest 30.2 dB",
                      "vae_decoder: 2 layers, lowest 35.5 dB"]
    # the exact (inf) layer is drawn as a marker above every finite value, at its depth (3 + 2)
    tops = [c.get_offsets() for c in ax.collections if len(c.get_offsets()) and c.get_offsets()[0][1] > 70]
    assert len(tops) == 1 and list(tops[0][:, 0]) == [5]


def _png_ok(path: Path, fig_width_in: float | None = None):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        im.verify()
    assert w > 300 and h > 200
    if fig_width_in:
        assert w == round(fig_width_in * 100)


def _links(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def test_render_report_writes_markdown_and_linked_pngs(art, tmp_path):
    rec = make_record(art)
    out = tmp_path / "reports" / "bench_x.md"
    out.parent.mkdir()
    out.write_text("old report\n")
    written = report.render_report(rec, out)
    assert set(written) == {"latency", "memory", "layers"}
    assert {p.name for p in written.values()} == {"bench_x_latency.png", "bench_x_memory.png", "bench_x_layers.png"}
    _png_ok(written["latency"], max(4.2 * 2, 6.0))
    _png_ok(written["memory"])
    _png_ok(written["layers"], 10.0)
    md = out.read_text()
    assert "old report" not in md
    for comp in ("unet", "vae_decoder"):
        assert f"| {comp} |" in md
    for name in ("integer ONNX (artifact)", "FP32 ONNX Runtime", "mystery_backend"):
        assert md.count(f"| {name} |") == 2
    assert "Test CPU 9000, 2 logical CPUs" in md and "1 intra-op thread(s)" in md
    assert "quote the **ratios**" in md
    links = _links(md)
    assert sorted(links) == sorted(p.name for p in written.values())  # relative, next to OUT.md
    assert all((out.parent / link).is_file() for link in links)
    # the per-layer table: lowest finite layer and the exact one counted
    assert re.search(r"\| unet \| 5 \| 45\.5 \| 30\.2 \(`u3`\) \| 1 \|", md)
    assert re.search(r"\| vae_encoder \| 3 \| 65\.0 \| 62\.5 \(`e2`\) \| 0 \|", md)
    assert not list(out.parent.glob(".*.tmp"))  # atomic writes leave no temp files


def test_missing_verify_json_is_a_note_not_an_error(tmp_path):
    rec = make_record(tmp_path / "no_such_artifact")
    out = tmp_path / "r.md"
    written = report.render_report(rec, out)
    assert set(written) == {"latency", "memory"}
    assert not (tmp_path / "r_layers.png").exists()
    md = out.read_text()
    assert "Per-layer chart skipped: no `" in md and "verify.json" in md
    assert "r_layers.png" not in md and sorted(_links(md)) == ["r_latency.png", "r_memory.png"]


def test_verify_json_of_another_checkpoint_is_not_used(art, tmp_path):
    (art / "verify.json").write_text(json.dumps(make_verify(sha="cd" * 32)))
    written = report.render_report(make_record(art), tmp_path / "r.md")
    assert "layers" not in written
    assert "belongs to a different checkpoint" in (tmp_path / "r.md").read_text()


def test_without_matplotlib_the_markdown_still_comes(art, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    written = report.render_report(make_record(art), tmp_path / "r.md")
    assert written == {}
    md = (tmp_path / "r.md").read_text()
    assert "matplotlib is not installed" in md and not _links(md) and "| unet |" in md
    assert not list(tmp_path.glob("*.png"))


def test_cli_from_json(art, tmp_path, capsys):
    rec_path = tmp_path / "rec.json"
    rec_path.write_text(json.dumps(make_record(art)))
    out = tmp_path / "out" / "b.md"
    assert bench_cli.main(["--from-json", str(rec_path), "--report", str(out), "--note", "one thread, shared box"]) == 0
    assert "**one thread, shared box**" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.md", "b_latency.png", "b_layers.png", "b_memory.png"]
    # --verify-json overrides the record's model directory
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps(make_verify()))
    (art / "verify.json").unlink()
    assert bench_cli.main(["--from-json", str(rec_path), "--report", str(tmp_path / "c.md"),
                           "--verify-json", str(other)]) == 0
    assert (tmp_path / "c_layers.png").is_file()
    # errors: neither / both sources, a file that is not a record
    with pytest.raises(SystemExit):
        bench_cli.main(["--report", str(out)])
    with pytest.raises(SystemExit):
        bench_cli.main(["--model", str(art), "--from-json", str(rec_path)])
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert bench_cli.main(["--from-json", str(tmp_path / "bad.json"), "--report", str(tmp_path / "d.md")]) == 2
    assert "not a passion-bench record" in capsys.readouterr().err
    assert not (tmp_path / "d.md").exists()


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "results").glob("*.json")), ids=lambda p: p.name)
def test_committed_records_render(path, tmp_path):
    rec = json.loads(path.read_text())
    if report.record_problem(rec):
        pytest.skip(f"{path.name}: {report.record_problem(rec)}")
    out = tmp_path / "r.md"
    written = report.render_report(rec, out)
    assert {"latency", "memory"} <= set(written)
    fig = charts.latency_figure(rec)
    n = sum(len(c["variants"]) for c in rec["components"].values())
    assert sum(len(_bars(a)) for a in fig.get_axes()) == n
    md = out.read_text()
    assert rec["machine"]["cpu"] in md and all(f"| {c} |" in md for c in rec["components"])
    assert all((tmp_path / link).is_file() for link in _links(md))


def test_end_to_end_bench_report_on_a_tiny_artifact(tmp_path, capsys):
    """passion-export a decoder-only tiny artifact, then passion-bench --report on it."""
    from passion_deploy.cli import export as export_cli

    pytest.importorskip("onnxruntime")
    d = tmp_path / "tiny"
    assert export_cli.main(["--ckpt", "tiny-w8a8", "--target", "onnx", "--out", str(d), "--components", "vae_decoder",
                            "--no-progress"]) == 0
    out = tmp_path / "rep" / "tiny.md"
    assert bench_cli.main(["--model", str(d), "--runs", "5", "--no-memory", "--vae-size", "16", "--threads", "1",
                           "--no-progress", "--json", str(tmp_path / "rec.json"), "--report", str(out)]) == 0
    md = out.read_text()
    rec = json.loads((tmp_path / "rec.json").read_text())
    variants = rec["components"]["vae_decoder"]["variants"]
    assert set(variants) == {"int_onnx", "fp32_onnx", "torch_fp32"}
    for name in ("integer ONNX (artifact)", "FP32 ONNX Runtime", "PyTorch FP32 eager"):
        assert f"| vae_decoder | 1x4x4x4 | {name} |" in md
    assert sorted(_links(md)) == ["tiny_latency.png", "tiny_memory.png"]
    assert "Per-layer chart skipped" in md  # exported without --verify
    for link in _links(md):
        _png_ok(out.parent / link)
    fig = charts.latency_figure(rec)
    (cont,) = [c for c in fig.get_axes()[0].containers if hasattr(c, "errorbar")]
    assert len(cont.patches) == 3


def _timed(name: str, seconds: float, fields: dict, calls: list):
    """A variant that logs its load and each run, and takes `seconds` per run."""
    import time

    import torch

    from passion_deploy.export.runtime import TimingVariant

    def load():
        calls.append(("load", name))

        def fn(x):
            calls.append(("run", name))
            time.sleep(seconds)
            return x
        return fn
    return TimingVariant(name, load, torch.zeros(1, 4, 2, 2), fields)


def test_one_loop_loads_in_the_warm_up_then_alternates_the_variants():
    from passion_deploy.benchmarks import harness

    calls = []
    variants = [_timed("artifact", 0.002, {"weight_bytes_on_disk": 10}, calls),
                _timed("baseline", 0.008, {"weight_bytes_in_memory": 1_000_000}, calls)]
    rec = harness.time_component(variants, runs=5, warmup=2, progress=False, desc="t")
    # each loads inside its own warm-up (so loading counts in its memory), then the runs alternate
    assert calls[:6] == [("load", "artifact"), ("run", "artifact"), ("run", "artifact"),
                         ("load", "baseline"), ("run", "baseline"), ("run", "baseline")]
    assert calls[6:] == [("run", "artifact"), ("run", "baseline")] * 5
    assert rec["artifact"]["weight_bytes_on_disk"] == 10
    assert rec["baseline"]["load_and_warmup_rss_increase_bytes"] >= 1_000_000  # weights held before the warm-up count
    for r in rec.values():
        assert len(r["samples_s"]) == 5 and r["min_s"] <= r["median_s"] <= r["max_s"] and r["peak_rss_bytes"] > 0
    speed = report.speedups(rec, "artifact")
    assert list(speed) == ["vs_baseline"] and speed["vs_baseline"] > 1
    line = report.result_line("unet", rec, speed)
    assert line.startswith("  unet         artifact ") and line.endswith(f"-> {speed['vs_baseline']:.2f}x vs baseline")


def _decoder_artifact(tmp_path: Path, *args: str) -> Path:
    from passion_deploy.cli import export as export_cli

    d = tmp_path / "art"
    assert export_cli.main(["--ckpt", "tiny-w8a8", "--out", str(d), "--components", "vae_decoder", "--no-progress",
                            *args]) in (0, 3)  # 3: a trt artifact without engines
    return d


def test_a_trt_artifact_without_engines_is_refused_in_one_sentence(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    from passion_deploy.export.targets.trt import build as trt_build

    monkeypatch.setattr(trt_build, "missing_for_engines", lambda: ["TensorRT"])
    d = _decoder_artifact(tmp_path, "--target", "trt")
    capsys.readouterr()
    assert bench_cli.main(["--model", str(d), "--runs", "5", "--no-progress"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"passion-bench: {d}: a trt artifact is benchmarked through its engines, but it has no engines; its Q/DQ ONNX "
        "runs in ONNX Runtime only to check the graph, which says nothing about TensorRT's speed"]


def test_timing_only_times_a_vnni_artifact_on_a_cpu_without_vnni(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    from passion_deploy.export import artifact

    d = _decoder_artifact(tmp_path, "--target", "onnx", "--isa", "vnni")
    monkeypatch.setattr(artifact, "cpu_has_vnni", lambda: False)
    capsys.readouterr()
    assert bench_cli.main(["--model", str(d), "--runs", "5", "--no-progress", "--no-memory"]) == 2
    assert "saturate on this CPU without VNNI" in capsys.readouterr().err
    rec_path = tmp_path / "rec.json"
    assert bench_cli.main(["--model", str(d), "--runs", "5", "--no-progress", "--no-memory", "--no-torch", "--timing-only",
                           "--vae-size", "16", "--threads", "1", "--json", str(rec_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  vae_decoder  int_onnx .* ms   fp32_onnx .* ms   -> \d+\.\d\dx vs fp32_onnx$", out, re.M)
    assert "**timing only**" in out
    rec = json.loads(rec_path.read_text())
    assert rec["artifact_variant"] == "int_onnx" and rec["isa"] == "vnni" and "runtime" not in rec
    assert rec["settings"]["isa_check_skipped_outputs_invalid"] is True and rec["settings"]["ort_intra_op_threads"] == 1
    assert list(rec["components"]["vae_decoder"]["variants"]) == ["int_onnx", "fp32_onnx"]  # --no-torch
