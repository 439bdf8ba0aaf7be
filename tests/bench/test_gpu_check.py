"""The GPU check's dry run (python -m passion_deploy.benchmarks.gpu_check --dry-run): the same
script a GPU session runs, on the CPU with the tiny model and the kernels in Triton's
interpreter, so a GPU run does not die on a typo. Every step and every end-to-end part must
complete (a raise anywhere is recorded in the JSON and fails this test), the report must
exist, and the verdicts must read the way a GPU record would make them."""
import copy
import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("triton", reason="the dry run runs the kernels in Triton's interpreter (pip install triton)")

from passion_deploy.benchmarks import gpu_check  # noqa: E402
from passion_deploy.kernels import bench  # noqa: E402

DRY_RUN_LIMIT_S = 600  # it takes ~2.5 min on 2 cores; a hang must not stall CI for longer


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "passion_deploy.benchmarks.gpu_check", "--dry-run", "--out", str(out),
                               "--work", str(tmp)], env=env, capture_output=True, text=True, timeout=DRY_RUN_LIMIT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the dry run took more than {DRY_RUN_LIMIT_S} s: {(e.stdout or '')[-3000:]}")
    wall = time.perf_counter() - t0
    if not (out / gpu_check.JSON_NAME).exists():
        pytest.fail(f"the dry run wrote no JSON (exit {proc.returncode}): {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc, json.loads((out / gpu_check.JSON_NAME).read_text()), out, wall


def test_every_step_completes_without_a_raise(dry_run):
    proc, rep, _, wall = dry_run
    print(f"\ngpu-check dry run: {wall:.0f} s\n{proc.stdout[-2500:]}")
    assert rep["dry_run"] and rep["finished"] and not rep["timings_meaningful"]
    assert list(rep["steps"]) == list(gpu_check.STEP_ORDER)
    failed = {n: s.get("error") or s.get("why") for n, s in rep["steps"].items() if s["status"] != "ok"}
    assert failed == {}, f"steps that did not complete: {failed}"
    assert rep["problems"] == [], rep["problems"]
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_each_step_measured_something(dry_run):
    _, rep, _, _ = dry_run
    steps = rep["steps"]
    assert rep["machine"]["cpu"] and rep["gpu"] is None
    assert rep["versions"]["torch"] and rep["versions"]["diffusers"]  # named after the steps that imported them
    shapes = steps["kernels"]["shapes"]
    assert [s["shape"] for s in shapes] == [s.label for s in bench.DRY_SHAPES]
    for s in shapes:  # the kernel agrees with its reference before anything is timed
        assert s["check_passed"], s
        assert s["times"]["int8"]["median_s"] > 0 and s["times"][s["fp_best"]]["median_s"] > 0
    e2e = steps["end_to_end"]
    unet = e2e["bench"]["components"]["unet"]["variants"]
    assert e2e["bench"]["artifact_variant"] == "triton" and set(unet) == {"triton", "torch_fp32"}
    assert all(v["median_s"] > 0 and len(v["samples_s"]) == gpu_check.SIZES[True]["runs"] for v in unet.values())
    assert e2e["sr_out_px"] is None and list(e2e["bench"]["components"]) == ["unet"]  # full SR: on a GPU only
    assert e2e["verify"]["passed"], e2e["verify"]
    w8, w6 = e2e["weights"]["int8"], e2e["weights"]["int6"]
    assert 0 < w6["ratio"] < w8["ratio"] < 1 and w8["layers"] > 0


def test_report_says_dry_run_and_every_target(dry_run):
    _, rep, out, _ = dry_run
    md = (out / gpu_check.MD_NAME).read_text()
    assert "Dry run on the CPU" in md and "meaningless" in md
    assert len(rep["targets"]) == 5
    assert {t["status"] for t in rep["targets"]} == {"not judged (dry run: CPU, interpreter)"}, rep["targets"]
    for t in rep["targets"]:
        assert t["target"] in md
    assert "## Kernels (kernels/bench.py)" in md and "### passion-bench" in md


def as_gpu_record(rep: dict, unet_ms: tuple[float, float], gemm_ratio: float) -> dict:
    """The dry run's record dressed as a GPU run's (what a GPU run writes in place of the CPU's
    baseline), so that the verdicts and the report's GPU rows are exercised here too."""
    r = copy.deepcopy(rep)
    r["dry_run"] = False
    b = r["steps"]["end_to_end"]["bench"]
    unet = b["components"]["unet"]
    unet["variants"] = {"triton": {**unet["variants"]["triton"], "median_s": unet_ms[1] / 1e3},
                        "torch_fp16": {**unet["variants"]["torch_fp32"], "median_s": unet_ms[0] / 1e3}}
    unet["speedup"] = {"vs_torch_fp16": unet_ms[0] / unet_ms[1]}
    for s in r["steps"]["kernels"]["shapes"]:
        s["speedup"]["int8"] = gemm_ratio
    r["gpu"] = {"name": "NVIDIA H200", "compute_capability": "9.0", "multiprocessors": 132,
                                        "memory_free_and_total_bytes": [2**37, 2**37], "cuda": "13.0", "cudnn": 91000}
    return r


def test_gpu_verdicts_say_met_or_not_met(dry_run):
    _, rep, _, _ = dry_run
    good = {t["target"]: t for t in gpu_check.targets(as_gpu_record(rep, (30.0, 15.0), 2.0))}
    bad = {t["target"]: t for t in gpu_check.targets(as_gpu_record(rep, (30.0, 25.0), 1.2))}
    gemm = "int8 GEMM vs cuBLAS FP16 at the sd21 UNet's large shapes"
    unet = "sd21 UNet end to end vs PyTorch FP16, both with CUDA graphs"
    assert (good[gemm]["status"], bad[gemm]["status"]) == ("met", "not met")
    assert (good[unet]["status"], bad[unet]["status"]) == ("met", "not met")
    assert good[unet]["measured"] == "2.00x (30.00 ms torch_fp16 / 15.00 ms int8)"
    assert all(t["status"] in ("met", "not met") for t in good.values()), good
    md = gpu_check.markdown({**as_gpu_record(rep, (30.0, 15.0), 2.0), "targets": list(good.values())})
    assert "# GPU check: NVIDIA H200" in md and "PyTorch FP16" in md and "**met**" in md


def test_a_step_that_raises_is_recorded_and_the_rest_run(tmp_path):
    c = gpu_check.Check(gpu_check.parse_args(["--dry-run", "--out", str(tmp_path / "o"), "--work", str(tmp_path)]), [])

    def typo(c):
        raise NameError("name 'shpae' is not defined")
    assert c.step("kernels", typo)["status"] == "failed"
    assert c.step("end_to_end", lambda c: {"fine": 1})["status"] == "ok"
    assert [p["where"] for p in c.report["problems"]] == ["kernels"]
    c.write(final=True)
    rep = json.loads((tmp_path / "o" / gpu_check.JSON_NAME).read_text())
    assert rep["steps"]["kernels"]["status"] == "failed" and "shpae" in rep["steps"]["kernels"]["error"]
    assert {t["target"]: t["status"] for t in rep["targets"]}[
        "int8 GEMM vs cuBLAS FP16 at the sd21 UNet's large shapes"] == "not measured"
    md = (tmp_path / "o" / gpu_check.MD_NAME).read_text()
    assert "## What failed" in md and "kernels: NameError" in md and "the kernels step failed: NameError" in md


def test_without_a_gpu_the_gpu_run_refuses_in_one_sentence(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "-m", "passion_deploy.benchmarks.gpu_check", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and not (tmp_path / "o").exists()
    assert proc.stderr.strip().splitlines() == [
        "gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
        "run it with --dry-run for the CPU check of its code"]
