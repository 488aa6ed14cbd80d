"""The SDK's own wire code: HTTP/1.1 framing (_http11.py), the connection pools' limits
(_pool.py), and ModelInfer written and read by hand (_grpc_wire.py), checked against
protobuf's own encoding of the same messages."""

from __future__ import annotations

import asyncio
import gzip
import threading

import numpy as np
import pytest

from gradserve_client import AsyncClient, Client, InvalidInputError, ServerError, _core, _grpc_wire
from gradserve_client._http11 import AnswerParser, Origin, ProtocolError
from gradserve_client.generated import inference_pb2 as pb
from tests.conftest import ServerProcess

# -- HTTP/1.1 ----------------------------------------------------------------------


def feed_all(parser: AnswerParser, data: bytes, step: int) -> object:
    """Feed ``data`` in pieces of ``step`` bytes; the answer, or None if incomplete."""
    for i in range(0, len(data), step):
        answer = parser.feed(data[i : i + step])
        if answer is not None:
            assert i + step >= len(data)
            return answer
    return None


@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_content_length_answer_in_pieces(step: int) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Request-Id: abc\r\n\r\nhello"
    answer = feed_all(AnswerParser(), data, step)
    assert answer is not None
    assert (answer.status, answer.body, answer.keep_alive) == (200, b"hello", True)  # type: ignore[attr-defined]
    assert answer.headers["x-request-id"] == "abc"  # type: ignore[attr-defined]


@pytest.mark.parametrize("step", [1, 5, 10_000])
def test_chunked_answer_with_trailer(step: int) -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
    answer = feed_all(AnswerParser(), data, step)
    assert answer is not None and answer.body == b"hello world"  # type: ignore[attr-defined]


def test_framing_by_close_connection_close_and_interim_answers() -> None:
    parser = AnswerParser()
    assert parser.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\n\r\nab") is None
    answer = parser.eof()  # no length: the body ends with the connection
    assert (answer.body, answer.keep_alive) == (b"ab", False)
    answer10 = AnswerParser().feed(b"HTTP/1.0 204 No Content\r\n\r\n")
    assert answer10 is not None and answer10.keep_alive is False and answer10.body == b""


def test_large_bodies_go_apart_and_extra_bytes_end_reuse() -> None:
    body = bytes(300 * 1024)
    pieces = Origin("http://h", {}).request("POST", "/x", {}, body)
    assert len(pieces) == 2 and pieces[1] is body and b"Content-Length: 307200" in pieces[0]
    answer = AnswerParser().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK")
    assert answer is not None and answer.body == b"ok" and not answer.keep_alive


def test_gzip_body_is_decoded() -> None:
    body = gzip.compress(b'{"a": 1}')
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    answer = AnswerParser().feed(head + body)
    assert answer is not None and answer.body == b'{"a": 1}'


def test_eof_before_and_during_the_answer() -> None:
    parser = AnswerParser()
    with pytest.raises(ProtocolError, match="without sending a response"):
        parser.eof()
    assert not parser.started  # the clients retry this one
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert parser.started
    with pytest.raises(ProtocolError, match="complete message body"):
        parser.eof()
    with pytest.raises(ProtocolError):
        AnswerParser().feed(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_origin_request_bytes_and_bad_urls() -> None:
    origin = Origin("http://example.com:8000/base", {"Authorization": "Bearer k"})
    data = b"".join(
        origin.request("POST", "/v2/models/relu/infer", {"Content-Type": "application/json"}, b"{}")
    )
    head, body = data.split(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /base/v2/models/relu/infer HTTP/1.1"
    assert "Host: example.com:8000" in lines and "Authorization: Bearer k" in lines
    assert "Content-Length: 2" in lines and body == b"{}"
    assert b"Host: h\r\n" in Origin("https://h", {}).request("GET", "/v2", {}, b"")[0]
    for url in ("ftp://h", "http://", "http://h:99999"):
        with pytest.raises(InvalidInputError):
            Origin(url, {}).check()
    with pytest.raises(InvalidInputError, match="illegal header"):
        Origin("http://h", {"X-Bad": "a\r\nInjected: 1"}).check()


# -- the pools against a real server -------------------------------------------------


async def test_async_pool_never_opens_more_than_max_connections(server: ServerProcess) -> None:
    async with AsyncClient(server.url, max_connections=3) as client:
        outs = await asyncio.gather(*(client.activation("relu", [float(i), -1.0]) for i in range(40)))
        assert [float(o["y"][0]) for o in outs] == [float(i) for i in range(40)]
        pool = client._sender
        assert pool._open <= 3 and len(pool._idle) == pool._open  # type: ignore[union-attr]


def test_sync_pool_shared_by_threads(server: ServerProcess) -> None:
    errors: list[BaseException] = []
    with Client(server.url, max_connections=2) as client:

        def work(i: int) -> None:
            try:
                for _ in range(5):
                    assert float(client.activation("relu", [float(i)])["y"][0]) == float(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(client._sender._idle) <= 2  # type: ignore[union-attr]
    assert not errors
    with pytest.raises(ValueError, match="max_connections"):
        Client(server.url, max_connections=0)


# -- gRPC ModelInfer by hand -----------------------------------------------------------


def test_request_bytes_equal_protobufs_message() -> None:
    tensors = [
        _core.to_wire("x", np.arange(6, dtype=np.float32).reshape(2, 3)),
        _core.to_wire("flags", np.array([True, False])),
        _core.to_wire("scalar", np.float64(2.5)),  # 0-d: no shape field
        _core.to_wire("empty", np.zeros((0, 4), np.int64)),
    ]
    params = {"flag": False, "n": -3, "big": 2**40, "f": 0.5, "s": "mean"}
    request = _core.InferRequest("my op", tensors, params, ("y", "grad_x"))
    ours = pb.ModelInferRequest.FromString(_grpc_wire.encode_infer_request(request))
    assert ours == _core.grpc_infer_request(request)
    assert ours.parameters["flag"].WhichOneof("parameter_choice") == "bool_param"
    assert ours.parameters["n"].int64_param == -3


def test_response_raw_contents_read_in_place() -> None:
    grad = np.arange(6, dtype=np.float32).reshape(2, 3)
    msg = pb.ModelInferResponse(model_name="relu", id="7")
    msg.outputs.add(name="loss", datatype="FP32", shape=[])
    msg.outputs.add(name="grad_x", datatype="FP32", shape=[2, 3])
    msg.raw_output_contents.extend([np.float32(1.5).tobytes(), grad.tobytes()])
    out = _grpc_wire.decode_infer_response(msg.SerializeToString())
    assert float(out["loss"]) == 1.5
    np.testing.assert_array_equal(out["grad_x"], grad)
    assert out["grad_x"].flags.writeable and out.datatypes == {"loss": "FP32", "grad_x": "FP32"}


def test_response_typed_contents_and_malformed_bytes() -> None:
    msg = pb.ModelInferResponse(model_name="relu")
    entry = msg.outputs.add(name="y", datatype="INT64", shape=[2])
    entry.contents.int64_contents.extend([4, -5])
    out = _grpc_wire.decode_infer_response(msg.SerializeToString())
    np.testing.assert_array_equal(out["y"], np.array([4, -5], np.int64))
    for bad in (b"\x32\xff", b"\x0f", b"\x32\x05ab"):
        with pytest.raises(ServerError, match="unreadable"):
            _grpc_wire.decode_infer_response(bad)
