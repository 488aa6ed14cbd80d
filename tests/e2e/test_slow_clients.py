"""Slow and vanishing HTTP clients against a real `gradserve serve` process
(rest/connections.py): headers or a body sent a byte a second, a connection that never
speaks, answers never read, and the connection cap.

Each test asserts a correctness bound (cut off within 10x the configured timeout), not a
performance figure; the timeouts are short so that the tests are.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest

from tests.conftest import ServerProcess

pytestmark = pytest.mark.e2e

TIMEOUT_S = 1.0
BOUND_S = 10 * TIMEOUT_S  # generous: a correctness bound, the machine may be busy


def _guarded_args(keep_alive_s: float) -> tuple[str, ...]:
    return (
        "--grpc-port", "0",
        "--http-header-timeout-s", str(TIMEOUT_S),
        "--http-body-timeout-s", str(TIMEOUT_S),
        "--http-write-timeout-s", str(2 * TIMEOUT_S),
        "--http-keep-alive-s", str(keep_alive_s),
        "--http-max-connections", "8",
    )  # fmt: skip


@pytest.fixture
def guarded(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(*_guarded_args(keep_alive_s=1))


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=5.0)


def _trickle(sock: socket.socket, data: bytes, bound_s: float) -> tuple[float, bytes]:
    """Send ``data`` a byte a second until the server answers or closes; the seconds it
    took and what the server sent (b"" for a close without an answer)."""
    started = time.monotonic()
    received = b""
    for byte in _bytes(data):
        try:
            sock.sendall(byte)
        except OSError:  # reset or broken pipe: the server closed on us
            break
        sock.settimeout(1.0)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            assert time.monotonic() - started < bound_s, "server still reading the trickle"
            continue
        except OSError:
            break
        received += chunk
        break
    received += _read_to_close(sock)
    return time.monotonic() - started, received


def _bytes(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def _read_to_close(sock: socket.socket) -> bytes:
    sock.settimeout(BOUND_S)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except OSError:
        pass
    return out


def _still_serves(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/v1/activations/relu", json={"x": [-1.0, 2.0]}, timeout=10.0)
    assert response.status_code == 200, response.text
    assert response.json()["y"]["data"] == [0.0, 2.0]


@pytest.mark.timeout(60)
def test_a_request_head_over_the_size_limit_gets_431(server_factory: Callable[..., ServerProcess]) -> None:
    # httptools joins a header's pieces by concatenation (quadratic): one 99 MiB line
    # cost 7.7 s of CPU before the answer. The cap cuts it off as the bytes arrive.
    server = server_factory("--grpc-port", "0", "--http-max-header-bytes", "4096", "--api-keys", "k" * 32)
    line = b"GET /v1/ops HTTP/1.1\r\nHost: x\r\nX-Junk: "
    with _connect(server) as sock:
        # No end of headers: the server must not wait for it. (32 KiB, read by the
        # server in full before it closes: more left unread would make its close a reset.)
        sock.sendall(line + b"a" * 32768)
        answer = _read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"headers_too_large" in answer and b"4096" in answer
    # A head under the limit is served as usual (a 401 here: no key).
    with _connect(server) as sock:
        sock.sendall(line + b"a" * 3000 + b"\r\nConnection: close\r\n\r\n")
        assert _read_to_close(sock).startswith(b"HTTP/1.1 401")


@pytest.mark.timeout(60)
def test_headers_a_byte_a_second_are_cut_off(guarded: ServerProcess) -> None:
    request = b"POST /v1/activations/relu HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" * 10
    with _connect(guarded) as sock:
        took, answer = _trickle(sock, request, BOUND_S)
    assert took < BOUND_S
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    _still_serves(guarded)


@pytest.mark.timeout(60)
def test_body_a_byte_a_second_is_cut_off(guarded: ServerProcess) -> None:
    body = orjson.dumps({"x": [0.5] * 200})
    head = (
        f"POST /v1/activations/relu HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with _connect(guarded) as sock:
        sock.sendall(head)
        took, answer = _trickle(sock, body, BOUND_S)
    assert took < BOUND_S
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer or answer == b""
    _still_serves(guarded)


@pytest.mark.timeout(60)
def test_a_connection_that_never_speaks_is_closed(guarded: ServerProcess) -> None:
    with _connect(guarded) as sock:
        started = time.monotonic()
        assert _read_to_close(sock) == b""
        assert time.monotonic() - started < BOUND_S


@pytest.mark.timeout(60)
def test_answers_never_read_are_dropped(guarded: ServerProcess) -> None:
    """Pipelined requests for 4 MB JSON answers, never read: the server holds one answer
    (flow control), then resets the connection at the write timeout."""
    body = orjson.dumps({"shape": [1024, 1024]})
    request = (
        f"POST /v1/init/zeros HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with _connect(guarded) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up fast
        sock.sendall(request * 16)
        time.sleep(2 * TIMEOUT_S + BOUND_S / 2)  # past the write timeout, not reading
        received = _read_to_close(sock)
    # Sixteen answers would be ~64 MB: the connection was reset (its buffers dropped)
    # long before that, and the answers still queued behind it were dropped quietly.
    assert len(received) < 4 * 1024 * 1024, len(received)
    _still_serves(guarded)
    assert "aborting" in guarded.log()
    assert "Traceback" not in guarded.log()


@pytest.mark.timeout(60)
def test_connections_past_the_cap_answer_503_with_retry_after(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # A long keep-alive: with 1 s, a CPU-starved second between the eight connections'
    # calls and the ninth would let the server close idle ones, and the cap not be hit.
    guarded = server_factory(*_guarded_args(keep_alive_s=30))
    clients = [httpx.Client(base_url=guarded.url, timeout=10.0) for _ in range(8)]
    try:
        for client in clients:  # eight kept-alive connections: the cap
            assert client.get("/healthz").status_code == 200
        with httpx.Client(base_url=guarded.url, timeout=10.0) as extra:
            refused = extra.post("/v1/activations/relu", json={"x": [1.0]})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        assert refused.json()["error"]["code"] == "unavailable"
        # The connections within the cap are still served.
        assert clients[0].post("/v1/activations/relu", json={"x": [1.0]}).status_code == 200
    finally:
        for client in clients:
            client.close()
    # Once they close, new connections are served again.
    deadline = time.monotonic() + BOUND_S
    while (status := httpx.get(f"{guarded.url}/healthz", timeout=10.0).status_code) != 200:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert "Traceback" not in guarded.log()
