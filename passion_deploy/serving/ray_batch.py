"""A folder (or a list) of images super-resolved by Ray actors, each loading the model once.

The driver plans the job as passion-sr does (one output per input stem; finished outputs kept
unless overwrite; clashing names refused by name), then hands images to the actors: file bytes
go out, PNG bytes come back, and the driver writes each output atomically. Nothing needs a
shared file system, and every output is written by one process, once.

Placement: one actor per GPU where the model runs on GPUs (num_gpus=1 each); otherwise actors
of `cpus_per_worker` CPUs each, as many as the cluster's CPUs hold (or `workers`). Each actor
keeps two images queued so it never waits for the driver.

Failures: a worker that dies (its process killed, its node lost) has its images retried on
another worker, and a replacement actor is started while the cluster has room. An image whose
processing fails twice (a dead worker, an exception) is reported by name with the reason; a
file that is not a readable image is reported at once (it would fail anywhere). Nothing is
dropped silently: the result lists every input as written, kept, or failed.
"""
from __future__ import annotations

from ..errors import PassionError
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..io_utils import atomic_path, not_a_file, real_path
from .spec import ModelSpec, SRSettings

MAX_ATTEMPTS = 2
QUEUE_PER_WORKER = 2
START_TIMEOUT_S = 600  # a worker's start (scheduling and loading the model), when no worker is up


class BatchError(PassionError, RuntimeError):
    """The job cannot run (no Ray, no cluster, no worker could load the model): one sentence."""


@dataclass
class ImageJob:
    src: Path
    target: Path
    attempts: int = 0
    tried_on: set = field(default_factory=set)  # worker numbers it failed on
    reasons: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.src)


@dataclass
class BatchResult:
    written: dict[str, int] = field(default_factory=dict)  # input -> times its output was written (1)
    kept: list[str] = field(default_factory=list)  # finished before this run
    failed: dict[str, str] = field(default_factory=dict)  # input -> why
    retried: int = 0
    worker_deaths: int = 0
    workers: dict[int, dict] = field(default_factory=dict)  # worker number -> pid, node, model
    seconds: float = 0.0


def plan(files: list[Path], out: Path, overwrite: bool, result: BatchResult) -> list[ImageJob]:
    """The images to process: passion-sr's rules for names, clashes and finished outputs."""
    jobs, seen = [], {}
    for f in files:
        target = out / f"{f.stem}.png"
        key = real_path(target)
        if key in seen:
            result.failed[str(f)] = f"its output {target} is also the output of {seen[key].name}; rename one of them"
            continue
        seen[key] = f
        if key == real_path(f):
            result.failed[str(f)] = "its output would overwrite the input; choose another output folder"
        elif target.exists() and not overwrite:
            result.kept.append(str(f))
        else:
            jobs.append(ImageJob(f, target))
    return jobs


def _worker_class():
    import ray

    @ray.remote
    class SRWorker:
        """One model, loaded once; images in as file bytes, PNG bytes out."""

        def __init__(self, spec: ModelSpec, settings: SRSettings, batch: int):
            import socket

            self.settings, self.batch = settings, batch
            self.info_ = {"pid": os.getpid(), "node": socket.gethostname()}
            try:
                self.model = spec.load()
                self.info_["model"] = self.model.description
            except Exception as e:  # the driver reports it in one sentence and uses the other workers
                self.model = None
                self.info_["error"] = f"{e.__class__.__name__}: {e}"

        def info(self) -> dict:
            return self.info_

        def process(self, name: str, data: bytes):
            from ..images import ImageError
            from .spec import decode_image, png_bytes, sr_uint8

            try:
                lr = decode_image(data, name, self.settings.budget)
            except ImageError as e:
                return "bad", str(e)
            return "ok", png_bytes(sr_uint8(self.model, lr, self.settings, self.batch))

    return SRWorker


def _sentence(e: BaseException) -> str:
    """An exception from a Ray task as one line: the original error's last line, not Ray's traceback."""
    cause = getattr(e, "cause", None)
    if cause is not None and not isinstance(cause, type(e)):
        return _sentence(cause)
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else e.__class__.__name__


def _wants_gpu(spec: ModelSpec) -> bool:
    if spec.model_dir:
        from ..export import targets

        return targets.serve_spec(spec.model_dir).gpu
    return spec.device != "cpu"


class RayBatch:
    """One job: `run()` plans, dispatches and collects; `on_result(name, record)` is called after
    each output is written (the tests use it to kill a worker mid-job)."""

    def __init__(self, files: list[Path], out: Path, spec: ModelSpec, settings: SRSettings, *, address: str | None = None,
                 workers: int | None = None, cpus_per_worker: float = 1.0, batch: int = 1, overwrite: bool = False,
                 progress: bool = True, on_result=None, ray_init: dict | None = None):
        self.files, self.out, self.spec, self.settings = [Path(f) for f in files], Path(out), spec, settings
        self.address, self.n_workers, self.cpus, self.batch = address, workers, cpus_per_worker, batch
        self.overwrite, self.progress, self.on_result = overwrite, progress, on_result
        self.ray_init = ray_init or {}
        self.result = BatchResult()

    # -- the cluster ---------------------------------------------------------------------------
    def _connect(self):
        try:
            import ray
        except ImportError:
            raise BatchError("Ray is not installed: pip install 'passion-deploy[serve]'") from None
        import logging

        started = False
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                  **self.ray_init}
            try:
                if self.address:
                    ray.init(address=self.address, **kw)
                else:  # a local cluster on this machine, big enough for the workers asked for
                    cpus = max(os.cpu_count() or 1, int((self.n_workers or 1) * self.cpus + 0.999))
                    ray.init(num_cpus=kw.pop("num_cpus", cpus), **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise BatchError(f"cannot reach the Ray cluster at {self.address or 'a new local cluster'}: "
                                 f"{_sentence(e)}") from None
            started = True
        return ray, started

    def _placement(self, ray) -> tuple[int, dict]:
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        if gpus and _wants_gpu(self.spec):
            return self.n_workers or gpus, {"num_gpus": 1, "num_cpus": 1}
        n = self.n_workers or max(1, int(res.get("CPU", 1) // self.cpus))
        return n, {"num_cpus": self.cpus}

    # -- the job -----------------------------------------------------------------------------
    def run(self) -> BatchResult:
        t0 = time.perf_counter()
        jobs = plan(self.files, self.out, self.overwrite, self.result)
        if jobs:
            ray, started = self._connect()
            try:
                self._run(ray, jobs)
            finally:
                if started:
                    ray.shutdown()
        self.result.seconds = time.perf_counter() - t0
        return self.result

    def _run(self, ray, jobs: list[ImageJob]) -> None:
        from tqdm import tqdm

        SRWorker = _worker_class()
        n, resources = self._placement(ray)
        opts = {**resources, "max_restarts": 0, "max_task_retries": 0}
        actors: dict[int, object] = {}
        starting: dict[object, int] = {}  # info() ref -> worker number, until the model is loaded
        alive: set[int] = set()
        load_errors: list[str] = []
        spares = n  # replacements for dead workers, at most as many as the workers asked for

        def start(i: int):
            actors[i] = SRWorker.options(**opts).remote(self.spec, self.settings, self.batch)
            starting[actors[i].info.remote()] = i
            started_at[i] = time.monotonic()

        started_at: dict[int, float] = {}

        for i in range(n):
            start(i)
        pending = deque(jobs)
        inflight: dict[object, tuple[ImageJob, int]] = {}
        load = {i: 0 for i in range(n)}
        bar = tqdm(total=len(jobs), unit="img", desc="super-resolving (ray)", disable=not self.progress)

        def fail_or_retry(job: ImageJob, worker: int, why: str):
            job.attempts += 1
            job.tried_on.add(worker)
            job.reasons.append(why)
            if job.attempts >= MAX_ATTEMPTS:
                self.result.failed[job.name] = f"failed {job.attempts} times: " + "; ".join(job.reasons)
                bar.update(1)
            else:
                self.result.retried += 1
                pending.appendleft(job)

        def dispatch():
            for w in sorted(alive, key=lambda w: load[w]):
                while load[w] < QUEUE_PER_WORKER and pending:
                    # a retried image goes to a worker it has not failed on, while there is one
                    job = next((j for j in pending if w not in j.tried_on or not (alive - j.tried_on)), None)
                    if job is None:
                        break
                    pending.remove(job)
                    why = not_a_file(job.src)  # a FIFO would block the driver; a broken link is named as one
                    if why:
                        self.result.failed[job.name] = f"not read: it {why}"
                        bar.update(1)
                        continue
                    try:
                        data = job.src.read_bytes()
                    except OSError as e:
                        self.result.failed[job.name] = f"cannot read it ({e.__class__.__name__}: {e})"
                        bar.update(1)
                        continue
                    ref = actors[w].process.remote(job.name, data)
                    inflight[ref] = (job, w)
                    load[w] += 1

        try:
            while pending or inflight:
                if not alive and starting and all(time.monotonic() - started_at[i] > START_TIMEOUT_S for i in starting.values()):
                    raise BatchError(f"no Ray worker started within {START_TIMEOUT_S} s: the cluster has no room for "
                                     f"{resources} per worker")
                if not alive and not starting:
                    why = ("no worker could load the model: " + load_errors[0]) if load_errors else "every worker died"
                    for job in list(pending):
                        self.result.failed[job.name] = f"not processed: {why}"
                    bar.update(len(pending))
                    pending.clear()
                    if load_errors and not self.result.written:
                        raise BatchError(f"no Ray worker could load the model: {load_errors[0]}")
                    break
                dispatch()
                ready, _ = ray.wait(list(inflight) + list(starting), num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in starting:
                        i = starting.pop(ref)
                        try:
                            info = ray.get(ref)
                        except ray.exceptions.RayActorError as e:
                            info = {"error": _sentence(e)}
                        if "error" in info:
                            load_errors.append(info["error"])
                            bar.write(f"passion-batch: worker {i} could not load the model: {info['error']}")
                            ray.kill(actors[i])
                        else:
                            self.result.workers[i] = info
                            alive.add(i)
                        continue
                    job, w = inflight.pop(ref)
                    load[w] -= 1
                    try:
                        status, payload = ray.get(ref)
                    except ray.exceptions.RayActorError as e:
                        fail_or_retry(job, w, f"worker {w} died ({_sentence(e)})")
                        if w in alive:  # the first of its images to report it: requeue the others too
                            alive.discard(w)
                            self.result.worker_deaths += 1
                            bar.write(f"passion-batch: worker {w} died; retrying its images on the others")
                            if spares > 0:
                                spares -= 1
                                j = len(actors)
                                load[j] = 0
                                start(j)
                        continue
                    except ray.exceptions.RayError as e:  # the task raised, or its result was lost
                        fail_or_retry(job, w, _sentence(e))
                        continue
                    if status == "bad":
                        self.result.failed[job.name] = payload
                        bar.update(1)
                        continue
                    with atomic_path(job.target) as tmp:
                        tmp.write_bytes(payload)
                    self.result.written[job.name] = self.result.written.get(job.name, 0) + 1
                    bar.update(1)
                    if self.on_result:
                        self.on_result(job.name, {"worker": w, **self.result.workers.get(w, {})})
        finally:
            bar.close()
            for a in actors.values():
                try:
                    ray.kill(a)
                except Exception:  # already dead
                    pass
