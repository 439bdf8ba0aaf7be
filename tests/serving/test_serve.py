"""passion-serve end to end on the tiny onnx artifact: Triton Inference Server (PyTriton's bundled
server) on this CPU, reached with tritonclient as a user reaches it.

- a tritonclient HTTP request (and a gRPC one) returns the 4x image passion-sr --model writes;
- health, model-ready and Prometheus metrics answer;
- load: 16 concurrent clients x 4 requests of mixed sizes, bounded in time, every image
  bit-identical to passion-sr --model with the same tiling, no error, no lost request, and
  Triton's batcher did put requests together;
- a burst of malformed requests among good ones: errors for exactly the malformed ones, each
  one sentence (HTTP 400), the good ones still exact;
- SIGTERM drains: requests in flight finish exactly, a later one is refused, exit status 0.
"""
import threading
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="passion-serve runs Triton through PyTriton: pip install 'passion-deploy[serve]'")
pytest.importorskip("tritonclient.http", reason="the tests are Triton clients: pip install 'tritonclient[http,grpc]'")

from serving_helpers import ServeProcess, free_ports, images_with_outputs, infer, metric, rgb  # noqa: E402

SIZES = [(12, 10), (20, 16), (24, 24), (40, 24), (16, 36), (33, 17)]  # LR (w, h): 1 to 4 UNet tiles, odd sides
CLIENTS, PER_CLIENT = 16, 4
LOAD_LIMIT_S = 600  # 64 small images take ~1-2 min on 2 shared cores; a hang must not stall CI
BUDGET = 64 * 64  # --max-pixels for the server: over-budget requests stay cheap to send


@pytest.fixture(scope="module")
def images(artifact, tmp_path_factory):
    """Test images and passion-sr --model's outputs for them: [(lr uint8, expected uint8, path)]."""
    paths, ref = images_with_outputs(artifact, tmp_path_factory.mktemp("serve_images"), SIZES, seed=1)
    return [(rgb(p), ref[p.stem], p) for p in paths]


@pytest.fixture(scope="module")
def server(artifact):
    s = ServeProcess("--model", str(artifact), "--max-batch", "4", "--max-queue-delay-ms", "20",
                     "--max-pixels", str(BUDGET))
    yield s
    assert s.stop() == 0, "\n".join(s.lines[-30:])


def test_http_request_returns_the_4x_image(server, images):
    lr, expected, _ = images[3]
    out, err = infer(server.url, lr[None])
    assert err is None, err
    assert out.dtype == np.uint8 and out.shape == (1, lr.shape[0] * 4, lr.shape[1] * 4, 3)
    assert np.array_equal(out[0], expected)


def test_encoded_file_and_grpc_give_the_same_image(server, images):
    import tritonclient.grpc as grpcclient

    lr, expected, path = images[4]
    out, err = infer(server.url, encoded=[path.read_bytes()])
    assert err is None, err
    assert np.array_equal(out[0], expected)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    inp = grpcclient.InferInput("image", [1, *lr.shape], "UINT8")
    inp.set_data_from_numpy(lr[None])
    assert np.array_equal(client.infer("passion_sr", [inp]).as_numpy("sr")[0], expected)


def test_health_ready_and_metrics_endpoints(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/passion_sr/ready"):
        assert urllib.request.urlopen(f"http://{server.url}{path}", timeout=30).status == 200, path
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=30).read().decode()
    assert 'nv_inference_request_success{model="passion_sr"' in text


def test_load_16_clients_x_4_requests_every_image_exact(server, images):
    before = {k: metric(server.metrics, k) for k in ("nv_inference_request_success", "nv_inference_request_failure",
                                                     "nv_inference_exec_count")}
    results, errors = {}, []

    def client(c):
        for r in range(PER_CLIENT):
            k = (c * PER_CLIENT + r) % len(images)  # every size, in a different order per client
            lr, expected, _ = images[k]
            out, err = infer(server.url, lr[None])
            results[(c, r)] = (k, out, err)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_LIMIT_S)
    wall = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), f"requests still unanswered after {LOAD_LIMIT_S} s"
    assert len(results) == CLIENTS * PER_CLIENT, "a request was lost"
    for (c, r), (k, out, err) in sorted(results.items()):
        if err is not None:
            errors.append(f"client {c} request {r}: {err}")
        elif not np.array_equal(out[0], images[k][1]):
            errors.append(f"client {c} request {r}: image {k} differs from passion-sr's "
                          f"(max abs diff {np.abs(out[0].astype(int) - images[k][1]).max()})")
    assert not errors, "\n".join(errors[:10])
    after = {k: metric(server.metrics, k) for k in before}
    assert after["nv_inference_request_success"] - before["nv_inference_request_success"] == CLIENTS * PER_CLIENT
    assert after["nv_inference_request_failure"] == before["nv_inference_request_failure"]
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    assert executions < CLIENTS * PER_CLIENT, "Triton's dynamic batcher never put two requests together"
    print(f"\nload: {CLIENTS * PER_CLIENT} requests in {wall:.1f} s, {executions:.0f} batched executions")


def test_malformed_requests_get_one_error_each_and_good_ones_stay_exact(server, images):
    lr, expected, path = images[1]
    big = np.zeros((1, 80, 80, 3), np.uint8)  # 6400 px, over the 4096-pixel budget
    bad = {
        "wrong dtype": (dict(image=lr[None].astype(np.float32), dtype="FP32"), "data-type is 'FP32', but model 'passion_sr' expects 'UINT8'"),
        "wrong rank": (dict(image=lr[None, :, :, 0]), "unexpected shape for input 'image'"),
        "empty": (dict(image=np.zeros((1, 0, 8, 3), np.uint8)), "the image is empty (8x0 pixels"),
        "over budget": (dict(image=big), "refused, 80x80 = 6,400 pixels is over the pixel budget of 4,096"),
        "not decodable": (dict(encoded=[b"this is not a picture"]), "the encoded image: not a readable image"),
        "empty file": (dict(encoded=[b""]), "the encoded image is empty (0 bytes)"),
        "both inputs": (dict(image=lr[None], encoded=[path.read_bytes()]), "send exactly one input"),
    }
    jobs = [(f"good {i}", dict(image=lr[None]), None) for i in range(6)]
    jobs += [(name, kw, msg) for name, (kw, msg) in bad.items()]
    jobs = [jobs[i] for i in np.random.default_rng(0).permutation(len(jobs))]  # malformed interleaved with good
    got = {}

    def send(name, kw):
        got[name] = infer(server.url, **kw)

    threads = [threading.Thread(target=send, args=(name, kw)) for name, kw, _ in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_LIMIT_S)
    for name, _, msg in jobs:
        out, err = got[name]
        if msg is None:
            assert err is None, f"{name} failed: {err}"
            assert np.array_equal(out[0], expected), name
        else:
            assert out is None, f"{name} was answered with an image"
            assert msg in err and err.startswith("[400]"), f"{name}: {err}"
            assert "Traceback" not in err and err.count("\n") == 0, f"{name}: not one sentence: {err}"
    out, err = infer(server.url, lr[None])  # the server still answers
    assert err is None and np.array_equal(out[0], expected)


def test_sigterm_drains_requests_in_flight(artifact, images):
    s = ServeProcess("--model", str(artifact), "--max-batch", "2")
    picks = [images[3], images[5], images[2]]
    got = {}

    def send(i, lr):
        got[i] = infer(s.url, lr[None])

    threads = [threading.Thread(target=send, args=(i, lr)) for i, (lr, _, _) in enumerate(picks)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    # two execute (--max-batch 2) while the third waits in Triton's queue: all three are accepted
    while metric(s.metrics, "nv_inference_pending_request_count") < 1:
        assert time.monotonic() < deadline, "the requests never reached the server"
        time.sleep(0.05)
    s.terminate()
    time.sleep(1.0)
    late, late_err = infer(s.url, picks[0][0][None], timeout=10)
    for t in threads:
        t.join(LOAD_LIMIT_S)
    assert s.proc.wait(180) == 0, "\n".join(s.lines[-30:])
    for i, (lr, expected, _) in enumerate(picks):
        out, err = got[i]
        assert err is None, f"in-flight request {i} was dropped by the drain: {err}"
        assert np.array_equal(out[0], expected)
    assert late is None and late_err, "a request after SIGTERM was accepted"
    assert any("passion-serve: stopped" in ln for ln in s.lines), "\n".join(s.lines[-20:])


def test_bad_command_lines_are_refused_in_one_sentence(artifact, tmp_path, capsys):
    from passion_deploy.cli import serve as serve_cli

    def refused(*argv):
        assert serve_cli.main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("passion-serve: ") and "\n" not in err and "Traceback" not in err
        return err

    assert "give --model DIR" in refused()
    assert "no such folder" in refused("--model", str(tmp_path / "missing"))
    assert "--max-batch 0 must be at least 1" in refused("--model", str(artifact), "--max-batch", "0")
    assert "--drain-timeout -1.0 must be 0 or more" in refused("--model", str(artifact), "--drain-timeout", "-1")
    p = free_ports(1)[0]
    assert "must differ" in refused("--model", str(artifact), "--http-port", str(p), "--grpc-port", str(p))
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "x").write_text("x")
    assert "is not an empty folder" in refused("--model", str(artifact), "--write-repo", str(tmp_path / "occupied"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in artifact.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "unet.onnx").write_bytes(b"tampered")
    assert "unet.onnx" in refused("--model", str(broken))


def test_port_in_use_is_refused_before_starting(artifact, capsys):
    import socket

    from passion_deploy.cli import serve as serve_cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        http, grpc = free_ports(2)
        assert serve_cli.main(["--model", str(artifact), "--host", "127.0.0.1", "--http-port", str(http),
                               "--grpc-port", str(grpc), "--metrics-port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"passion-serve: --metrics-port {port}: cannot listen on 127.0.0.1:{port}") and "\n" not in err


def test_a_model_failing_to_load_inside_triton_is_named_at_once(tmp_path):
    """The model instance (Triton's Python-backend process) cannot load its artifact: serve()
    says why in one sentence as soon as it happens, not after PyTriton's two-minute wait."""
    from passion_deploy.serving.repository import write_sr_model
    from passion_deploy.serving.server import Endpoints, ServeError, serve
    from passion_deploy.serving.spec import ModelSpec, SRSettings

    gone = tmp_path / "gone"
    load_error = tmp_path / "load_error.txt"
    write_sr_model(tmp_path / "repo", ModelSpec(model_dir=str(gone)), SRSettings(), 2, 1000, 1, "KIND_CPU",
                   {"load_error_file": str(load_error)})
    t0 = time.monotonic()
    with pytest.raises(ServeError) as e:
        serve(tmp_path / "repo", Endpoints("127.0.0.1", *free_ports(3)), load_error, tmp_path / "triton.log")
    assert time.monotonic() - t0 < 100
    msg = str(e.value)
    assert msg == f"the model failed to load: ArtifactError: {gone}: no such artifact directory", msg
