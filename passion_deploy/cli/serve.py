"""passion-serve: serve an artifact (or a PyTorch backend, for comparison) through NVIDIA Triton
Inference Server, as PyTriton bundles it (runs on a CPU-only machine too).

The model `passion_sr` takes `image` (uint8, N x H x W x 3, any size within the pixel budget) or
`encoded` (image files' bytes) and returns `sr` (uint8, N x 4H x 4W x 3), bit-identical to
passion-sr's output for the same input with the same tiling. Triton's dynamic batcher gathers
concurrent requests (up to --max-batch images, waiting up to --max-queue-delay-ms), and their
tiles share the engines' calls. Health: /v2/health/ready, /v2/models/passion_sr/ready; Prometheus
metrics on --metrics-port. SIGTERM or Ctrl-C drains in-flight requests, then stops.

It listens on 127.0.0.1 unless --host says otherwise. Every request is checked before Triton
sees it (size within --max-request-mb, declared shapes, well-formed JSON or binary tensors); if
the server dies anyway it is restarted, and the cause is logged.

--write-repo DIR writes a Triton model repository for a full Triton server instead (component
models on Triton's TensorRT / ONNX Runtime backends, a tile ensemble, the whole-image model).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from . import refusals
from .serving_args import add_model_args, add_sr_args, load_checked, model_spec, sr_settings
from .sr import UsageError

PROG = "passion-serve"


def build_parser() -> argparse.ArgumentParser:
    from ..serving.server import DEFAULT_DRAIN_TIMEOUT_S

    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1",
                   help="address the HTTP, gRPC and metrics endpoints listen on (default 127.0.0.1, this machine only; "
                        "0.0.0.0 for every interface: the service has no authentication)")
    s.add_argument("--http-port", type=int, default=8000, help="default 8000")
    s.add_argument("--grpc-port", type=int, default=8001, help="default 8001")
    s.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics at /metrics (default 8002)")
    s.add_argument("--max-batch", type=int, default=4, metavar="N",
                   help="images Triton's dynamic batcher gathers into one execution, and tiles per engine call "
                        "(at most the engines' own batch) (default 4)")
    s.add_argument("--max-queue-delay-ms", type=float, default=5.0, metavar="MS",
                   help="how long the dynamic batcher waits for more requests to join a batch (default 5)")
    s.add_argument("--instances", type=int, default=1, metavar="N",
                   help="model instances (processes, each loading the model; per GPU for GPU artifacts) (default 1)")
    s.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, metavar="S",
                   help="on SIGTERM or Ctrl-C, how long requests already accepted may take to finish "
                        f"(default {DEFAULT_DRAIN_TIMEOUT_S})")
    s.add_argument("--max-request-mb", type=float, metavar="MB",
                   help="refuse (HTTP 413, gRPC RESOURCE_EXHAUSTED) a request body or message over MB megabytes, and "
                        "any input whose declared shape would take more (default: 64, or more when --max-pixels "
                        "needs it: 8 bytes a pixel)")
    s.add_argument("--write-repo", metavar="DIR",
                   help="write a Triton model repository of the --model artifact to DIR (a new folder) and exit")
    add_sr_args(p)
    return p


def _check(args) -> None:
    if args.max_batch < 1:
        raise UsageError(f"--max-batch {args.max_batch} must be at least 1")
    if args.instances < 1:
        raise UsageError(f"--instances {args.instances} must be at least 1")
    if args.drain_timeout < 0:
        raise UsageError(f"--drain-timeout {args.drain_timeout} must be 0 or more seconds")
    if args.max_request_mb is not None and args.max_request_mb <= 0:
        raise UsageError(f"--max-request-mb {args.max_request_mb} must be above 0")
    if args.max_queue_delay_ms < 0:
        raise UsageError(f"--max-queue-delay-ms {args.max_queue_delay_ms} must be 0 or more")
    ports = {"--http-port": args.http_port, "--grpc-port": args.grpc_port, "--metrics-port": args.metrics_port}
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise UsageError(f"{flag} {port} is not a port (1 to 65535)")
    if len(set(ports.values())) < 3:
        raise UsageError("--http-port, --grpc-port and --metrics-port must differ, got "
                         + ", ".join(f"{k} {v}" for k, v in ports.items()))
    if args.write_repo and not args.model:
        raise UsageError("--write-repo needs --model DIR: the repository holds an artifact's engines or ONNX models")
    if not args.write_repo:
        for flag, port in ports.items():
            _check_port(flag, args.host, port)


def _check_port(flag: str, host: str, port: int) -> None:
    """Refuse a port another process holds, before the model loads. SO_REUSEADDR as the server
    binds it: a port left in TIME_WAIT by a server that just died is free to listen on again."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"{flag} {port}: cannot listen on {host}:{port} ({e.strerror or e}); "
                             "is another server running there?") from None


@refusals(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check(args)
    spec, settings = model_spec(args), sr_settings(args)
    if args.write_repo:
        return _write_repo(args, settings)
    return _serve(args, spec, settings)


def _write_repo(args, settings) -> int:
    from ..io_utils import writable_dir
    from ..serving.repository import write_model_repository

    writable_dir(args.write_repo, "--write-repo", beside=True)  # built beside it, then renamed into place
    s = write_model_repository(args.write_repo, args.model, settings, args.max_batch,
                               int(args.max_queue_delay_ms * 1000), args.instances)
    print(f"{PROG}: wrote a Triton model repository of {args.model} to {s.out}:")
    for name, what in s.models.items():
        print(f"  {name:16s} {what}")
    for note in s.notes:
        print(f"  note: {note}")
    print(f"  run it with: tritonserver --model-repository {s.out}  (the Python models need passion-deploy "
          "installed in the server's Python)")
    return 0


def _serve(args, spec, settings) -> int:
    from ..serving.repository import write_serving_repository
    from ..serving.guard import default_max_body
    from ..serving.server import Endpoints, ServeError, serve

    # the model is loaded here once, as passion-sr loads it, so a bad model or tiling is refused
    # in one sentence before any server starts; the model instances load it again for themselves
    model = load_checked(spec, settings)
    description = model.description
    del model
    ends = Endpoints(args.host, args.http_port, args.grpc_port, args.metrics_port)
    work = Path(tempfile.mkdtemp(prefix="passion-serve-"))
    try:
        load_error, log = work / "load_error.txt", work / "tritonserver.log"
        write_serving_repository(work / "repository", spec, settings, args.max_batch, int(args.max_queue_delay_ms * 1000),
                                 args.instances, load_error)
        print(f"{PROG}: {description}", flush=True)
        print(f"{PROG}: starting Triton Inference Server ({args.instances} instance(s), up to {args.max_batch} images per "
              "batch)...", flush=True)

        def ready():
            print(f"{PROG}: ready. model 'passion_sr' at http://{ends.url(ends.http_port)}/v2/models/passion_sr "
                  f"(gRPC {ends.url(ends.grpc_port)}, metrics http://{ends.url(ends.metrics_port)}/metrics); "
                  "SIGTERM or Ctrl-C drains and stops", flush=True)

        def stopping():
            print(f"{PROG}: stopping: finishing the requests in flight, refusing new ones...", flush=True)

        max_body = (int(args.max_request_mb * (1 << 20)) if args.max_request_mb
                    else default_max_body(settings.budget or 0))
        try:
            drain_s = serve(work / "repository", ends, load_error, log, args.drain_timeout, on_ready=ready,
                            on_stop=stopping, max_body=max_body)
        except ServeError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 1
        print(f"{PROG}: stopped ({drain_s:.1f} s to drain)", flush=True)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
