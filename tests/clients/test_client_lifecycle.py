"""A client's life around its calls, on all four clients: closing one (with a call in
flight, and calling it afterwards), the gRPC channel's reconnect backoff, headers and
metadata refused before anything is sent, and what the docs promise of defaults.

The in-flight cases run against a real in-process grpc server whose handlers never
answer until released, so that the call is certainly waiting when the client closes;
the others against a real `gradserve serve` process, or none.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest

import gradserve_client
from gradserve_client import (
    AsyncClient,
    AsyncGrpcClient,
    Client,
    GrpcClient,
    InvalidInputError,
    RetryPolicy,
    ServerError,
)
from gradserve_client.generated import inference_pb2 as pb
from tests.clients.conftest import ALL_KINDS, GRPC_KINDS, KINDS
from tests.conftest import ServerProcess, free_port


def make(kind: str, where: str, **options: Any) -> Any:
    """A client of one kind; ``where`` is the server's HTTP URL or gRPC target."""
    cls = {"http": Client, "async_http": AsyncClient, "grpc": GrpcClient, "async_grpc": AsyncGrpcClient}[kind]
    return cls(where, **options)


async def close(client: Any) -> None:
    if isinstance(client, AsyncClient | AsyncGrpcClient):
        await client.aclose()
    else:
        client.close()


async def maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


# -- a call in flight when the client closes -------------------------------------------


class NeverServer:
    """A grpc server whose ModelInfer and ModelStreamInfer wait until released (or 30 s)
    before failing: a call to it is in flight for as long as the test needs."""

    def __init__(self) -> None:
        self.gate, self.entered = threading.Event(), threading.Event()
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        unary = grpc.unary_unary_rpc_method_handler(
            self._never,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString,
        )
        stream = grpc.stream_stream_rpc_method_handler(
            self._never_stream,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        )
        handlers = {"ModelInfer": unary, "ModelStreamInfer": stream}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),)
        )
        self.target = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"

    def _never(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.entered.set()
        self.gate.wait(30)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")

    def _never_stream(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        next(requests)  # the first call has arrived
        self.entered.set()
        self.gate.wait(30)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")
        yield  # a generator: the stream's answers (none)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30)

    def __enter__(self) -> NeverServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self._server.stop(0)


@pytest.fixture
def never() -> Iterator[NeverServer]:
    with NeverServer() as server:
        yield server


async def test_async_grpc_call_in_flight_when_the_client_closes_raises_server_error(
    never: NeverServer,
) -> None:
    # grpc.aio cancels the calls of a channel it closes, which surfaced as a bare
    # CancelledError; it is ServerError (CANCELLED), final, as on the sync client.
    client = AsyncGrpcClient(never.target, retry=RetryPolicy(max_retries=3))
    call = asyncio.ensure_future(client.activation("relu", [1.0]))
    await never.wait_entered()
    await client.aclose()
    with pytest.raises(ServerError, match="closed") as info:
        await call
    assert info.value.grpc_code == "CANCELLED" and info.value.attempts == 1


async def test_async_grpc_stream_call_in_flight_when_the_client_closes_raises_server_error(
    never: NeverServer,
) -> None:
    client = AsyncGrpcClient(never.target)
    stream = client.stream()
    call = asyncio.ensure_future(stream.activation("relu", [1.0]))
    await never.wait_entered()
    await client.aclose()
    with pytest.raises(ServerError, match="closed") as info:
        await call
    assert info.value.grpc_code == "CANCELLED"
    with pytest.raises(ServerError, match="closed") as info:
        await stream.activation("relu", [1.0])
    assert info.value.grpc_code == "CANCELLED"
    await stream.aclose()


async def test_the_callers_own_cancellation_stays_a_cancellation(never: NeverServer) -> None:
    # Cancelled by its caller and then its client closed: the cancellation is the
    # caller's, and must reach it as such (asyncio.timeout, TaskGroup rely on it).
    client = AsyncGrpcClient(never.target)
    call = asyncio.ensure_future(client.activation("relu", [1.0]))
    await never.wait_entered()
    call.cancel()
    await client.aclose()
    with pytest.raises(asyncio.CancelledError):
        await call


# -- calls on a closed client ----------------------------------------------------------


@ALL_KINDS
async def test_a_closed_client_raises_server_error_and_is_not_live(server: ServerProcess, kind: str) -> None:
    client = make(kind, server.grpc_target if kind in GRPC_KINDS else server.url)
    assert (await maybe_await(client.activation("relu", [1.0])))["y"].tolist() == [1.0]
    await close(client)
    for call in (
        lambda: client.activation("relu", [1.0]),
        lambda: client.model_metadata("mse"),
        lambda: client.server_metadata(),
    ):
        with pytest.raises(ServerError, match="client is closed") as info:
            await maybe_await(call())
        assert info.value.grpc_code == ("CANCELLED" if kind in GRPC_KINDS else None)
        assert info.value.attempts == 1
    assert await maybe_await(client.live()) is False
    assert await maybe_await(client.ready()) is False
    assert await maybe_await(client.model_ready("mse")) is False
    await close(client)  # closing twice is harmless


def test_a_closed_http_client_with_a_transport_raises_server_error() -> None:
    # httpx raised RuntimeError("... the client has been closed") here.
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200))
    client = Client("http://app", transport=transport)
    client.close()
    with pytest.raises(ServerError, match="client is closed"):
        client.activation("relu", [1.0])
    assert client.live() is False and not sent


def test_a_stream_of_a_closed_grpc_client_raises_server_error(server: ServerProcess) -> None:
    client = GrpcClient(server.grpc_target)
    with client.stream() as s:
        assert s.activation("relu", [1.0])["y"].tolist() == [1.0]
        client.close()
        with pytest.raises(ServerError, match="closed") as info:
            s.activation("relu", [1.0])
        assert info.value.grpc_code == "CANCELLED"


# -- reconnecting after the server comes back --------------------------------------------


def test_the_grpc_channels_reconnect_at_least_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    # grpcio's default reconnect backoff grows to 120 s: after an outage of seconds the
    # channel waited out several seconds more once the server was back, failing every
    # call meanwhile with UNAVAILABLE after the SDK's retries (about 1 s of backoff).
    seen: list[dict[str, Any]] = []

    def spy(real: Callable[..., Any]) -> Callable[..., Any]:
        def channel(target: str, options: Any = (), **kwargs: Any) -> Any:
            seen.append(dict(options))
            return real(target, options=options, **kwargs)

        return channel

    monkeypatch.setattr(grpc, "insecure_channel", spy(grpc.insecure_channel))
    monkeypatch.setattr(grpc.aio, "insecure_channel", spy(grpc.aio.insecure_channel))
    target = f"127.0.0.1:{free_port()}"
    GrpcClient(target).close()

    async def async_client() -> None:
        await AsyncGrpcClient(target).aclose()

    asyncio.run(async_client())
    # The caller's own options come last, and win.
    GrpcClient(target, options=[("grpc.max_reconnect_backoff_ms", 5000)]).close()
    assert len(seen) == 3
    for options in seen[:2]:
        assert options["grpc.initial_reconnect_backoff_ms"] <= 1000
        assert options["grpc.max_reconnect_backoff_ms"] <= 1000
        # Not lowered: grpc-core reads it as the minimum connect timeout.
        assert "grpc.min_reconnect_backoff_ms" not in options
    assert seen[2]["grpc.max_reconnect_backoff_ms"] == 5000


# -- headers and metadata with a line break ---------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        *(pytest.param(kind, {"api_key": "k1\r\nX: y"}, id=f"{kind}-api_key") for kind in KINDS),
        *(
            pytest.param(kind, {"headers": {"x-a": "a\nb"}}, id=f"{kind}-header")
            for kind in ("http", "async_http")
        ),
        *(pytest.param(kind, {"metadata": [("x-a", "a\nb")]}, id=f"{kind}-metadata") for kind in GRPC_KINDS),
        *(
            pytest.param(kind, {"metadata": [("X-Upper", "v")]}, id=f"{kind}-metadata_key")
            for kind in GRPC_KINDS
        ),
    ],
)
async def test_a_line_break_in_a_header_is_refused_before_sending(
    kind: str, options: dict[str, Any], never: NeverServer
) -> None:
    sent: list[httpx.Request] = []
    if kind not in GRPC_KINDS:  # through httpx, which sent such a header as it was
        options = {
            **options,
            "transport": httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(500)),
        }
    with pytest.raises(InvalidInputError, match=r"api_key|illegal") as info:
        client = make(kind, never.target if kind in GRPC_KINDS else "http://app", **options)
        try:
            await maybe_await(client.activation("relu", [1.0]))
        finally:
            await close(client)
    assert isinstance(info.value, ValueError)
    assert not sent and not never.entered.is_set()


def test_the_http_pool_refuses_a_header_with_a_line_break_too() -> None:
    # Without transport=, the client's own pool, as before: InvalidInputError.
    with pytest.raises(InvalidInputError, match="illegal header"):
        Client(f"http://127.0.0.1:{free_port()}", headers={"X-Bad": "a\r\nInjected: 1"})


# -- what the docs promise ---------------------------------------------------------------


def test_docstrings_state_the_real_default_retry_budget() -> None:
    default = RetryPolicy().max_retries
    package = Path(gradserve_client.__file__).parent
    stated = {
        (path.name, n)
        for path in package.glob("*.py")
        for n in re.findall(r"up to (\d+) retries", path.read_text())
    }
    assert stated and all(int(n) == default for _, n in stated), stated


@ALL_KINDS
async def test_explicit_outputs_win_over_grad(server: ServerProcess, kind: str) -> None:
    # docs/sdk.md: grad=True picks the outputs only when outputs= is not given.
    client = make(kind, server.grpc_target if kind in GRPC_KINDS else server.url)
    try:
        x = np.array([-1.0, 2.0], np.float32)
        out = await maybe_await(client.infer("relu", {"x": x}, outputs=["y"], grad=True))
        assert list(out) == ["y"] and out["y"].tolist() == [0.0, 2.0]
        both = await maybe_await(client.infer("relu", {"x": x}, grad=True))
        assert list(both) == ["y", "grad_x"]
    finally:
        await close(client)
