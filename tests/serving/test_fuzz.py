"""passion-serve against a hostile client, on loopback only (issue 25).

- fuzz: ~300 requests of random shapes, datatypes, sizes, encodings, paths and malformed JSON or
  binary headers, the two requests that crashed the bundled tritonserver among them (a JSON
  shape of [1, 100000, 100000, 3]; a ~8 MB JSON body); every one answered with a status and,
  when refused, one sentence; afterwards the server is up, never died, and a good request
  returns passion-sr --model's image;
- it listens on 127.0.0.1 when --host is not given (every public port, and Triton's own);
- supervision: tritonserver SIGKILLed under load: passion-serve says why, reports not ready,
  restarts it, and answers exactly again within a bounded time.
"""
import http.client
import json
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="passion-serve runs Triton through PyTriton: pip install 'passion-deploy[serve]'")
pytest.importorskip("tritonclient.http", reason="the tests are Triton clients: pip install 'tritonclient[http,grpc]'")

from serving_helpers import ServeProcess, images_with_outputs, infer, rgb  # noqa: E402

BUDGET = 32 * 32  # --max-pixels: the fuzz's few valid images stay cheap to run
N_FUZZ = 300
RESTART_LIMIT_S = 300  # a restart loads the model again; on 2 shared cores that takes 10-60 s
DTYPES = ["UINT8", "INT8", "UINT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BOOL", "BYTES", "UINT4", "", None, 7]


@pytest.fixture(scope="module")
def good(artifact, tmp_path_factory):
    """One small image and passion-sr --model's output for it."""
    (path,), ref = images_with_outputs(artifact, tmp_path_factory.mktemp("fuzz_images"), [(12, 10)], seed=3)
    return rgb(path), ref[path.stem], path


@pytest.fixture(scope="module")
def server(artifact):
    s = ServeProcess("--model", str(artifact), "--max-batch", "2", "--max-pixels", str(BUDGET), host=None)
    yield s
    s.stop()


def _post(port: int, body: bytes, headers: dict | None = None, path: str = "/v2/models/passion_sr/infer",
          method: str = "POST", timeout: float = 120.0):
    """(status, body) of one request on its own connection; (None, why) if there was no answer."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Content-Type": "application/json", **(headers or {})}
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException) as e:
        return None, f"{e.__class__.__name__}: {e}".encode()
    finally:
        c.close()


def _random_request(rng: np.random.Generator, lr: np.ndarray, png: bytes):
    """One hostile request: (body, headers, path, method)."""
    kind = rng.integers(0, 10)
    infer_path = "/v2/models/passion_sr/infer"
    if kind == 0:  # random shape and datatype, random data
        rank = int(rng.integers(0, 10))
        shape = [int(d) for d in rng.choice([0, 1, 2, 3, 7, 64, 100000, 2**31, 2**40], size=rank)]
        data = rng.integers(-300, 300, size=int(rng.integers(0, 50))).tolist()
        if rng.random() < 0.3:
            data = [float(x) / 3 for x in data]
        inp = {"name": str(rng.choice(["image", "encoded", "other", ""])), "shape": shape,
               "datatype": DTYPES[int(rng.integers(0, len(DTYPES)))], "data": data}
        return json.dumps({"inputs": [inp]}).encode(), {}, infer_path, "POST"
    if kind == 1:  # a binary request whose header lies about lengths
        n = int(rng.integers(0, 200))
        payload = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        size = int(rng.choice([n, n - 1, n + 1, 0, 2**33]))
        shape = [1, int(rng.integers(0, 9)), int(rng.integers(0, 9)), 3]
        head = json.dumps({"inputs": [{"name": "image", "shape": shape, "datatype": "UINT8",
                                       "parameters": {"binary_data_size": size}}]}).encode()
        hlen = int(rng.choice([len(head), len(head) - 3, len(head) + 5, 0, 10**9]))
        return head + payload, {"Inference-Header-Content-Length": str(hlen)}, infer_path, "POST"
    if kind == 2:  # random bytes, as JSON or as a binary header
        body = rng.integers(0, 256, size=int(rng.integers(0, 4000)), dtype=np.uint8).tobytes()
        headers = {"Inference-Header-Content-Length": str(int(rng.integers(-5, 5000)))} if rng.random() < 0.5 else {}
        return body, headers, infer_path, "POST"
    if kind == 3:  # truncated or deeply nested JSON
        good = json.dumps({"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [1] * 12}]})
        d = int(rng.integers(100, 200000))
        options = [good[: int(rng.integers(0, len(good)))], "[" * d + "]" * d, '{"inputs": ' + "[" * d,
                   '{"inputs": [{"name": "image", "shape": [1,1,1,3], "datatype": "UINT8", "data": ' + "[" * d + "]" * d + "}]}",
                   good.replace('"data"', '"dat\\ud800"'), '{"inputs": [null]}', '{"inputs": "x"}', "1e999999"]
        return options[int(rng.integers(0, len(options)))].encode("utf-8", "surrogatepass"), {}, infer_path, "POST"
    if kind == 4:  # encoded inputs: garbage, a truncated PNG, the real PNG as a JSON string
        blob = [b"not an image", png[: int(rng.integers(0, len(png)))], b""][int(rng.integers(0, 3))]
        body = struct.pack("<I", len(blob)) + blob
        head = json.dumps({"inputs": [{"name": "encoded", "shape": [1, 1], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(body)}}]}).encode()
        return head + body, {"Inference-Header-Content-Length": str(len(head))}, infer_path, "POST"
    if kind == 5:  # paths a client of passion_sr has no business with
        path = str(rng.choice(["/v2/repository/index", "/v2/repository/models/passion_sr/unload", "/v2/systemsharedmemory/status",
                               "/v2/cudasharedmemory/region/x/register", "/v2/trace/setting", "/v2/logging", "/",
                               "/v2/models/other/infer", "/v2/models/passion_sr/infer/../../repository/index", "/metrics"]))
        return b"{}", {}, path, str(rng.choice(["GET", "POST", "DELETE"]))
    if kind == 6:  # a body declared far over the limit (nothing that large is sent)
        return None, {"Content-Length": str(int(rng.choice([2**30, 2**40, 10**15])))}, infer_path, "POST"
    if kind == 7:  # a valid tiny image, sometimes in a wrong dtype or rank
        img = lr[None][:, : int(rng.integers(1, 9)), : int(rng.integers(1, 9))]
        dtype = str(rng.choice(["UINT8", "UINT8", "INT8", "FP32"]))
        return json.dumps({"inputs": [{"name": "image", "shape": list(img.shape), "datatype": dtype,
                                       "data": img.reshape(-1).tolist()}]}).encode(), {}, infer_path, "POST"
    if kind == 8:  # shared memory and odd parameters
        inp = {"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8",
               "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 3}}
        return json.dumps({"inputs": [inp], "parameters": {"x": [1, 2]}}).encode(), {}, infer_path, "POST"
    # the two crashing requests (the ~8 MB one is the fuzz's costliest: sent less often)
    if rng.random() < 0.8:
        return json.dumps({"inputs": [{"name": "image", "shape": [1, 100000, 100000, 3], "datatype": "UINT8",
                                       "data": [0]}]}).encode(), {}, infer_path, "POST"
    return EIGHT_MB_JSON, {}, infer_path, "POST"


# a 900x900 uint8 image as JSON, ~8 MB: the bundled tritonserver crashed (SIGSEGV) parsing it
EIGHT_MB_JSON = json.dumps({"inputs": [{"name": "image", "shape": [1, 900, 900, 3], "datatype": "UINT8",
                                        "data": [0] * (900 * 900 * 3)}]}).encode()


def test_hundreds_of_hostile_requests_leave_the_server_serving_exactly(server, good):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    lr, expected, path = good
    png = path.read_bytes()
    rng = np.random.default_rng(25)
    statuses: dict[int | None, int] = {}
    problems = []
    crashers = [json.dumps({"inputs": [{"name": "image", "shape": [1, 100000, 100000, 3], "datatype": "UINT8",
                                        "data": [0]}]}).encode(), EIGHT_MB_JSON]
    requests = [(c, {}, "/v2/models/passion_sr/infer", "POST") for c in crashers]
    requests += [_random_request(rng, lr, png) for _ in range(N_FUZZ)]
    for i, (body, headers, path_, method) in enumerate(requests):
        status, answer = _post(server.http, body, headers, path_, method)
        statuses[status] = statuses.get(status, 0) + 1
        if status is None:
            problems.append(f"request {i} got no answer: {answer[:200]!r}")
        elif status >= 500:
            problems.append(f"request {i} got {status}: {answer[:200]!r}")
        elif status != 200 and path_ != "/metrics":
            try:
                msg = json.loads(answer)["error"]
            except (ValueError, KeyError, TypeError):
                msg = None
            if not isinstance(msg, str) or "\n" in msg or "Traceback" in msg:
                problems.append(f"request {i} ({status}) not answered in one sentence: {answer[:200]!r}")
        if i < 2:  # the crashing requests: refused, and the server still there
            assert status in (400, 413), (i, status, answer[:300])
            assert _post(server.http, None, path="/v2/health/ready", method="GET")[0] == 200
    # gRPC: the same shape lies, and a message over the limit
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    for shape, data in [([1, 100000, 100000, 3], np.zeros((1, 1, 1, 3), np.uint8)),
                        ([1, 2, 2, 3], np.zeros((1, 1, 1, 3), np.uint8))]:
        inp = grpcclient.InferInput("image", shape, "UINT8")
        inp._raw_content = data.tobytes()
        with pytest.raises(InferenceServerException) as e:
            client.infer("passion_sr", [inp])
        assert "INVALID_ARGUMENT" in str(e.value.status()) or "bytes" in str(e.value), str(e.value)
    for method in ("get_model_repository_index", "get_system_shared_memory_status"):
        with pytest.raises(InferenceServerException, match="not served"):
            getattr(client, method)()
    # raw HTTP garbage on the socket
    for raw in (b"GARBAGE\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"\x16\x03\x01\x00\xa5" * 50):
        with socket.create_connection(("127.0.0.1", server.http), timeout=30) as s:
            s.sendall(raw)
            s.settimeout(30)
            try:
                s.recv(1024)
            except OSError:
                pass
    assert not problems, "\n".join(problems[:10]) + f"\nstatuses {statuses}"
    assert statuses.get(200, 0) >= 1 and statuses.get(400, 0) >= 50 and statuses.get(413, 0) >= 5, statuses
    assert not any("died" in ln for ln in server.lines), "\n".join(server.lines[-20:])
    out, err = infer(server.url, lr[None])
    assert err is None, err
    assert np.array_equal(out[0], expected)
    out, err = infer(server.url, encoded=[png])
    assert err is None and np.array_equal(out[0], expected), err


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp{,6} writes them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            addr, hexport = f[1].rsplit(":", 1)
            if int(hexport, 16) == port and f[3] == "0A":
                found.add(addr)
    return found


def _tritonserver_pid(parent: int) -> int | None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1: text.rindex(")")], text[text.rindex(")") + 2:].split()
        if comm == "tritonserver" and int(rest[1]) == parent:
            return int(stat.parent.name)
    return None


def test_it_listens_on_loopback_unless_told_otherwise(server):
    ports = [server.http, server.grpc, server.metrics]
    for port in ports:
        # 127.0.0.1 and nothing else (gRPC binds it as the IPv4-mapped ::ffff:127.0.0.1)
        assert _listening(port) and _listening(port) <= LOOPBACK, (port, _listening(port))
    assert any(f"http://127.0.0.1:{server.http}/v2/models/passion_sr" in ln for ln in server.lines)
    pid = _tritonserver_pid(server.proc.pid)
    assert pid is not None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for flag in (b"--http-address", b"--grpc-address", b"--metrics-address"):
        assert cmdline[cmdline.index(flag) + 1] == b"127.0.0.1"


def test_a_sigkilled_tritonserver_under_load_is_restarted_and_answers_exactly(server, good):
    lr, expected, _ = good
    stop = threading.Event()
    answers = []

    def client():
        while not stop.is_set():
            answers.append(infer(server.url, lr[None], timeout=RESTART_LIMIT_S))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    pid = _tritonserver_pid(server.proc.pid)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    seen_not_ready = False
    while True:
        status, _ = _post(server.http, None, path="/v2/health/ready", method="GET", timeout=30)
        assert status is not None, "the public port closed while Triton was down"
        if status == 503:
            seen_not_ready = True
        elif status == 200 and seen_not_ready:
            break
        assert time.monotonic() - t0 < RESTART_LIMIT_S, "not ready again in time:\n" + "\n".join(server.lines[-20:])
        time.sleep(0.1)
    out, err = infer(server.url, lr[None])
    stop.set()
    for t in threads:
        t.join(RESTART_LIMIT_S)
    assert err is None, err
    assert np.array_equal(out[0], expected)
    assert not any(t.is_alive() for t in threads), "a client is still waiting for an answer"
    died = [ln for ln in server.lines if "Triton Inference Server died" in ln]
    assert len(died) == 1 and "killed by SIGKILL" in died[0], "\n".join(server.lines[-20:])
    assert "CudaDriverHelper" not in died[0]
    assert any("restarted; ready" in ln for ln in server.lines)
    for out, err in answers:  # during the restart: an exact image or a clean refusal, never a hang
        assert (err is None and np.array_equal(out[0], expected)) or err, err
        if err is not None:
            assert "not ready" in err or "[503]" in err or "Triton" in err, err
