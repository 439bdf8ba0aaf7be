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
- guard: passion-serve owns the public HTTP, gRPC and metrics sockets (guard.py) and checks
  every request there; tritonserver listens on loopback ports only the guard reaches, because
  it crashes on some requests instead of refusing them and has no size limits of its own.
- supervision: if tritonserver dies anyway, the guard says not ready (503), the cause is logged
  from the exit status and the server's own output (not from its log file, whose error lines
  are often a harmless startup notice), and a new server starts after a bounded backoff.
- drain: SIGTERM or SIGINT sends SIGINT to tritonserver, as PyTriton's stop does. Triton then
  refuses new requests, lets those accepted finish (up to exit_timeout_secs, the drain timeout)
  and unloads the model. PyTriton's own stop gives the server only 30 s before killing it, too
  short for a full queue of large images, so this waits for the server's exit itself and only
  then lets PyTriton clean up.
"""
from __future__ import annotations

from ..errors import PassionError
import os
import re
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
    host: str = "127.0.0.1"  # loopback unless told otherwise: the service has no authentication
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    def url(self, port: int) -> str:
        """The address as bound (an IPv6 one in brackets), not a name it may not answer on."""
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"


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


def _free_loopback_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1 now, for a Triton only the guard talks to (fresh ones on every
    start, so a restart never waits for the dead server's sockets)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def exit_cause(exit_code: int | None, output: str, limit: int = 3) -> str:
    """Why tritonserver ended, from its exit status and the last lines it wrote to stdout/stderr
    (an abort's "std::bad_alloc" is there; Triton's log file only holds its own log lines)."""
    if exit_code is None:
        how = "its exit status is unknown"
    elif exit_code < 0 or exit_code > 128:
        signum = -exit_code if exit_code < 0 else exit_code - 128
        try:
            how = f"killed by {signal.Signals(signum).name}"
        except ValueError:
            how = f"killed by signal {signum}"
    else:
        how = f"exit status {exit_code}"
    # the last lines that can say why: not Triton's info lines (I1207 12:00:00.0 ...) nor the
    # model's own one-line banner, which precede any crash
    tail = [ln.strip() for ln in output.splitlines()
            if ln.strip() and not re.match(r"I\d{4} ", ln.strip()) and not ln.startswith("passion_sr: ")][-limit:]
    return how + (" after: " + " | ".join(tail) if tail else "")


def _server_exit(triton) -> tuple[int | None, str]:
    """tritonserver's exit status and output as PyTriton's TritonServer (its process runner) keeps
    them. PyTriton has no public accessor for either; pinned 0.7, read defensively."""
    srv = getattr(triton, "_triton_server", None)
    if srv is None:
        return None, ""
    output = srv.logs() if hasattr(srv, "logs") else ""
    cmd = getattr(srv, "_tritonserver_running_cmd", None)
    code = None
    try:
        code = cmd.process.exit_code if cmd is not None else None
    except Exception:  # the runner's internals moved: the cause is then the output alone
        code = None
    return code, output


@dataclass
class Backoff:
    """Delays between restarts: doubling from `first` to `cap` seconds, back to `first` once a
    server has stayed up `stable_s`; `give_up` failed starts in a row end the service."""

    first: float = 1.0
    cap: float = 30.0
    stable_s: float = 60.0
    give_up: int = 8
    delay: float = 0.0
    failures: int = 0

    def after_death(self, uptime_s: float) -> float:
        self.delay = self.first if uptime_s >= self.stable_s or not self.delay else min(self.cap, self.delay * 2)
        return self.delay

    def after_failed_start(self) -> float:
        self.failures += 1
        return self.after_death(0.0)


def serve(repo: Path, endpoints: Endpoints, load_error_file: Path, log_file: Path, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
          on_ready=None, on_stop=None, max_body: int | None = None, log=None, backoff: Backoff | None = None) -> float:
    """Run Triton on `repo` behind the guard (guard.py) until SIGTERM/SIGINT, then drain; returns
    the drain time in seconds. on_ready() runs once the server is first ready; on_stop() when a
    signal starts the drain; log(line) reports deaths and restarts (default: stderr).

    Supervision: if tritonserver dies (a crash the guard did not foresee, an OOM kill, a SIGKILL),
    the guard answers 503 / not ready at once, the cause (exit signal or status and the server's
    last output lines) is logged, and a new server starts after a bounded backoff on fresh
    loopback ports; the public ports never close. A model that fails to load on the first start
    ends passion-serve (nothing would ever serve); on a restart it is retried with the backoff up
    to Backoff.give_up times in a row."""
    from .guard import Guard, Upstream, default_max_body

    libpython_first()
    try:
        from pytriton.triton import Triton, TritonConfig
    except ImportError:
        raise ServeError(f"PyTriton is not installed: {INSTALL_HINT}") from None
    import logging
    import sys

    logging.getLogger("pytriton").setLevel(logging.CRITICAL)  # its lines repeat ours (a death is logged below)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    backoff = backoff or Backoff()
    try:
        guard = Guard(endpoints.host, endpoints.http_port, endpoints.grpc_port, endpoints.metrics_port,
                      max_body or default_max_body(0))
    except PassionError as e:
        raise ServeError(str(e)) from None
    stop = threading.Event()
    first = True
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    guard.start()
    try:
        while True:
            http, grpc, metrics = _free_loopback_ports(3)
            config = TritonConfig(model_repository=Path(repo), http_address="127.0.0.1", http_port=http,
                                  grpc_address="127.0.0.1", grpc_port=grpc, metrics_address="127.0.0.1",
                                  metrics_port=metrics, exit_timeout_secs=int(drain_timeout_s), strict_readiness=True,
                                  allow_gpu_metrics=cuda_available(), log_file=log_file)
            if load_error_file.exists():
                load_error_file.unlink()
            triton = Triton(config=config)
            try:
                _start(triton, load_error_file, log_file, stop)
            except ServeError as e:
                if first:
                    raise
                if stop.is_set():  # SIGTERM while restarting: nothing in flight to drain
                    return 0.0
                delay = backoff.after_failed_start()
                if backoff.failures >= backoff.give_up:
                    raise ServeError(f"Triton Inference Server failed to restart {backoff.failures} times in a "
                                     f"row; the last time: {e}") from None
                log(f"passion-serve: restart failed ({e}); trying again in {delay:.0f} s")
                if stop.wait(delay):
                    return 0.0
                continue
            backoff.failures = 0
            started = time.monotonic()
            guard.upstream = Upstream(http, grpc, metrics)
            if first:
                first = False
                if on_ready:
                    on_ready()
            else:
                log("passion-serve: Triton Inference Server restarted; ready")
            while not stop.wait(0.5) and triton.is_alive():
                pass
            if stop.is_set():
                if on_stop:
                    on_stop()
                t0 = time.perf_counter()
                _drain(drain_timeout_s)
                drained = time.perf_counter() - t0
                guard.upstream = None
                triton.stop()  # PyTriton's cleanup (its workspace); the server has exited by now
                return drained
            guard.upstream = None  # not ready from this moment: the guard answers 503, not a reset
            code, output = _server_exit(triton)
            delay = backoff.after_death(time.monotonic() - started)
            log(f"passion-serve: Triton Inference Server died ({exit_cause(code, output)}); "
                f"restarting in {delay:.0f} s")
            triton.stop()
            if stop.wait(delay):
                return 0.0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        guard.upstream = None
        guard.stop()


def _start(triton, load_error_file: Path, log_file: Path, stop: threading.Event) -> None:
    """triton.run() from the main thread (the server dies with the thread that started it,
    PR_SET_PDEATHSIG), interrupted by a watcher when the model fails to load or the server exits
    while PyTriton still waits for it to be ready. SIGTERM/SIGINT after the start set `stop`."""
    starting = threading.Event()
    starting.set()
    reason: list[str] = []

    def on_signal(signum, frame):
        if starting.is_set():  # a signal during startup: give up the wait at once
            reason.append(f"stopped by {signal.Signals(signum).name} while starting")
            stop.set()
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
                code, output = _server_exit(triton)
                reason.append("Triton Inference Server exited while starting ("
                              + exit_cause(code, output or _error_lines(log_file)) + ")")
            if reason:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                return
            time.sleep(0.2)

    for s, h in ((signal.SIGTERM, on_signal), (signal.SIGINT, on_signal), (signal.SIGUSR1, on_failure)):
        signal.signal(s, h)
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
                      else exit_cause(*_server_exit(triton)))
            raise ServeError(f"Triton Inference Server did not start ({detail or e})") from None
    finally:
        starting.clear()
