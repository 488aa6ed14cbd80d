"""Which connection failures and gRPC CANCELLEDs the SDK retries, and that those retries
spend the one RetryPolicy budget and deadline.

The HTTP cases run the real clients over ``httpx.MockTransport`` (it raises exactly the
exceptions httpcore raises on a reused connection the server closed); the gRPC cases
run the real clients against a real in-process grpc.aio server whose handler aborts
with CANCELLED, as grpcio does itself under a burst of calls or during a drain.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest

from gradserve_client import (
    AsyncClient,
    AsyncGrpcClient,
    Client,
    GrpcClient,
    InvalidInputError,
    RetryPolicy,
    ServerError,
    TimedOutError,
    UnavailableError,
    _core,
    _http,
    _httpx,
    errors,
)
from gradserve_client.generated import inference_pb2 as pb

FAST = RetryPolicy(max_retries=3, initial_backoff_s=0.001, max_backoff_s=0.002)
DISCONNECTED = "Server disconnected without sending a response."


# -- classification (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "answer_started", "expected"),
    [
        # Before any answer byte: the keep-alive race, a reset, a refusal. Retried.
        (httpx.RemoteProtocolError(DISCONNECTED), False, UnavailableError),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), False, UnavailableError),
        (httpx.ReadError(""), False, UnavailableError),
        (httpx.WriteError("[Errno 32] Broken pipe"), False, UnavailableError),
        (httpx.ConnectError("[Errno 111] Connection refused"), False, UnavailableError),
        # During the answer: the server ran it; final, like any unreadable answer.
        (
            httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
            True,
            ServerError,
        ),
        (httpx.ReadError(""), True, ServerError),
        # The call's time is spent either way (each attempt gets what is left).
        (httpx.ReadTimeout("timed out"), False, TimedOutError),
        (httpx.ReadTimeout("timed out"), True, TimedOutError),
        (httpx.PoolTimeout("timed out"), False, TimedOutError),
        (httpx.ConnectTimeout("timed out"), False, TimedOutError),
        # What the client cannot send would fail the same way again.
        (
            httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
            False,
            InvalidInputError,
        ),
        (httpx.LocalProtocolError("Illegal header value"), False, InvalidInputError),
    ],
)
def test_http_transport_errors(exc: httpx.TransportError, answer_started: bool, expected: type) -> None:
    error = _httpx.transport_error(exc, "http://h", answer_started=answer_started)
    assert type(error) is expected
    assert error.retryable == (expected is UnavailableError)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, UnavailableError),  # the server (or grpcio) cancelled it: retried
        ({"client_closed": True}, ServerError),  # this client closed its channel: final
        ({"deadline_passed": True}, TimedOutError),  # the client's deadline: a timeout
        ({"client_closed": True, "deadline_passed": True}, TimedOutError),
    ],
)
def test_grpc_cancelled(kwargs: dict[str, bool], expected: type) -> None:
    error = _core.grpc_error("CANCELLED", "Cancelled", **kwargs)
    assert type(error) is expected
    assert error.grpc_code == "CANCELLED"
    assert error.retryable == (expected is UnavailableError)


def test_grpc_concurrent_rpc_limit_is_an_overload() -> None:
    # grpcio's maximum_concurrent_rpcs refusal carries no gradserve trailer; nothing ran.
    error = _core.grpc_error("RESOURCE_EXHAUSTED", "Concurrent RPC limit exceeded!")
    assert isinstance(error, errors.OverloadedError) and error.retryable


def test_keepalive_expiry_reaches_the_pool() -> None:
    # The SDK's own pool (_pool.py) holds it; with transport= httpx's transport pools instead.
    with Client("http://h", keepalive_expiry_s=1.5) as client:
        assert client._sender.keepalive_expiry_s == 1.5  # type: ignore[union-attr]
    with Client("http://h") as client:
        assert client._sender.keepalive_expiry_s == _http.DEFAULT_KEEPALIVE_EXPIRY_S  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="keepalive_expiry_s"):
        AsyncClient("http://h", keepalive_expiry_s=-1)


# -- the HTTP retry loop -----------------------------------------------------------

RELU_BODY = b'{"model_name":"relu","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[1.0]}]}'


def flaky_handler(failures: list[Exception]) -> tuple[Callable[[httpx.Request], httpx.Response], list[int]]:
    """Raises each of ``failures`` in turn (as httpcore would), then answers; counts calls."""
    calls = [0]

    def handle(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        if calls[0] <= len(failures):
            raise failures[calls[0] - 1]
        return httpx.Response(200, content=RELU_BODY, headers={"content-type": "application/json"})

    return handle, calls


class _BrokenBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """An answer whose body breaks after its head arrived."""

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"model_'
        raise httpx.ReadError("connection reset mid-answer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"model_'
        raise httpx.ReadError("connection reset mid-answer")


def _broken_answer(calls: list[int]) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        return httpx.Response(200, stream=_BrokenBody())

    return handle


async def _call_http(
    is_async: bool, handler: Callable[[httpx.Request], httpx.Response], **options: Any
) -> Any:
    transport_options: dict[str, Any] = {"binary": False, "retry": FAST, **options}
    if is_async:
        async with AsyncClient(
            "http://h", transport=httpx.MockTransport(handler), **transport_options
        ) as client:
            return await client.activation("relu", [1.0])
    with Client("http://h", transport=httpx.MockTransport(handler), **transport_options) as client:
        return client.activation("relu", [1.0])


ASYNC = pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])


@ASYNC
async def test_closed_before_the_answer_is_retried(is_async: bool) -> None:
    handler, calls = flaky_handler(
        [httpx.RemoteProtocolError(DISCONNECTED), httpx.ReadError(""), httpx.ConnectError("refused")]
    )
    out = await _call_http(is_async, handler)
    np.testing.assert_array_equal(out["y"], np.array([1.0], np.float32))
    assert calls[0] == 4  # three failures within the budget of three retries


@ASYNC
async def test_closed_before_the_answer_spends_the_budget(is_async: bool) -> None:
    handler, calls = flaky_handler([httpx.RemoteProtocolError(DISCONNECTED)] * 10)
    with pytest.raises(UnavailableError, match="RemoteProtocolError") as info:
        await _call_http(is_async, handler)
    assert calls[0] == 4 and info.value.attempts == 4


@ASYNC
async def test_closed_before_the_answer_stops_at_the_deadline(is_async: bool) -> None:
    # A budget that never runs out: the deadline ends the loop, never a sleep past it.
    endless = RetryPolicy(max_retries=10**6, initial_backoff_s=0.02, max_backoff_s=0.02)
    handler, calls = flaky_handler([httpx.ReadError("")] * 10**6)
    with pytest.raises((UnavailableError, TimedOutError)):
        await _call_http(is_async, handler, retry=endless, timeout_s=0.3)
    assert 1 <= calls[0] < 10**6


@ASYNC
async def test_broken_during_the_answer_is_not_retried(is_async: bool) -> None:
    calls = [0]
    with pytest.raises(ServerError, match="during the answer") as info:
        await _call_http(is_async, _broken_answer(calls))
    assert calls[0] == 1 and info.value.attempts == 1


@ASYNC
async def test_unsupported_url_is_not_retried(is_async: bool) -> None:
    kwargs: dict[str, Any] = {"retry": FAST}
    with pytest.raises(InvalidInputError, match="UnsupportedProtocol") as info:
        if is_async:
            async with AsyncClient("ftp://h", **kwargs) as client:
                await client.activation("relu", [1.0])
        else:
            with Client("ftp://h", **kwargs) as client:
                client.activation("relu", [1.0])
    assert info.value.attempts == 1


# -- gRPC CANCELLED through a real grpc server ----------------------------------------


class CancellingServer:
    """A real grpc.aio V2 ModelInfer server (relu) that aborts its first ``cancel``
    calls with CANCELLED, on its own thread and event loop."""

    def __init__(self, cancel: int) -> None:
        self.cancel = cancel
        self.calls = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),))

    async def _infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        if self.calls <= self.cancel:
            await context.abort(grpc.StatusCode.CANCELLED, "cancelled by the server")
        x = np.frombuffer(request.raw_input_contents[0], "<f4")
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        response.outputs.add(name="y", datatype="FP32", shape=list(request.inputs[0].shape))
        response.raw_output_contents.append(np.maximum(x, 0).astype("<f4").tobytes())
        return response

    async def _serve(self) -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            self._infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
        )
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)

    def __enter__(self) -> CancellingServer:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.close()


async def _call_grpc(is_async: bool, port: int, **options: Any) -> Any:
    x = np.array([-1.0, 2.0], np.float32)
    if is_async:
        async with AsyncGrpcClient(f"127.0.0.1:{port}", retry=FAST, **options) as client:
            return await client.activation("relu", x)
    with GrpcClient(f"127.0.0.1:{port}", retry=FAST, **options) as client:
        return client.activation("relu", x)


@ASYNC
async def test_grpc_cancelled_by_the_server_is_retried(is_async: bool) -> None:
    with CancellingServer(cancel=3) as server:
        out = await _call_grpc(is_async, server.port)
        np.testing.assert_array_equal(out["y"], np.array([0.0, 2.0], np.float32))
        assert server.calls == 4


@ASYNC
async def test_grpc_cancelled_spends_the_budget(is_async: bool) -> None:
    with CancellingServer(cancel=100) as server:
        with pytest.raises(UnavailableError, match="cancelled by the server") as info:
            await _call_grpc(is_async, server.port)
        assert info.value.grpc_code == "CANCELLED"
        assert info.value.attempts == 4 and server.calls == 4


def test_grpc_cancelled_after_the_client_closed_is_final() -> None:
    # The sync channel, closed from another thread while a call waits on a server
    # that never answers, ends the call CANCELLED: the client's own doing, not retried.
    gate, entered = threading.Event(), threading.Event()

    def never(request: Any, context: grpc.ServicerContext) -> Any:
        entered.set()
        gate.wait(30)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")

    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.unary_unary_rpc_method_handler(
        never,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = GrpcClient(f"127.0.0.1:{port}", retry=FAST)
        result: list[BaseException] = []

        def run() -> None:
            try:
                client.activation("relu", [1.0])
            except BaseException as exc:  # handed to the test thread
                result.append(exc)

        caller = threading.Thread(target=run)
        caller.start()
        assert entered.wait(30)  # the call is in flight
        client.close()
        caller.join(30)
        assert len(result) == 1 and isinstance(result[0], ServerError), result
        assert result[0].grpc_code == "CANCELLED" and result[0].attempts == 1
    finally:
        gate.set()
        server.stop(0)
