"""Tiles of concurrent images stacked into one component call.

Each image of a Triton batch runs passion-sr's own code (runner.super_resolve) in its own
thread on a BatchedRuntime: the runtime's `run(name, x)` is handed to a shared TileBatcher
instead of the engine. The batcher holds the calls until every image still running is waiting
on it (then no further call can come) or a call group fills the engines' batch, and runs each
group of equal (component, tile shape) calls as one stacked call of the real runtime, split
back in order. Tiling, blending and z0 stay exactly super_resolve's, per image; only where the
component calls meet changes. No timer is involved, so nothing waits for a call that cannot
come, and the result does not depend on thread timing.

Stacking is exact where the runtime computes a stack item by item as it computes one item:
ONNX Runtime artifacts run batches one tile at a time (graphs exported at batch 1); engines
built for a batch (TensorRT --max-batch) take it whole. PyTorch pipelines (--backend fp32,
fp16, fakequant) get different float rounding at another batch size, so they are given one
image's call at a time (max_batch 1): a compared backend stays bit-identical to passion-sr's.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..export import targets
from ..export.runtime import ArtifactRuntime, SRRuntime


def exact_batch(rt, requested: int) -> int:
    """The most tiles one stacked call may hold on runtime `rt`: `requested`, at most the
    engines' own batch where the artifact records one; 1 for a PyTorch pipeline (see above)."""
    if not isinstance(rt, ArtifactRuntime):
        return 1
    most = targets.serve_spec(rt.artifact).tiles_per_call  # the target's word (engines' batch), not a manifest key
    return max(1, min(requested, most)) if most else max(1, requested)


@dataclass
class _Call:
    x: torch.Tensor
    done: bool = False
    result: torch.Tensor | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the batcher did, for tests and the benchmark: tiles per stacked call, per component."""

    calls: dict[str, list[int]] = field(default_factory=dict)

    def add(self, name: str, tiles: int) -> None:
        self.calls.setdefault(name, []).append(tiles)


class TileBatcher:
    """Runs `rt.run(name, x)` for the participants (threads inside `participant()`), stacking
    equal-shaped calls up to `max_batch` tiles."""

    def __init__(self, rt: SRRuntime, max_batch: int):
        self.rt = rt
        self.max_batch = max(1, int(max_batch))
        self.stats = BatchStats()
        self._cv = threading.Condition()
        self._active = 0  # participants still working
        self._waiting = 0  # participants blocked in submit with a call not yet taken
        self._pending: dict[tuple, list[_Call]] = {}
        self._running = False

    @contextmanager
    def participant(self):
        """One image's work: while inside, its calls may be held for others' calls to join."""
        with self._cv:
            self._active += 1
        try:
            yield
        finally:
            with self._cv:
                self._active -= 1
                self._cv.notify_all()  # those left may now all be waiting

    def submit(self, name: str, x: torch.Tensor) -> torch.Tensor:
        key = (name, tuple(x.shape[1:]), x.dtype)
        call = _Call(x)
        with self._cv:
            self._pending.setdefault(key, []).append(call)
            self._waiting += 1
            self._cv.notify_all()
            while not call.done:
                group = self._ready_group()
                if group is None:
                    self._cv.wait()
                    continue
                self._run(group)  # this thread runs it (releasing the lock meanwhile)
        if call.error is not None:
            raise call.error
        return call.result

    def _ready_group(self) -> tuple[str, list[_Call]] | None:
        """A group to run now (lock held): one filling the batch, or, once every participant
        waits, the oldest group. Takes its calls off the pending lists."""
        if self._running or not self._pending:
            return None
        full = [k for k, calls in self._pending.items() if sum(c.x.shape[0] for c in calls) >= self.max_batch]
        if full:
            key = full[0]
        elif self._waiting >= self._active:
            key = next(iter(self._pending))
        else:
            return None
        calls, taken, tiles = self._pending[key], [], 0
        while calls and (not taken or tiles + calls[0].x.shape[0] <= self.max_batch):
            tiles += calls[0].x.shape[0]
            taken.append(calls.pop(0))
        if not calls:
            del self._pending[key]
        self._waiting -= len(taken)
        self._running = True
        return key[0], taken

    def _run(self, group: tuple[str, list[_Call]]) -> None:
        name, calls = group
        self._cv.release()
        try:
            x = calls[0].x if len(calls) == 1 else torch.cat([c.x for c in calls], dim=0)
            out = self.rt.run(name, x)
            results, start = [], 0
            for c in calls:
                results.append(out[start:start + c.x.shape[0]])
                start += c.x.shape[0]
            error = None
        except Exception as e:  # every call of the stack gets it; the threads raise it
            results, error = [None] * len(calls), e
        finally:
            self._cv.acquire()
        self.stats.add(name, sum(c.x.shape[0] for c in calls))
        for c, r in zip(calls, results):
            c.result, c.error, c.done = r, error, True
        self._running = False
        self._cv.notify_all()


class BatchedRuntime:
    """An SR runtime whose component calls go through a TileBatcher; everything else (the
    constants, the tile rules, z0) is the wrapped runtime's, so super_resolve runs unchanged."""

    def __init__(self, rt: SRRuntime, batcher: TileBatcher):
        self._rt = rt
        self._batcher = batcher

    def __getattr__(self, attr):
        return getattr(self._rt, attr)

    def run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self._batcher.submit(name, x)

    # the contract's own composition (export/runtime.py), bound here so it calls run() above
    encode = SRRuntime.encode
    unet_eps = SRRuntime.unet_eps
    denoise = SRRuntime.denoise
    decode = SRRuntime.decode
    __call__ = SRRuntime.__call__

    def z0_from_eps(self, z, eps):
        return self._rt.z0_from_eps(z, eps)
