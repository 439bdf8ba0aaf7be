"""PyTriton's bundled Triton Inference Server on a model repository, until SIGTERM or Ctrl-C.

- libpython: Triton's Python-backend stub (the process each model instance runs in) embeds
  libpython. It must load the libpython of the interpreter running passion-serve, or it gets
  another Python's (the system's) with this environment's packages and fails while loading
  the model (an AttributeError inside multiprocessing). The interpreter's LIBDIR therefore goes
  first on LD_LIBRARY_PATH before PyTriton starts the server; the stub is a fresh process that
  inherits it, so this process need not restart.
- startup: PyTriton waits up to two minutes for a server that is ready; a model that fails to
  load instead makes the server exit. A watcher thread sees the model's one-line load error
  (tritonserver_model.py writes it) or the server's exit, and interrupts the wait with that reason.
  PyTriton has to start the server from the main thread: the server dies with the thread that
  started it (PR_SET_PDEATHSIG).
- drain: SIGTERM or SIGINT sends SIGINT to tritonserver, as PyTriton's stop does. Triton then
  refuses new requests, lets those accepted finish (up to exit_timeout_secs, the drain timeout)
  and unloads the model. PyTriton's own stop gives the server only 30 s before killing it, too
  short for a full queue of large images, so this waits for the server's exit itself and only
  then lets PyTriton clean up.
"""
from __future__ import annotations

from ..errors import PassionError
import os
import signal
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..devices import cuda_available

DEFAULT_DRAIN_TIMEOUT_S = 120
INSTALL_HINT = "pip install 'passion-deploy[serve]' (nvidia-pytriton, tritonclient)"


class ServeError(PassionError, RuntimeError):
    """The server cannot start or stopped on its own; the message says why in one sentence."""


@dataclass
class Endpoints:
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    def url(self, port: int) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{port}"


def libpython_first(environ=None) -> str:
    """Put this interpreter's libpython directory first on LD_LIBRARY_PATH (see the module
    docstring); returns the directory. Refuses a Python built without a shared libpython."""
    environ = os.environ if environ is None else environ
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED")) or any(Path(libdir).glob("libpython3*.so*"))
    if not shared or not libdir:
        raise ServeError(f"this Python ({sysconfig.get_config_var('VERSION')}, {ldlib or 'no libpython'}) has no shared "
                         "libpython, which Triton's Python backend needs; use a Python built with --enable-shared "
                         "(python.org and distribution builds are; pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)")
    parts = [p for p in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if not parts or parts[0] != libdir:
        environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + [p for p in parts if p != libdir])
    return libdir


class _StartupFailed(Exception):
    pass


def _error_lines(log: Path, limit: int = 3) -> str:
    """The error lines of Triton's log (E... lines), the last few."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errs = [ln.split("] ", 1)[-1].strip().strip('"') for ln in lines if ln.startswith("E")]
    return "; ".join(errs[-limit:])


def _tritonserver_pids() -> list[int]:
    """This process's tritonserver children (Linux /proc: the threads' children lists)."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for c in children:
            try:
                if Path(f"/proc/{c}/comm").read_text().strip() == "tritonserver":
                    pids.append(int(c))
            except OSError:
                pass
    return pids


def _drain(timeout_s: float) -> None:
    """SIGINT to tritonserver, then wait up to timeout_s (+ a margin for unloading) for its exit."""
    pids = _tritonserver_pids()
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout_s + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
        time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def serve(repo: Path, endpoints: Endpoints, load_error_file: Path, log_file: Path, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
          on_ready=None, on_stop=None) -> float:
    """Run Triton on `repo` until SIGTERM/SIGINT, then drain; returns the drain time in seconds.
    on_ready() runs once the server is ready; on_stop() when a signal starts the drain."""
    libpython_first()
    try:
        from pytriton.triton import Triton, TritonConfig
    except ImportError:
        raise ServeError(f"PyTriton is not installed: {INSTALL_HINT}") from None
    import logging

    logging.getLogger("pytriton").setLevel(logging.ERROR)  # its INFO lines repeat ours; errors still show

    config = TritonConfig(model_repository=Path(repo), http_address=endpoints.host, http_port=endpoints.http_port,
                          grpc_address=endpoints.host, grpc_port=endpoints.grpc_port, metrics_address=endpoints.host,
                          metrics_port=endpoints.metrics_port, exit_timeout_secs=int(drain_timeout_s), strict_readiness=True,
                          allow_gpu_metrics=cuda_available(), log_file=log_file)
    triton = Triton(config=config)
    stop = threading.Event()
    starting = threading.Event()
    starting.set()
    reason: list[str] = []

    def on_signal(signum, frame):
        if starting.is_set():  # a signal during startup: give up the wait at once
            reason.append(f"stopped by {signal.Signals(signum).name} while starting")
            raise _StartupFailed()
        stop.set()

    def on_failure(signum, frame):
        if starting.is_set():  # late news after a successful start is the serve loop's to see
            raise _StartupFailed()

    def watch():
        seen_alive, t0 = False, time.monotonic()
        while starting.is_set():
            if load_error_file.exists():
                reason.append("the model failed to load: " + load_error_file.read_text(encoding="utf-8").strip())
            elif triton.is_alive():
                seen_alive = True
            elif seen_alive or (time.monotonic() - t0 > 20 and _error_lines(log_file)):
                # it exited (or never came up) while PyTriton still waits for it to be ready
                reason.append("Triton Inference Server exited while starting: "
                              + (_error_lines(log_file) or f"see {log_file}"))
            if reason:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                return
            time.sleep(0.2)

    old = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, on_signal), (signal.SIGINT, on_signal),
                                                 (signal.SIGUSR1, on_failure))}
    watcher = threading.Thread(target=watch, name="passion-serve-startup", daemon=True)
    try:
        watcher.start()
        try:
            triton.run()  # starts tritonserver, which loads the repository's models, and waits until it is ready
        except _StartupFailed:
            starting.clear()
            triton.stop()
            raise ServeError(reason[0] if reason else "the server did not start") from None
        except Exception as e:
            starting.clear()
            triton.stop()
            detail = (load_error_file.read_text(encoding="utf-8").strip() if load_error_file.exists()
                      else _error_lines(log_file))
            raise ServeError(f"Triton Inference Server did not start ({detail or e})") from None
        starting.clear()
        if on_ready:
            on_ready()
        while not stop.wait(0.5):
            if not triton.is_alive():
                raise ServeError("Triton Inference Server stopped on its own: " + (_error_lines(log_file) or f"see {log_file}"))
        if on_stop:
            on_stop()
        t0 = time.perf_counter()
        _drain(drain_timeout_s)
        drained = time.perf_counter() - t0
        triton.stop()  # PyTriton's cleanup (its workspace); the server has exited by now
        return drained
    finally:
        starting.clear()
        for s, h in old.items():
            signal.signal(s, h)
        if triton.is_alive():
            triton.stop()
