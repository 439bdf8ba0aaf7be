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

from passion_deploy.benchmarks import gpu_check, gpu_report, gpu_tests  # noqa: E402

DRY_RUN_LIMIT_S = 600  # it takes ~1.5 min on 2 cores; a hang must not stall CI for longer


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
    parts = rep["steps"]["end_to_end"]["parts"]
    assert set(parts) >= {"build", "reference", "export", "fp16", "triton", "torch_compile", "weights", "w6a6_weights"}
    bad = {n: p.get("error") or p.get("why") for n, p in parts.items() if p["status"] != "ok"}
    assert bad == {}, f"end-to-end parts that did not complete: {bad}"
    assert rep["problems"] == [], rep["problems"]
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_each_step_measured_something(dry_run):
    _, rep, _, _ = dry_run
    steps = rep["steps"]
    assert steps["environment"]["versions"]["torch"] and steps["environment"]["gpu"] is None
    tests = steps["gpu_tests"]
    assert sum(tests["counts"].values()) > 0 and set(tests["per_file"]) == set(gpu_tests.GPU_TESTS), tests["tail"]
    shapes = steps["kernels"]["shapes"]
    assert len(shapes) == len(gpu_check.DRY_SIZES.kernel_shapes) and not any("error" in s for s in shapes)
    for s in shapes:  # the kernel agrees with its float64 reference before anything is timed
        assert s["int8"]["check_passed"] and s["int6"]["check_passed"], s["shape"]
        assert s["int8"]["gemm"]["median_s"] > 0 and s["fp"]["median_s"] > 0
    parts = steps["end_to_end"]["parts"]
    assert parts["triton"]["unet_eager"]["median_s"] > 0 and parts["fp16"]["unet_eager"]["median_s"] > 0
    assert parts["torch_compile"]["state"] == "done" and parts["torch_compile"]["timing"]["median_s"] > 0
    assert 0 < parts["weights"]["int8"]["ratio"] < 1 and 0 < parts["w6a6_weights"]["int6"]["ratio"] < 1
    assert parts["w6a6_weights"]["int6"]["ratio"] < parts["weights"]["int8"]["ratio"]


def test_report_says_dry_run_and_every_target(dry_run):
    _, rep, out, _ = dry_run
    md = (out / gpu_check.MD_NAME).read_text()
    assert "Dry run on the CPU" in md and "meaningless" in md
    assert len(rep["targets"]) == 5
    assert {t["status"] for t in rep["targets"]} == {"not judged (dry run: CPU, interpreter)"}, rep["targets"]
    for t in rep["targets"]:
        assert t["target"] in md
    assert (out / "gpu_tests.log").exists()


def as_gpu_record(rep: dict, unet_ms: tuple[float, float], gemm_ratio: float) -> dict:
    """The dry run's record dressed as a GPU run's (the fields only a GPU writes added), so the
    verdicts and the report's GPU-only rows are exercised here too."""
    r = copy.deepcopy(rep)
    r["dry_run"] = False
    parts = r["steps"]["end_to_end"]["parts"]
    parts["fp16"]["unet_cuda_graph"] = {"median_s": unet_ms[0] / 1e3, "runs": 20,
                                        "warmup_memory": {"peak_over_resident_bytes": 2**30},
                                        "run_memory": {"peak_over_resident_bytes": 2**20}}
    parts["triton"]["unet_cuda_graph"] = {"median_s": unet_ms[1] / 1e3, "runs": 20,
                                          "warmup_memory": {"peak_over_resident_bytes": 2**29},
                                          "run_memory": {"peak_over_resident_bytes": 2**20}}
    parts["triton"]["verify_bar_db"] = 40.0
    parts["triton"]["sr_bar_db"] = 40.0
    for s in r["steps"]["kernels"]["shapes"]:
        s["int8"]["speedup_vs_fp"] = gemm_ratio
    r["steps"]["environment"]["gpu"] = {"name": "NVIDIA H200", "compute_capability": "9.0", "multiprocessors": 132,
                                        "memory_free_bytes": 2**37, "memory_total_bytes": 2**37, "cuda_runtime": "13.0",
                                        "cudnn": 91000, "nvidia_smi": {"driver_version": "580"}}
    return r


def test_gpu_verdicts_say_met_or_not_met(dry_run):
    _, rep, _, _ = dry_run
    good = {t["target"]: t for t in gpu_report.targets(as_gpu_record(rep, (30.0, 15.0), 2.0))}
    bad = {t["target"]: t for t in gpu_report.targets(as_gpu_record(rep, (30.0, 25.0), 1.2))}
    gemm = "int8 GEMM vs cuBLAS FP16 at the sd21 UNet's large shapes"
    unet = "sd21 UNet end to end vs PyTorch FP16, both with CUDA graphs"
    assert (good[gemm]["status"], bad[gemm]["status"]) == ("met", "not met")
    assert (good[unet]["status"], bad[unet]["status"]) == ("met", "not met")
    assert good[unet]["measured"].startswith("2.00x")
    assert all(t["status"] in ("met", "not met") for t in good.values()), good
    md = gpu_report.markdown({**as_gpu_record(rep, (30.0, 15.0), 2.0), "targets": list(good.values())})
    assert "# GPU check: NVIDIA H200" in md and "CUDA graph" in md and "**met**" in md


def test_pytest_counts_are_read_from_its_verbose_lines():
    log = ("tests/test_a.py::test_x PASSED                     [ 50%]\n"
           "tests/test_a.py::test_y[8-conv] FAILED             [ 75%]\n"
           "tests/test_b.py::test_z ERROR                      [100%]\n"
           "==== 1 failed, 1 passed, 1 error in 3.21s ====\n")
    got = gpu_tests.parse_log(log)
    assert got["counts"]["passed"] == 1 and got["counts"]["failed"] == 1 and got["counts"]["error"] == 1
    assert got["failing"] == ["tests/test_a.py::test_y[8-conv]", "tests/test_b.py::test_z"]
    assert got["pytest_summary"] == "1 failed, 1 passed, 1 error in 3.21s"


def test_a_step_or_part_that_raises_is_recorded_and_the_rest_run(tmp_path):
    from passion_deploy.benchmarks import gpu_e2e

    ctx = gpu_check.make_context(gpu_check.parse_args(["--dry-run", "--out", str(tmp_path)]), [])

    def typo(ctx):
        raise NameError("name 'shpae' is not defined")
    assert gpu_check.run_step(ctx, "kernels", typo)["status"] == "failed"
    assert gpu_check.run_step(ctx, "environment", lambda ctx: {"fine": 1})["status"] == "ok"
    step = ctx.report["steps"]["end_to_end"] = {}
    gpu_e2e.run_part(step, "build", lambda c, s: 1 / 0, ctx, None)
    gpu_e2e.run_part(step, "export", lambda c, s: {}, ctx, None, needs=("build",))
    gpu_e2e.run_part(step, "torch_compile", lambda c, s: {"state": "done"}, ctx, None)
    assert [step["parts"][p]["status"] for p in ("build", "export", "torch_compile")] == ["failed", "skipped", "ok"]
    assert [p["where"] for p in ctx.report["problems"]] == ["kernels", "end_to_end/build"]
    gpu_check.write_outputs(ctx, final=True)
    rep = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    assert rep["steps"]["kernels"]["status"] == "failed" and "shpae" in rep["steps"]["kernels"]["error"]
    md = (tmp_path / gpu_check.MD_NAME).read_text()
    assert "## What failed" in md and "kernels: NameError" in md


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
