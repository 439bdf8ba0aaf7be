"""Every kernel in every configuration the runtime can choose (kernels/configs.py), compiled
ahead of time for Hopper (sm_90) and Ampere (sm_80) by Triton's own compiler and the ptxas of
the triton wheel: no GPU needed, so this runs on every CI machine.

The compile runs in one subprocess (`python -m passion_deploy.kernels.aot`) with
TRITON_INTERPRET=0: this test process may have switched Triton to its CPU interpreter (the
other kernel tests do, without a GPU), and an interpreted kernel does not compile. The
subprocess compiles from scratch in a fresh Triton cache, so no earlier result hides a failure.
It prints the table of registers, spills and shared memory per kernel, configuration and target.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from passion_deploy.kernels import aot, configs

ARCHS = (90, 80)
DOT_KERNELS = ("qgemm", "streaming_attention", "act_matmul")  # the kernels with an int8 tl.dot


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "report.json"
    env = dict(os.environ, TRITON_INTERPRET="0")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "passion_deploy.kernels.aot", "--arch", *map(str, ARCHS),
                               "--json", str(out)], env=env, capture_output=True, text=True, timeout=1500)
    except subprocess.TimeoutExpired:
        pytest.fail("the AOT compile of every kernel configuration took more than 25 minutes")
    if not out.exists():
        pytest.fail(f"the AOT compile process ended (exit {proc.returncode}) without a report: {proc.stderr[-3000:]}")
    rep = json.loads(out.read_text())
    if rep["missing"]:  # a toolchain problem outside the project: one sentence, never a skip
        pytest.fail(rep["missing"])
    rep["rows"] = [aot.Row(**{**r, "block": tuple(r["block"])}) for r in rep["rows"]]
    rep["wall"] = time.perf_counter() - t0
    return rep


def test_every_configuration_compiles(report, capsys):
    rows = report["rows"]
    with capsys.disabled():  # the table belongs in the CI log even when everything passes
        print(f"\nAOT compile (triton {report['triton']}), {len(rows)} compiles in {report['seconds']} s:")
        print(aot.table(rows))
    errors = [f"{r.kernel}/{r.variant} sm_{r.arch}: {r.error.splitlines()[0] if r.error else ''}" for r in rows
              if r.error]
    assert not errors, "compile errors:\n" + "\n".join(errors)
    listed = {("act_quant", v.name) for v in configs.ACT_QUANT_VARIANTS}
    listed |= {("qgemm", v.name) for v in configs.gemm_compile_list()}
    listed |= {("streaming_attention", v.name) for v in configs.STREAMING_ATTENTION_VARIANTS}
    listed |= {("act_matmul", v.name) for v in configs.ACT_MATMUL_VARIANTS}
    listed |= {("softmax_quant", v.name) for v in configs.SOFTMAX_QUANT_VARIANTS}
    compiled = {(r.kernel, r.variant, r.arch) for r in rows}
    assert compiled == {(k, v, a) for k, v in listed for a in ARCHS}


def test_no_configuration_spills(report):
    spilled = [f"{r.kernel}/{r.variant} sm_{r.arch}: {r.regs} registers, {r.spill_stores} B spill stores, "
               f"{r.spill_loads} B spill loads, n_spills {r.spills}" for r in report["rows"]
               if r.spills or r.spill_stores or r.spill_loads]
    assert not spilled, "configurations that spill registers:\n" + "\n".join(spilled)


def test_int8_dots_run_on_tensor_cores(report):
    """sm_90: the GEMM and attention matmuls on wgmma at the runtime's 64-row tiles (smaller test
    tiles fall back to mma.sync); sm_80: int8 mma.sync everywhere."""
    rows = [r for r in report["rows"] if r.kernel in DOT_KERNELS]
    hopper = [r for r in rows if r.arch == 90 and r.block[0] >= 64]
    assert {r.kernel for r in hopper} == set(DOT_KERNELS)
    assert [f"{r.kernel}/{r.variant}: {r.mma or 'no int8 mma'}" for r in hopper if not r.mma.startswith("wgmma.")] == []
    others = [r for r in rows if r not in hopper]
    assert [f"{r.kernel}/{r.variant} sm_{r.arch}: {r.mma or 'no int8 mma'}" for r in others
            if not r.mma.startswith("mma.sync.")] == []


def test_dot_blocks_are_at_least_32_deep():
    """Triton's NVIDIA backend refuses an int8 dot with K < 32 (and M, N < 16)."""
    launches = [v.launch() for v in configs.gemm_compile_list() + configs.ACT_MATMUL_VARIANTS]
    launches += [c for cls in configs.GEMM_CLASSES for c in cls.launches + cls.split_launches] + [configs.ACT_MATMUL]
    assert all(bm >= 16 and bn >= 16 and bk >= 32 for bm, bn, bk in (launch.block for launch in launches))
    # streaming attention (BM, BN): BN keys are the QK^T dot's N and the PV dot's K
    streaming = [v.launch() for v in configs.STREAMING_ATTENTION_VARIANTS] + [configs.STREAMING_ATTENTION]
    assert all(bm >= 16 and bn >= 32 for bm, bn in (launch.block for launch in streaming))


def test_every_gemm_launch_of_every_class_is_compiled():
    """Each candidate of each shape class (the launches the GPU runtime tunes among) is in the
    compile list, for 1 and 2 K-groups, with variants whose shapes fall in that class, so the
    no-spill and tensor-core checks above cover every launch the runtime can choose."""
    compiled = {(v.gemm_class().name, v.groups, v.config) for v in configs.gemm_compile_list() if v.block is None}
    wanted = {(cls.name, g, c) for cls in configs.GEMM_CLASSES for g in (1, 2) for c in cls.candidates(g)}
    assert wanted - compiled == set()
    for v in configs.GEMM_VARIANTS:  # the class a variant is compiled for is the one qgemm picks at run time
        cls, cands = configs.qgemm_launches(v.rows(), v.shape[-1], v.groups)
        assert v.gemm_class() is cls and (v.block is not None or v.launches() == cands)
    # runtime launches are at least one Hopper warpgroup tall (wgmma) and at most 4 per class
    assert all(c.block[0] >= 64 and c.block[2] >= 32 for _, _, c in wanted)
    assert all(1 < len(cls.candidates(g)) <= 4 for cls in configs.GEMM_CLASSES for g in (1, 2))
