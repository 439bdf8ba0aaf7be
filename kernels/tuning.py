"""The launch a kernel gets on a GPU: tuned once per GPU model and shape class, remembered on disk.

configs.py lists, per shape class, the launches a kernel may take (every one of them compiled
ahead of time for sm_90 and sm_80 by aot.py). On a GPU the first launch of a (kernel, shape
class, variant) runs `triton.autotune` over that class's list; the winner is written to a JSON
file per user, keyed by the GPU's name and Triton's version, so later processes launch it
directly instead of tuning again. A stored launch no longer in its class's list (configs.py
changed) is ignored and tuned anew, so only listed, AOT-compiled launches ever run.

    file:  $PASSION_DEPLOY_CACHE/autotune.json, else $XDG_CACHE_HOME/passion-deploy/autotune.json,
           else ~/.cache/passion-deploy/autotune.json
    PASSION_DEPLOY_AUTOTUNE=0: no tuning, every class takes its first (fixed) launch

Triton's interpreter has no timing to tune on: it always takes the fixed launch (the kernel
wrappers decide that; this module is only reached on a GPU).
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from pathlib import Path

from .configs import Launch

FILE_NAME = "autotune.json"
VERSION = 1  # of the file's layout


def enabled() -> bool:
    return os.environ.get("PASSION_DEPLOY_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_path() -> Path:
    root = os.environ.get("PASSION_DEPLOY_CACHE")
    if root:
        return Path(root) / FILE_NAME
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "passion-deploy" / FILE_NAME


def _launch_to_json(launch: Launch) -> dict:
    return {"block": list(launch.block), "num_warps": launch.num_warps, "num_stages": launch.num_stages}


def _launch_from_json(d) -> Launch | None:
    try:
        return Launch(tuple(int(b) for b in d["block"]), int(d["num_warps"]), int(d["num_stages"]))
    except (KeyError, TypeError, ValueError):
        return None


class TuneCache:
    """Chosen launches per device ("<GPU name> / triton <version>") and key, in one JSON file.

    Reads once, then serves from memory; each new choice is merged into the file as it is on
    disk (other processes may have added theirs) and written atomically (a temporary file
    renamed over it). A file that cannot be read or written costs a warning, never a failure:
    the launch is then tuned per process."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else cache_path()
        self._lock = threading.Lock()
        self._mem: dict[str, dict[str, dict]] | None = None
        self._warned = False

    def _read(self) -> dict[str, dict[str, dict]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            self._warn(f"cannot read {self.path} ({e}); kernels are tuned again")
            return {}
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("devices"), dict):
            return {}
        return {dev: dict(entries) for dev, entries in data["devices"].items() if isinstance(entries, dict)}

    def _warn(self, msg: str) -> None:
        if not self._warned:
            warnings.warn(f"passion-deploy autotune cache: {msg}", RuntimeWarning, stacklevel=3)
            self._warned = True

    def get(self, device: str, key: str, allowed: tuple[Launch, ...]) -> Launch | None:
        with self._lock:
            if self._mem is None:
                self._mem = self._read()
            launch = _launch_from_json(self._mem.get(device, {}).get(key))
        return launch if launch in allowed else None

    def put(self, device: str, key: str, launch: Launch) -> None:
        with self._lock:
            if self._mem is None:
                self._mem = self._read()
            self._mem.setdefault(device, {})[key] = _launch_to_json(launch)
            on_disk = self._read()
            on_disk.setdefault(device, {})[key] = _launch_to_json(launch)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".autotune-", dir=self.path.parent)
                with os.fdopen(fd, "w") as f:
                    json.dump({"version": VERSION, "devices": on_disk}, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except OSError as e:
                self._warn(f"cannot write {self.path} ({e}); the choice is kept for this process only")


_CACHE: TuneCache | None = None


def cache() -> TuneCache:
    """The process's cache of the file `cache_path()` names (read again if that name changed)."""
    global _CACHE
    if _CACHE is None or _CACHE.path != cache_path():
        _CACHE = TuneCache()
    return _CACHE


def device_key(device) -> str:
    """What a tuned launch is valid for: the GPU model and the compiler that built the kernel."""
    import torch
    import triton

    return f"{torch.cuda.get_device_name(device)} / triton {triton.__version__}"


def tuned_launch(kernel, grid_fn, args: tuple, constexprs: dict, key: str, candidates: tuple[Launch, ...],
                 tile: tuple[str, ...], device) -> None:
    """Launch `kernel` (a @triton.jit function) with the launch tuned for `key` among `candidates`:
    the stored choice for this GPU if there is one, else `triton.autotune` over all of them
    (each timed on this very call's arguments; its last run leaves the outputs of the winner),
    whose choice is then stored. grid_fn(block) -> grid; `tile`: the kernel's block constexprs."""
    import triton

    dev = device_key(device)
    store = cache()
    launch = store.get(dev, key, candidates)
    if launch is not None:
        kernel[grid_fn(launch.block)](*args, **constexprs, **dict(zip(tile, launch.block)), **launch.options())
        return
    tuner = _autotuner(kernel, key, candidates, tile)
    tuner[lambda meta: grid_fn(tuple(meta[t] for t in tile))](*args, **constexprs)
    best = tuner.best_config
    chosen = Launch(tuple(best.kwargs[t] for t in tile), best.num_warps, best.num_stages)
    store.put(dev, key, chosen)


_AUTOTUNERS: dict[tuple, object] = {}
# the timing function triton.autotune uses (None: Triton's own benchmarker, CUDA events on the
# GPU); tests set one to run the tuning path in Triton's interpreter
DO_BENCH = None


def _autotuner(kernel, key: str, candidates: tuple[Launch, ...], tile: tuple[str, ...]):
    """One triton.autotune wrapper per tuning key, over the class's candidates (Triton's own key
    list is empty: the wrapper is the key's, Triton adds the argument dtypes)."""
    import triton

    k = (kernel, key, candidates, DO_BENCH)
    if k not in _AUTOTUNERS:
        cfgs = [triton.Config(dict(zip(tile, c.block)), num_warps=c.num_warps, num_stages=c.num_stages)
                for c in candidates]
        _AUTOTUNERS[k] = triton.autotune(configs=cfgs, key=[], do_bench=DO_BENCH)(kernel)
    return _AUTOTUNERS[k]
