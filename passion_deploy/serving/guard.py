"""The guard in front of Triton Inference Server: every request is checked before Triton sees it.

Why a guard: the tritonserver PyTriton bundles has no limit on a request's size or on the
shapes it declares, and dies on some requests instead of refusing them (found by review, each
reproduced): a JSON request declaring shape [1, 100000, 100000, 3] aborts it (std::bad_alloc
while it sizes a buffer from the shape), a JSON body of ~7 MB or a 200 KB one of nested
brackets crashes it (SIGSEGV in its JSON parser). Its own options offer no input size limit
(no --http-max-input-size in this build). So passion-serve owns the public sockets and Triton
listens on loopback ports only the guard uses:

- HTTP: only the KServe v2 paths a client of `passion_sr` needs (health, metadata, config,
  stats, infer); repository control, shared memory, trace and log settings are not served. A
  body needs a Content-Length within the limit (`max_body`), refused before it is read. An
  infer request is parsed here, by Python's JSON parser (which refuses deep nesting with an
  error, not a crash), every input's datatype, shape and size checked against what it carries,
  and it is re-encoded as Triton's binary-tensor form: Triton parses only a small JSON header
  this guard wrote, never a client's JSON. A bad request gets one sentence, as Triton's own
  errors come ({"error": "..."}), with 400 (413 for a body over the limit).
- gRPC: the same checks on ModelInferRequest; gRPC itself refuses a message over the limit
  before it is read. Streaming infer and the control methods are not served.
- metrics: GET /metrics only.

While Triton is down (it died and the supervisor in server.py restarts it) the guard answers
503 ("not ready"), and /v2/health/ready and gRPC ServerReady say not ready: clients see a
service that is restarting, not a closed port.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from ..errors import PassionError

MODEL = "passion_sr"
MAX_RANK = 8
MAX_INPUTS = 8
MAX_HEADER_BYTES = 64 * 1024  # the JSON header of a binary request, and the one the guard writes
MAX_NAME = 256
MAX_CONNECTIONS = 128  # connections served at once; more get an immediate 503, so threads stay bounded
MAX_CONVERSIONS = 2  # large JSON bodies turned into arrays at once (their Python lists are the big cost)
SOCKET_TIMEOUT_S = 120  # a client that stops sending mid-request frees its thread after this
DISCARD_BYTES = 256 << 20  # of a refused body, read and dropped so the client sees the 413
UPSTREAM_TIMEOUT_S = 3600  # a queued request may wait long behind large images; a dead Triton closes at once

# KServe v2 datatypes: bytes per element and the NumPy type a JSON value list becomes
DTYPES = {"BOOL": (1, np.bool_), "UINT8": (1, np.uint8), "UINT16": (2, np.uint16), "UINT32": (4, np.uint32),
          "UINT64": (8, np.uint64), "INT8": (1, np.int8), "INT16": (2, np.int16), "INT32": (4, np.int32),
          "INT64": (8, np.int64), "FP16": (2, np.float16), "FP32": (4, np.float32), "FP64": (8, np.float64),
          "BYTES": (None, None)}

HTTP_ROUTES = [  # (method, path pattern); the model may be addressed with a version
    ("GET", r"/v2"), ("GET", r"/v2/health/(live|ready)"),
    ("GET", rf"/v2/models/{MODEL}(/versions/\d+)?(/ready|/config|/stats)?"),
    ("POST", rf"/v2/models/{MODEL}(/versions/\d+)?/infer"),
]
GRPC_SERVICE = "/inference.GRPCInferenceService/"
GRPC_SERVED = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
               "ModelStatistics", "ModelInfer"}


class Refused(PassionError):
    """A request the guard refuses; `status` is the HTTP status, the message one sentence."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def default_max_body(max_pixels: int) -> int:
    """The default body limit: a request of one image at the pixel budget in its largest form (an
    encoded 16-bit RGBA file, 8 bytes a pixel) plus room for headers, and never under 64 MiB."""
    return max(64 << 20, 8 * max_pixels + (1 << 20))


# -- checking a request ----------------------------------------------------------------------------
def _name(x, what: str) -> str:
    if not isinstance(x, str) or not x or len(x) > MAX_NAME:
        raise Refused(f"{what} must be a non-empty string of at most {MAX_NAME} characters")
    return x


def _shape(name: str, shape, datatype, max_body: int) -> int:
    """The element count the shape declares, after checking it is a shape and fits the limit."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise Refused(f"input {name!r}: 'shape' must be a list of at most {MAX_RANK} non-negative integers, "
                      f"got {str(shape)[:80]}")
    if datatype not in DTYPES:
        raise Refused(f"input {name!r}: datatype {str(datatype)[:40]!r} is not a KServe v2 datatype")
    count = math.prod(shape)
    size = DTYPES[datatype][0] or 4  # a BYTES element takes at least its 4-byte length
    if count * size > max_body:
        raise Refused(f"input {name!r} declares shape {list(shape)} ({count * size:,} bytes), over the request "
                      f"limit of {max_body:,} bytes (passion-serve --max-request-mb)", 413)
    return count


def _scalars(params, where: str) -> dict:
    """Request parameters pass through when they are plain values; shared memory is not served
    (it would let a client name memory regions on the server's machine)."""
    if params is None:
        return {}
    if not isinstance(params, dict) or len(params) > 16:
        raise Refused(f"{where}: 'parameters' must be an object of at most 16 entries")
    for k, v in params.items():
        if k.startswith("shared_memory"):
            raise Refused(f"{where}: shared memory is not served; send the data in the request")
        if not isinstance(v, (bool, int, float, str)) or (isinstance(v, str) and len(v) > MAX_NAME):
            raise Refused(f"{where}: parameter {k[:40]!r} must be a number, a boolean or a short string")
    return dict(params)


def _values(name: str, data, shape: list, datatype: str, count: int) -> bytes:
    """JSON data of one input as the bytes of Triton's binary-tensor form."""
    flat = _flat(data, len(shape), name)
    if len(flat) != count:
        raise Refused(f"input {name!r}: shape {shape} holds {count:,} values but 'data' has {len(flat):,}")
    if datatype == "BYTES":
        parts = []
        for v in flat:
            if not isinstance(v, str):
                raise Refused(f"input {name!r}: BYTES data must be strings")
            b = v.encode("utf-8", "surrogatepass")
            parts += [struct.pack("<I", len(b)), b]
        return b"".join(parts)
    np_type = DTYPES[datatype][1]
    kinds = "b" if datatype == "BOOL" else ("bui" if np.dtype(np_type).kind in "ui" else "buif")
    try:
        arr = np.array(flat) if flat else np.zeros(0, np_type)
    except (ValueError, OverflowError, TypeError):
        arr = None
    if arr is None or arr.dtype.kind not in kinds:
        raise Refused(f"input {name!r}: 'data' must be {datatype} values")
    if arr.dtype.kind in "ui" and np.dtype(np_type).kind in "ui" and arr.size:
        info = np.iinfo(np_type)
        if arr.min() < info.min or arr.max() > info.max:
            raise Refused(f"input {name!r}: a value is outside {datatype}'s range {info.min} to {info.max}")
    return arr.astype(np_type).tobytes()


def _flat(data, rank: int, name: str) -> list:
    """Nested JSON lists flattened in order with an explicit stack (no recursion to exhaust)."""
    out, stack = [], [(iter(data if isinstance(data, list) else [data]), 1)]
    while stack:
        it, depth = stack[-1]
        for v in it:
            if isinstance(v, list):
                if depth + 1 > max(rank, 1):
                    raise Refused(f"input {name!r}: 'data' is nested deeper than its shape")
                stack.append((iter(v), depth + 1))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _bytes_elements(name: str, blob: bytes, count: int) -> None:
    """A BYTES tensor in binary form: `count` elements, each a 4-byte length and that many bytes."""
    pos, n = 0, 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise Refused(f"input {name!r}: its BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", blob, pos)
        pos += 4 + length
        n += 1
    if pos != len(blob) or n != count:
        raise Refused(f"input {name!r}: shape holds {count:,} BYTES elements but the data has "
                      f"{n:,}{' and a truncated one' if pos != len(blob) else ''}")


def check_http_infer(body: bytes, header_length: str | None, max_body: int) -> tuple[bytes, int]:
    """A KServe v2 HTTP infer request (JSON, or binary tensors after a JSON header of
    `header_length` bytes) checked and re-encoded in binary form: (body, JSON header length)."""
    if header_length is None:
        head, blob = body, b""
    else:
        try:
            hlen = int(header_length)
        except ValueError:
            hlen = -1
        if not 0 < hlen <= min(len(body), MAX_HEADER_BYTES):
            raise Refused(f"Inference-Header-Content-Length {header_length[:20]} must be between 1 and the body's "
                          f"length and at most {MAX_HEADER_BYTES:,}")
        head, blob = body[:hlen], memoryview(body)[hlen:]
    try:
        req = json.loads(head)
    except RecursionError:
        raise Refused("the request's JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(f"the request is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(req, dict):
        raise Refused("the request must be a JSON object with 'inputs'")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_INPUTS:
        raise Refused(f"the request's 'inputs' must be a list of 1 to {MAX_INPUTS} tensors")
    new_inputs, payloads, pos = [], [], 0
    for i, inp in enumerate(inputs):
        if not isinstance(inp, dict):
            raise Refused(f"input {i} must be an object with 'name', 'shape', 'datatype' and 'data'")
        name = _name(inp.get("name"), f"input {i}'s 'name'")
        datatype, shape = inp.get("datatype"), inp.get("shape")
        count = _shape(name, shape, datatype, max_body)
        params = _scalars(inp.get("parameters"), f"input {name!r}")
        size = params.pop("binary_data_size", None)
        if size is not None:
            if "data" in inp:
                raise Refused(f"input {name!r} has both 'data' and binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or pos + size > len(blob):
                raise Refused(f"input {name!r}: binary_data_size {str(size)[:20]} is not in the "
                              f"{len(blob) - pos:,} binary bytes left in the request")
            data = bytes(blob[pos:pos + size])
            pos += size
            if datatype == "BYTES":
                _bytes_elements(name, data, count)
            elif size != count * DTYPES[datatype][0]:
                raise Refused(f"input {name!r}: shape {shape} of {datatype} takes {count * DTYPES[datatype][0]:,} bytes, "
                              f"binary_data_size says {size:,}")
        elif "data" in inp:
            data = _values(name, inp["data"], shape, datatype, count)
        else:
            raise Refused(f"input {name!r} carries no 'data' and no binary_data_size")
        payloads.append(data)
        new_inputs.append({"name": name, "shape": list(shape), "datatype": datatype,
                           "parameters": {**params, "binary_data_size": len(data)}})
    if pos != len(blob):
        raise Refused(f"the request carries {len(blob) - pos:,} binary bytes no input claims")
    out = {"inputs": new_inputs}
    if "id" in req:
        out["id"] = _name(req["id"], "the request's 'id'")
    if "parameters" in req:
        out["parameters"] = _scalars(req["parameters"], "the request")
    if "outputs" in req:
        outputs = req["outputs"]
        if not isinstance(outputs, list) or len(outputs) > MAX_INPUTS:
            raise Refused(f"the request's 'outputs' must be a list of at most {MAX_INPUTS}")
        out["outputs"] = []
        for j, o in enumerate(outputs):
            if not isinstance(o, dict):
                raise Refused(f"output {j} must be an object with 'name'")
            entry = {"name": _name(o.get("name"), f"output {j}'s 'name'")}
            if "parameters" in o:
                entry["parameters"] = _scalars(o["parameters"], f"output {entry['name']!r}")
            out["outputs"].append(entry)
    header = json.dumps(out, separators=(",", ":")).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise Refused(f"the request's header fields take {len(header):,} bytes, over {MAX_HEADER_BYTES:,}")
    return header + b"".join(payloads), len(header)


def check_grpc_infer(req, max_body: int) -> None:
    """A ModelInferRequest (tritonclient.grpc.service_pb2) checked as check_http_infer checks JSON:
    shapes within the limit, raw contents of exactly the declared size, no shared memory."""
    if not 1 <= len(req.inputs) <= MAX_INPUTS:
        raise Refused(f"the request's inputs must be 1 to {MAX_INPUTS} tensors")
    raw = list(req.raw_input_contents)
    if raw and len(raw) != len(req.inputs):
        raise Refused(f"the request has {len(req.inputs)} inputs but {len(raw)} raw_input_contents")
    for k in list(req.parameters):
        if k.startswith("shared_memory"):
            raise Refused("shared memory is not served; send the data in the request")
    for i, inp in enumerate(req.inputs):
        name = _name(inp.name, f"input {i}'s name")
        count = _shape(name, list(inp.shape), inp.datatype, max_body)
        if any(k.startswith("shared_memory") for k in inp.parameters):
            raise Refused(f"input {name!r}: shared memory is not served; send the data in the request")
        if raw:
            if inp.HasField("contents"):
                raise Refused(f"input {name!r} has both contents and raw_input_contents")
            if inp.datatype == "BYTES":
                _bytes_elements(name, raw[i], count)
            elif len(raw[i]) != count * DTYPES[inp.datatype][0]:
                raise Refused(f"input {name!r}: shape {list(inp.shape)} of {inp.datatype} takes "
                              f"{count * DTYPES[inp.datatype][0]:,} bytes, the request carries {len(raw[i]):,}")
        else:
            fields = [f for f, _ in inp.contents.ListFields()]
            n = sum(len(v) for _, v in inp.contents.ListFields())
            if len(fields) != 1 or n != count:
                raise Refused(f"input {name!r}: shape {list(inp.shape)} holds {count:,} values but its contents "
                              f"have {n:,}")
    for o in req.outputs:
        if any(k.startswith("shared_memory") for k in o.parameters):
            raise Refused(f"output {o.name[:40]!r}: shared memory is not served")


# -- the HTTP guard ----------------------------------------------------------------------------------
@dataclass
class Upstream:
    """Where the running Triton listens (loopback), or None while it is down."""

    http_port: int
    grpc_port: int
    metrics_port: int


class Guard:
    """The public endpoints: an HTTP server for the API, one for metrics, a gRPC server; each
    forwards to the current Upstream after its checks. `upstream = None` means not ready."""

    def __init__(self, host: str, http_port: int, grpc_port: int, metrics_port: int, max_body: int):
        self.host, self.max_body = host, max_body
        self.upstream: Upstream | None = None
        self._inflight = 0  # requests forwarded whose answer is not yet relayed
        self._inflight_lock = threading.Condition()
        self._conversions = threading.Semaphore(MAX_CONVERSIONS)
        self._connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._servers = [self._http_server(http_port, api=True), self._http_server(metrics_port, api=False)]
        self._grpc = _grpc_server(self, grpc_port)

    @contextlib.contextmanager
    def forwarding(self):
        with self._inflight_lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._inflight_lock:
                self._inflight -= 1
                self._inflight_lock.notify_all()

    def _http_server(self, port: int, api: bool) -> ThreadingHTTPServer:
        guard = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True  # SO_REUSEADDR: a restart right after a crash finds TIME_WAIT, not a holder
            address_family = _family(guard.host)

            def process_request(self, request, client_address):
                if not guard._connections.acquire(blocking=False):
                    _busy(request)
                    self.shutdown_request(request)
                    return
                super().process_request(request, client_address)

            def process_request_thread(self, request, client_address):
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    guard._connections.release()

        handler = type("Handler", (_Handler,), {"guard": guard, "api": api})
        try:
            return Server((self.host, port), handler)
        except OSError as e:
            raise PassionError(f"cannot listen on {self.host}:{port} ({e.strerror or e}); is another server "
                               "running there?") from None

    def start(self) -> None:
        for s in self._servers:
            t = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                                 name="passion-serve-guard")
            t.start()
        self._grpc.start()

    def stop(self, relay_timeout_s: float = 10.0) -> None:
        """Close the public sockets, after the answers Triton gave before it exited (a drain) have
        been relayed to their clients, up to relay_timeout_s."""
        with self._inflight_lock:
            self._inflight_lock.wait_for(lambda: self._inflight == 0, timeout=relay_timeout_s)
        for s in self._servers:
            s.shutdown()
            s.server_close()
        self._grpc.stop(grace=5)


def _family(host: str):
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _busy(sock) -> None:
    body = json.dumps({"error": "the server is busy; retry"}).encode()
    try:
        sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient expects
    timeout = SOCKET_TIMEOUT_S
    guard: Guard
    api: bool
    server_version = "passion-serve"

    def log_message(self, format, *args):  # noqa: A002  (http.server's name) -- no per-request lines
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode())

    def _route(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self.api:
            allowed = self.command == "GET" and path == "/metrics"
        else:
            allowed = any(self.command == m and re.fullmatch(p, path) for m, p in HTTP_ROUTES)
        body = b""
        if self.command == "POST" or self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                return self._error(411, "send the request with a Content-Length, not chunked")
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                return self._error(411, "send the request with a Content-Length")
            if length > self.guard.max_body:
                self.close_connection = True  # the body is not kept: the connection cannot be reused
                self._error(413, self._too_big(length))
                return self._discard(length)
            body = self.rfile.read(length)
            if len(body) != length:
                self.close_connection = True
                return
        if not allowed:
            return self._error(404, f"{self.command} {path[:80]} is not served here")
        up = self.guard.upstream
        if path == "/v2/health/live":  # passion-serve lives while it restarts Triton
            return self._send(200, b"")
        if up is None:
            return self._error(503, "the server is not ready (Triton Inference Server is starting); retry")
        headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
        if self.command == "POST":
            try:
                if len(body) > (1 << 20):  # big bodies turn into big Python lists: a few at a time
                    with self.guard._conversions:
                        body, hlen = check_http_infer(body, self.headers.get("Inference-Header-Content-Length"),
                                                      self.guard.max_body)
                else:
                    body, hlen = check_http_infer(body, self.headers.get("Inference-Header-Content-Length"),
                                                  self.guard.max_body)
            except Refused as e:
                return self._error(e.status, str(e))
            except Exception as e:  # a case the checks missed: this request fails, the service stays
                return self._error(500, f"the request could not be checked ({e.__class__.__name__}: {str(e)[:80]})")
            headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(hlen)}
            if self.headers.get("Accept-Encoding"):
                headers["Accept-Encoding"] = self.headers["Accept-Encoding"]
        port = up.http_port if self.api else up.metrics_port
        with self.guard.forwarding():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=UPSTREAM_TIMEOUT_S)
                conn.request(self.command, self.path, body=body if self.command == "POST" else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                keep = {k: v for k, v in resp.getheaders()
                        if k.lower() in ("content-type", "inference-header-content-length", "content-encoding")}
                conn.close()
            except (OSError, http.client.HTTPException):
                return self._error(503, "the server is not ready (Triton Inference Server is restarting); retry")
            self._send(resp.status, data, keep)

    def handle_expect_100(self):
        # a client that asks first is told at once when its body would be refused
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if length <= self.guard.max_body:
            return super().handle_expect_100()
        self.close_connection = True
        self._error(413, self._too_big(length))
        return False

    def _too_big(self, length: int) -> str:
        return (f"the request body of {length:,} bytes is over the limit of {self.guard.max_body:,} bytes "
                "(passion-serve --max-request-mb)")

    def _discard(self, length: int) -> None:
        """Read (and drop) what the client still sends, briefly and up to a bound, so it can read
        the 413 instead of a reset; the connection then closes."""
        self.connection.settimeout(2.0)
        left = min(length, DISCARD_BYTES)
        try:
            while left > 0:
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _route


# -- the gRPC guard ----------------------------------------------------------------------------------
def _grpc_server(guard: Guard, port: int):
    import os

    # gRPC's fork handlers would warn each time PyTriton forks tritonserver (which execs at once,
    # touching no gRPC state); grpc reads this once, at import
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    import grpc
    from concurrent.futures import ThreadPoolExecutor

    from tritonclient.grpc import service_pb2

    channels: dict[int, object] = {}
    lock = threading.Lock()

    def channel(up: Upstream):
        with lock:
            if up.grpc_port not in channels:
                for c in channels.values():
                    c.close()
                channels.clear()
                channels[up.grpc_port] = grpc.insecure_channel(
                    f"127.0.0.1:{up.grpc_port}", options=[("grpc.max_send_message_length", -1),
                                                          ("grpc.max_receive_message_length", -1)])
            return channels[up.grpc_port]

    def forward(method: str):
        short = method[len(GRPC_SERVICE):]

        def call(request: bytes, context):
            if short == "ModelInfer":
                try:
                    check_grpc_infer(service_pb2.ModelInferRequest.FromString(request), guard.max_body)
                except Refused as e:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                except Exception:  # protobuf's DecodeError: not a ModelInferRequest
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a ModelInferRequest")
            up = guard.upstream
            if up is None:
                if short == "ServerLive":
                    return service_pb2.ServerLiveResponse(live=True).SerializeToString()
                if short == "ServerReady":
                    return service_pb2.ServerReadyResponse(ready=False).SerializeToString()
                context.abort(grpc.StatusCode.UNAVAILABLE, "the server is not ready (Triton Inference Server is "
                                                           "starting); retry")
            # a call without a deadline reports ~9e18 s remaining, which as a timeout overflows
            # into an immediate DEADLINE_EXCEEDED: no deadline is passed on as none
            left = context.time_remaining()
            timeout = left if left is not None and left < 1e7 else None
            metadata = [(k, v) for k, v in context.invocation_metadata() if k != "user-agent"]
            try:
                with guard.forwarding():
                    return channel(up).unary_unary(method)(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as e:
                context.abort(e.code(), e.details() or "Triton Inference Server did not answer")

        return call

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            m = details.method
            if m.startswith(GRPC_SERVICE) and m[len(GRPC_SERVICE):] in GRPC_SERVED:
                return grpc.unary_unary_rpc_method_handler(forward(m))

            def refuse(request, context):
                context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{m[:80]} is not served here")

            if m == GRPC_SERVICE + "ModelStreamInfer":
                return grpc.stream_stream_rpc_method_handler(lambda it, ctx: refuse(None, ctx))
            return grpc.unary_unary_rpc_method_handler(refuse)

    # grpc refuses a message over max_receive_message_length from its length prefix, before reading it
    server = grpc.server(ThreadPoolExecutor(max_workers=32, thread_name_prefix="passion-serve-grpc"),
                         handlers=[Handler()], maximum_concurrent_rpcs=MAX_CONNECTIONS,
                         options=[("grpc.max_receive_message_length", guard.max_body),
                                  ("grpc.max_send_message_length", -1),
                                  ("grpc.so_reuseport", 0)])  # a second server on the port must fail, not share it
    host = f"[{guard.host}]" if ":" in guard.host else guard.host
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise PassionError(f"cannot listen on {guard.host}:{port} for gRPC; is another server running there?")
    return server
