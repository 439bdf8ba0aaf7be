"""The guard's checks without a server (guard.py): what Triton would have crashed on is refused in
one sentence, a good JSON request becomes the binary request Triton parses safely, byte for byte;
and the supervisor's pieces (exit cause, backoff, the port pre-check after a crash)."""
import json
import socket
import struct

import numpy as np
import pytest

from passion_deploy.serving.guard import Refused, check_grpc_infer, check_http_infer, default_max_body
from passion_deploy.serving.server import Backoff, Endpoints, exit_cause

LIMIT = 64 << 20


def _json(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _split(body: bytes, hlen: int):
    return json.loads(body[:hlen]), body[hlen:]


def test_the_crashing_shape_is_refused_before_anything_is_allocated():
    body = _json({"name": "image", "shape": [1, 100000, 100000, 3], "datatype": "UINT8", "data": [0]})
    with pytest.raises(Refused) as e:
        check_http_infer(body, None, LIMIT)
    assert e.value.status == 413 and "[1, 100000, 100000, 3]" in str(e.value) and "\n" not in str(e.value)


def test_deep_nesting_and_broken_json_are_refused_not_parsed_by_triton():
    deep = ('{"inputs": [{"name": "image", "shape": [1,1,1,3], "datatype": "UINT8", "data": '
            + "[" * 100000 + "]" * 100000 + "}]}").encode()
    for body, words in [(deep, "nested too deeply"), (b"\0" * 1000, "not valid JSON"), (b'{"inputs": [', "not valid JSON"),
                        (b"[1, 2]", "JSON object"), (_json(), "'inputs'"),
                        (_json({"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8",
                                "data": [[[[[[1]]]]]]}), "nested deeper than its shape")]:
        with pytest.raises(Refused, match=words):
            check_http_infer(body, None, LIMIT)


@pytest.mark.parametrize("inp, words", [
    ({"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [1, 2, 3]}, "holds 12 values but 'data' has 3"),
    ({"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 300]}, "outside UINT8's range"),
    ({"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2.5, 3]}, "must be UINT8 values"),
    ({"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": ["a", "b", "c"]}, "must be UINT8 values"),
    ({"name": "image", "shape": [1, -1, 1, 3], "datatype": "UINT8", "data": [1]}, "non-negative integers"),
    ({"name": "image", "shape": [1] * 9, "datatype": "UINT8", "data": [1]}, "at most 8"),
    ({"name": "image", "shape": "1,1", "datatype": "UINT8", "data": [1]}, "'shape' must be a list"),
    ({"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT4", "data": [1, 2, 3]}, "not a KServe v2 datatype"),
    ({"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8"}, "no 'data' and no binary_data_size"),
    ({"name": "", "shape": [1], "datatype": "UINT8", "data": [1]}, "'name' must be a non-empty string"),
    ({"name": "image", "shape": [1], "datatype": "UINT8", "data": [1],
      "parameters": {"shared_memory_region": "x"}}, "shared memory is not served"),
    ({"name": "encoded", "shape": [1, 1], "datatype": "BYTES", "data": [7]}, "BYTES data must be strings"),
])
def test_json_inputs_that_do_not_match_their_declaration_are_refused(inp, words):
    with pytest.raises(Refused, match=words):
        check_http_infer(_json(inp), None, LIMIT)


def test_a_json_request_becomes_the_same_tensors_in_binary_form():
    img = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    body = _json({"name": "image", "shape": list(img.shape), "datatype": "UINT8", "data": img.tolist()},
                 id="r1", outputs=[{"name": "sr", "parameters": {"binary_data": True}}])
    out, hlen = check_http_infer(body, None, LIMIT)
    head, blob = _split(out, hlen)
    assert head["id"] == "r1" and head["outputs"] == [{"name": "sr", "parameters": {"binary_data": True}}]
    assert head["inputs"][0]["parameters"] == {"binary_data_size": img.size}
    assert np.array_equal(np.frombuffer(blob, np.uint8).reshape(img.shape), img)
    flat = _json({"name": "image", "shape": list(img.shape), "datatype": "UINT8", "data": img.reshape(-1).tolist()})
    assert _split(*check_http_infer(flat, None, LIMIT))[1] == blob  # flat and nested data are the same tensor
    floats = _json({"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2.5]})  # ints are valid floats
    assert np.array_equal(np.frombuffer(_split(*check_http_infer(floats, None, LIMIT))[1], np.float32), [1, 2.5])
    text = _json({"name": "encoded", "shape": [2, 1], "datatype": "BYTES", "data": ["ab", "xyz"]})
    assert _split(*check_http_infer(text, None, LIMIT))[1] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 3) + b"xyz"


def test_binary_requests_must_carry_exactly_what_they_declare():
    img = np.zeros((1, 4, 4, 3), np.uint8).tobytes()

    def binary(size, payload, shape=(1, 4, 4, 3), datatype="UINT8"):
        head = _json({"name": "image", "shape": list(shape), "datatype": datatype,
                      "parameters": {"binary_data_size": size}})
        return head + payload, str(len(head))

    body, h = binary(len(img), img)
    out, hlen = check_http_infer(body, h, LIMIT)
    assert out[hlen:] == img
    for (body, h), words in [(binary(len(img) - 1, img[:-1]), "takes 48 bytes"),
                             (binary(len(img), img + b"x"), "1 binary bytes no input claims"),
                             (binary(10_000, img), "not in the 48 binary bytes"),
                             ((body, "0"), "Inference-Header-Content-Length 0"),
                             ((body, str(len(body) + 1)), "between 1 and the body's length"),
                             ((body, "abc"), "Inference-Header-Content-Length abc"),
                             (binary(5, b"\x09\0\0\0x", shape=(1, 1), datatype="BYTES"), "truncated")]:
        with pytest.raises(Refused, match=words):
            check_http_infer(body, h, LIMIT)


def test_grpc_infer_requests_get_the_same_checks():
    from tritonclient.grpc import service_pb2

    def req(shape, raw=None, contents=None):
        r = service_pb2.ModelInferRequest(model_name="passion_sr")
        t = r.inputs.add(name="image", datatype="UINT8", shape=shape)
        if contents is not None:
            t.contents.uint_contents.extend(contents)
        if raw is not None:
            r.raw_input_contents.append(raw)
        return r

    check_grpc_infer(req([1, 1, 1, 3], raw=b"abc"), LIMIT)
    check_grpc_infer(req([1, 1, 1, 3], contents=[1, 2, 3]), LIMIT)
    with pytest.raises(Refused, match="100000"):
        check_grpc_infer(req([1, 100000, 100000, 3], raw=b"abc"), LIMIT)
    with pytest.raises(Refused, match="takes 6 bytes"):
        check_grpc_infer(req([1, 1, 2, 3], raw=b"abc"), LIMIT)
    with pytest.raises(Refused, match="its contents have 2"):
        check_grpc_infer(req([1, 1, 1, 3], contents=[1, 2]), LIMIT)
    r = req([1, 1, 1, 3], raw=b"abc")
    r.parameters["shared_memory_region"].string_param = "x"
    with pytest.raises(Refused, match="shared memory"):
        check_grpc_infer(r, LIMIT)


def test_the_default_limit_holds_an_image_at_the_pixel_budget():
    assert default_max_body(0) == 64 << 20
    assert default_max_body(16_000_000) >= 16_000_000 * 8


def test_a_death_is_explained_by_its_signal_and_the_servers_own_output_not_its_log():
    out = ("passion_sr: ONNX Runtime ...; tiles per call up to 4\n"
           "I1207 01:54:06.871338 11488 pb_stub.cc:2145]  Non-graceful termination detected.\n"
           "terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n")
    assert exit_cause(-6, out) == ("killed by SIGABRT after: terminate called after throwing an instance of "
                                   "'std::bad_alloc' | what():  std::bad_alloc")
    assert exit_cause(-9, "") == "killed by SIGKILL"
    assert exit_cause(137, "") == "killed by SIGKILL"
    assert exit_cause(1, "E1207 bad\n") == "exit status 1 after: E1207 bad"
    assert exit_cause(None, "") == "its exit status is unknown"


def test_restart_delays_double_up_to_a_cap_and_reset_after_a_stable_run():
    b = Backoff(first=1, cap=8, stable_s=60)
    assert [b.after_death(1.0) for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    assert b.after_death(120.0) == 1  # it had served for two minutes: a fresh start
    assert b.after_failed_start() == 2 and b.failures == 1


def test_serve_binds_loopback_unless_told_and_the_banner_names_the_address():
    from passion_deploy.cli.serve import build_parser

    args = build_parser().parse_args(["--model", "x"])
    assert args.host == "127.0.0.1"
    assert Endpoints().host == "127.0.0.1"
    assert Endpoints("127.0.0.1").url(8000) == "127.0.0.1:8000"
    assert Endpoints("0.0.0.0").url(8000) == "0.0.0.0:8000"  # what it listens on, not "localhost"
    assert Endpoints("::1").url(8001) == "[::1]:8001"


def test_the_port_check_accepts_a_port_a_crashed_server_left_in_time_wait():
    """A server that dies with clients connected leaves its port in TIME_WAIT; passion-serve
    must start again on it at once (it binds with SO_REUSEADDR, as the server does)."""
    from passion_deploy.cli.serve import _check_port
    from passion_deploy.cli.sr import UsageError

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Triton's and the guard's listeners do
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    plain = socket.socket()
    with pytest.raises(OSError):  # what the old check did: refused for about a minute
        plain.bind(("127.0.0.1", port))
    plain.close()
    _check_port("--http-port", "127.0.0.1", port)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    with pytest.raises(UsageError, match="is another server running there"):
        _check_port("--http-port", "127.0.0.1", held.getsockname()[1])
    held.close()
