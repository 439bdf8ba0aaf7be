"""Step 2 of the GPU check: the kernel and triton-export tests, run by pytest in a subprocess.

On a GPU the kernel tests put their tensors on CUDA (and the triton target runs its kernels
compiled); without one they run in Triton's interpreter. The subprocess is capped in time and
killed with its children when over, and its counts are read from pytest's verbose lines as
they were written, so a timed-out run still reports what had passed and failed by then.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

GPU_TESTS = ("tests/kernels/test_kernels_gemm.py", "tests/kernels/test_kernels_attention.py", "tests/kernels/test_kernels_aot.py",
             "tests/targets/test_export_triton.py")
# the dry run's selection: one quick test of each file's module (imports, fixtures, collection),
# so the step's code runs without the minutes the full files take in the interpreter
DRY_RUN_SELECTION = "rejects_bad_shapes or checks_shapes or at_least_32_deep or weight_only_layers"
OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
LINE = re.compile(r"^(?P<file>[\w./-]+\.py)::(?P<test>\S+) (?P<outcome>" + "|".join(OUTCOMES) + r")\b")
SUMMARY = re.compile(r"^=+ (?P<text>.*\bin [\d.]+s.*) =+$")


def repo_root() -> Path | None:
    """The checkout holding tests/: the working directory when it has them, else the one this
    module lives in (benchmarks/ is a top-level folder of the repository)."""
    for cand in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if all((cand / t).is_file() for t in GPU_TESTS):
            return cand
    return None


def parse_log(text: str) -> dict:
    """Counts per outcome and per file, the failing test ids, pytest's own summary line."""
    counts = {o.lower(): 0 for o in OUTCOMES}
    per_file: dict[str, dict[str, int]] = {}
    failing = []
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if m:
            o = m["outcome"].lower()
            counts[o] += 1
            per_file.setdefault(m["file"], {}).setdefault(o, 0)
            per_file[m["file"]][o] += 1
            if o in ("failed", "error"):
                failing.append(f"{m['file']}::{m['test']}")
    summaries = [m["text"] for m in map(SUMMARY.match, text.splitlines()) if m]
    return {"counts": counts, "per_file": per_file, "failing": failing, "pytest_summary": summaries[-1] if summaries else None}


def pytest_env(root: Path) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return env


class Background:
    """pytest started in its own process group (its AOT compile starts a grandchild), output to
    DIR/gpu_tests.log; `finish` waits for it within its cap (from its start), kills the group
    past it, and reads the counts. A failure to start is raised by `finish`, inside the step."""

    def __init__(self, ctx):
        self.done, self.error, self.proc = False, None, None
        self.started_at = ctx.budget.elapsed()
        self.t0 = time.perf_counter()
        try:
            self.start(ctx)
        except Exception as e:  # noqa: BLE001 - reported by finish(), as the step's failure
            self.error = e

    def start(self, ctx) -> None:
        self.root = repo_root()
        if self.root is None:
            raise FileNotFoundError(f"the test files {', '.join(GPU_TESTS)} are not here: run the check from a checkout")
        self.cap = ctx.budget.cap(ctx.sizes.tests_cap_s, reserve=ctx.sizes.reserve_end_s)
        self.args = ["-v", "-rfE", "-p", "no:cacheprovider", *GPU_TESTS]
        if ctx.sizes.test_selection:
            self.args += ["-k", ctx.sizes.test_selection]
        self.log_path = ctx.out / "gpu_tests.log"
        ctx.out.mkdir(parents=True, exist_ok=True)
        ctx.log(f"gpu-check: starting pytest {' '.join(self.args)} (cap {self.cap:.0f} s)")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pytest", *self.args], cwd=self.root,
                                         env=pytest_env(self.root), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        ctx.children.append(self.proc)

    def finish_into(self, ctx, run_step) -> None:
        """Record the step once (the end-to-end step asks before its timings, the check at its end)."""
        if not self.done:
            self.done = True
            run_step(ctx, "gpu_tests", self.finish)

    def finish(self, ctx) -> dict:
        if self.error is not None:
            raise self.error
        try:
            rc = self.proc.wait(timeout=max(1.0, self.cap - (time.perf_counter() - self.t0)))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        text = self.log_path.read_text(errors="replace")
        rec = {"started_at_s": round(self.started_at, 1), "command": f"python -m pytest {' '.join(self.args)}",
               "exit_code": rc, "wall_s": round(time.perf_counter() - self.t0, 1), "cap_s": round(self.cap),
               "log": self.log_path.name, **parse_log(text)}
        if rc is None:  # a result (the tests did not finish in time), said as the step's status
            rec["status"] = "timed out"
            rec["timed_out"] = f"killed at the {self.cap:.0f} s cap; the counts are the tests finished by then"
        rec["passed_all"] = rc == 0
        rec["tail"] = text.splitlines()[-25:]
        return rec
