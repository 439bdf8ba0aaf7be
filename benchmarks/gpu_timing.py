"""Timing, memory and budget helpers of the GPU check (benchmarks/gpu_check.py).

One code path for both machines: on a GPU every time comes from CUDA events around the
work (device time, not the host's launch loop) and memory from the caching allocator's
counters; in the dry run on a CPU the same calls fall back to the host clock and report no
GPU memory, so the GPU branch is the only part the dry run cannot execute. Those branches
are kept to a few lines each for that reason.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from contextlib import contextmanager

import torch


class Budget:
    """The wall-clock budget of the whole check: every optional part asks it first, so a slow
    step leaves the later ones a recorded "skipped: budget" instead of an external kill that
    would leave no report at all."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def cap(self, wanted: float, reserve: float = 0.0) -> float:
        """At most `wanted` seconds, and never past the budget minus `reserve`."""
        return max(0.0, min(wanted, self.left() - reserve))


def is_cuda(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


def sync(device: torch.device) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def summary(samples_s: list[float]) -> dict:
    """Median and spread of timing samples (seconds), every sample kept."""
    return {"median_s": statistics.median(samples_s), "min_s": min(samples_s), "max_s": max(samples_s),
            "runs": len(samples_s), "samples_s": [round(s, 9) for s in samples_s]}


def time_calls(fn, device: torch.device, runs: int, warmup: int = 1, per_call: int = 1) -> dict:
    """Median time of `fn()` over `runs` samples after `warmup` calls; each sample covers one call
    of fn, which does `per_call` units of work (the reported time is per unit). GPU: CUDA events
    around each call, all read after one synchronize; CPU: the host clock."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    if is_cuda(device):
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        samples = [start.elapsed_time(end) / 1e3 / per_call for start, end in events]
    else:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) / per_call)
    return summary(samples)


def time_host(fn, device: torch.device, runs: int, warmup: int = 1) -> dict:
    """Wall-clock time of fn() including host work and transfers (end to end), synchronized."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - t0)
    return summary(samples)


def graphed(fn, device: torch.device):
    """fn captured once in a CUDA graph, returned as a replay function (GPU; the kernels must
    already be compiled: call fn before). On a CPU, fn itself. A graph removes the host's
    launch overhead, so small kernels are timed by what they do on the device."""
    if not is_cuda(device):
        return fn
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()  # a warm-up on the capture's stream, as torch.cuda.graphs recommends
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def l2_bytes(device: torch.device) -> int:
    """The GPU's L2 size (working sets are rotated past twice this); 0 on a CPU."""
    if not is_cuda(device):
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))


@dataclasses.dataclass
class MemoryRecord:
    resident_before_bytes: int = 0
    peak_over_resident_bytes: int = 0
    resident_after_bytes: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@contextmanager
def gpu_memory(device: torch.device):
    """The allocator's peak while the block runs, over what was allocated when it began, and
    what stays allocated after it (torch's tensors only). Yields a MemoryRecord filled on exit;
    on a CPU it stays empty (no allocator counters to read)."""
    rec = MemoryRecord()
    if not is_cuda(device):
        yield rec
        return
    torch.cuda.synchronize(device)
    rec.resident_before_bytes = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield rec
    finally:
        torch.cuda.synchronize(device)
        rec.peak_over_resident_bytes = torch.cuda.max_memory_allocated(device) - rec.resident_before_bytes
        rec.resident_after_bytes = torch.cuda.memory_allocated(device)


def free_gpu(device: torch.device) -> None:
    """Return cached blocks to the driver between steps, so one step's cache does not read as
    another's footprint in nvidia-smi or starve a subprocess."""
    import gc

    gc.collect()
    if is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def tensor_bytes(*roots, device: torch.device | None = None, skip: tuple[type, ...] = ()) -> int:
    """Bytes of the distinct tensor storages reachable from `roots` (modules, their plain
    attributes, dataclasses, containers, and passion_deploy objects), counted once each; only
    those on `device` when given. This is how a model's weights "in memory" are measured: the
    triton runtime keeps its packed weights in plain attributes that parameters() never sees."""
    seen_storage, visited, total = set(), set(), 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in visited or obj is None or isinstance(obj, (str, bytes, int, float, bool, type)):
            continue
        visited.add(id(obj))
        if skip and isinstance(obj, skip):
            continue
        if isinstance(obj, torch.Tensor):
            if device is not None and obj.device.type != torch.device(device).type:
                continue
            storage = obj.untyped_storage()
            key = (storage.data_ptr(), obj.device.type)
            if key not in seen_storage:
                seen_storage.add(key)
                total += storage.nbytes()
        elif isinstance(obj, torch.nn.Module):
            stack += list(obj._parameters.values()) + list(obj._buffers.values()) + list(obj._modules.values())
            stack += [v for k, v in vars(obj).items() if k not in ("_parameters", "_buffers", "_modules")]
        elif isinstance(obj, dict):
            stack += list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack += list(obj)
        elif dataclasses.is_dataclass(obj):
            stack += [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
        elif type(obj).__module__.startswith("passion_deploy") and hasattr(obj, "__dict__"):
            stack += list(vars(obj).values())
    return total
