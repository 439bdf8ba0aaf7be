"""The measurement layer's primitives: the one timing loop of every benchmark, and the memory
meters beside it (in-process peak RSS, the GPU allocator's peak, one ONNX model's peak in a fresh
process: `python -m passion_deploy.measure MODEL.onnx INPUTS.npz [THREADS]`). Its users: passion-bench's variants (benchmarks/harness.py), the
GPU check (benchmarks/gpu_check.py) and the kernel microbenchmark (kernels/bench.py).

Variants are timed in alternation, run 1 of each, then run 2 of each, ...: a load change on a
shared machine, or a GPU's clock moving, then hits every variant alike, so their ratio holds
even where their seconds do not. Each variant is called `warmup` times first (compiles, CUDA
graph captures, allocations) and the median of `runs` samples is reported, with every sample.

Two clocks. The host clock with the device synchronized after each call measures what a caller
waits for (host work and transfers included): the default. `device_clock` on a CUDA device
reads CUDA events recorded around each call instead, so a sample is the device's time for the
work and not the host's launch loop: what a kernel's speed is (kernels/bench.py). The events of
one round are read after one synchronize at the round's end.

Nothing here imports the project's models or export code (the kernels' benchmark uses it too),
nor torch at import: the fresh-process probe's baseline is Python and ONNX Runtime alone.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable


def summary(samples_s: list[float]) -> dict:
    """Median and spread of timing samples (seconds), every sample kept."""
    return {"median_s": statistics.median(samples_s), "min_s": min(samples_s), "max_s": max(samples_s),
            "runs": len(samples_s), "samples_s": list(samples_s)}


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of the samples."""
    s = sorted(samples)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))]


def time_alternating(calls: dict[str, Callable[[], object]], runs: int, warmup: int = 0, device=None,
                     device_clock: bool = False, units: dict[str, int] | None = None, peak_rss: bool = False,
                     progress: bool = False, desc: str = "timing") -> dict[str, dict]:
    """{variant: summary(...)} of each call, timed in alternation after `warmup` calls each.

    `device`: where the calls run; on a CUDA device each sample covers the work, synchronized
    (or, with `device_clock`, CUDA events around it). `units`: calls per sample by variant (a
    sample that replays R operand sets reports per set). `peak_rss`: also each variant's highest
    resident set size seen while its samples ran (PeakRSS), as peak_rss_bytes."""
    import torch
    from tqdm import tqdm

    cuda = device is not None and torch.device(device).type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    events = cuda and device_clock
    samples: dict[str, list[float]] = {v: [] for v in calls}
    peaks = dict.fromkeys(calls, 0)
    with torch.no_grad():
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        sync()
        for _ in tqdm(range(runs), desc=desc, unit="run", disable=not progress):
            marks = {}
            for v, fn in calls.items():
                with PeakRSS() if peak_rss else nullcontext() as mem:
                    if events:
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        fn()
                        end.record()
                        marks[v] = (start, end)
                    else:
                        t0 = time.perf_counter()
                        fn()
                        sync()
                        samples[v].append(time.perf_counter() - t0)
                peaks[v] = max(peaks[v], mem.peak if peak_rss else 0)
            if events:
                sync()
                for v, (start, end) in marks.items():
                    samples[v].append(start.elapsed_time(end) / 1e3)
    units = units or {}
    out = {v: summary([s / units.get(v, 1) for s in smp]) for v, smp in samples.items()}
    return {v: {**r, "peak_rss_bytes": peaks[v]} for v, r in out.items()} if peak_rss else out


def rss_bytes(key: str = "VmRSS") -> int:
    """This process's resident set (VmRSS), or its peak so far (VmHWM); without /proc, the peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Highest resident set size seen while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def increase(self) -> int:
        return self.peak - self.start


class GpuPeak:
    """The GPU allocator's peak while the block runs, over what was allocated when it began
    (torch's tensors only: TensorRT's own memory is outside it)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        self.start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        import torch

        torch.cuda.synchronize(self.device)
        self.increase = torch.cuda.max_memory_allocated(self.device) - self.start


def fresh_process_peak(model: Path, feeds: dict, threads: int | None, workdir: Path) -> dict:
    """Peak RSS of loading + running one ONNX model once, in a fresh process: in-process numbers
    cannot tell one model's memory from another's (freed pages are reused)."""
    import subprocess

    import numpy as np

    inputs = workdir / "memprobe_inputs.npz"
    np.savez(inputs, **feeds)
    out = subprocess.run([sys.executable, "-m", "passion_deploy.measure", str(model), str(inputs), str(threads or 0)],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["memory probe failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe(model: str, inputs: str, threads: str = "0") -> dict:
    """The fresh process's side: its RSS with ONNX Runtime imported (baseline), after loading the
    model, and its peak (VmHWM) after one run."""
    import numpy as np
    import onnxruntime as ort

    feeds = dict(np.load(inputs))
    baseline = rss_bytes()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads != "0":
        opts.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    loaded = rss_bytes()
    sess.run(None, feeds)
    return {"baseline_rss_bytes": baseline, "after_load_rss_bytes": loaded, "peak_rss_bytes": rss_bytes("VmHWM")}


if __name__ == "__main__":  # the fresh process of fresh_process_peak
    print(json.dumps(_probe(*sys.argv[1:4])))
