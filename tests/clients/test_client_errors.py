"""Each exception type for its error, retries on overload that stop at the budget, and
timeouts that fire: all four clients against real `gradserve serve` processes.

Overload is provoked without sleeps: a server with one batch in flight, no batching and
a one-request queue is kept full by slow requests (one runs for about a second, one
waits), as its own pending-requests gauge confirms; meanwhile every other request is
refused with 429 / RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gradserve_client import (
    AsyncClient,
    AsyncGrpcClient,
    Client,
    GrpcClient,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    RetryPolicy,
    TimedOutError,
    TooLargeError,
    UnavailableError,
)
from tests.clients.conftest import ALL_KINDS
from tests.conftest import ServerProcess, free_port, start_server

# About a second of compute on one core: long enough to keep the queue full meanwhile.
SLOW_SHAPE = (2000, 2000)
NO_RETRY = RetryPolicy(max_retries=0)
FAST_RETRY = RetryPolicy(max_retries=2, initial_backoff_s=0.001, max_backoff_s=0.005, honor_retry_after=False)


async def invoke(kind: str, server: ServerProcess, call: Callable[[Any], Any], **options: Any) -> Any:
    """``call(client)`` through one client kind; awaited for the async ones."""
    if kind == "http":
        with Client(server.url, **options) as client:
            return call(client)
    if kind == "grpc":
        with GrpcClient(server.grpc_target, **options) as client:
            return call(client)
    if kind == "async_http":
        async with AsyncClient(server.url, **options) as client:
            return await call(client)
    async with AsyncGrpcClient(server.grpc_target, **options) as client:
        return await call(client)


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One request at a time, one waiting: easy to fill. No admission wait: a request
    that finds the queue full is refused at once, which is what these tests retry."""
    proc = start_server(
        tmp_path_factory.mktemp("busy"),
        "--max-queue-size", "1", "--max-batches-in-flight", "1", "--batching", "false",
        "--http-admission-wait-s", "0",
    )  # fmt: skip
    yield proc
    proc.stop()


# -- one exception per error --------------------------------------------------------


@ALL_KINDS
async def test_not_found(server: ServerProcess, kind: str) -> None:
    with pytest.raises(NotFoundError, match="unknown op 'nope'") as info:
        await invoke(kind, server, lambda c: c.activation("nope", [1.0]))
    assert info.value.status == 404 or info.value.grpc_code == "NOT_FOUND"


@ALL_KINDS
async def test_invalid_input(server: ServerProcess, kind: str) -> None:
    with pytest.raises(InvalidInputError, match="class index 5 out of range") as info:
        await invoke(kind, server, lambda c: c.loss("cross_entropy", [[1.0, 2.0]], [5]))
    assert info.value.status == 422 or info.value.grpc_code == "INVALID_ARGUMENT"
    assert info.value.attempts == 1
    # A dtype the server does not take (UINT8) is refused by the server, not the client.
    with pytest.raises(InvalidInputError, match="UINT8"):
        await invoke(kind, server, lambda c: c.activation("relu", np.zeros(3, np.uint8)))


async def test_invalid_input_caught_before_sending() -> None:
    # Nothing listens there: the error must come from the client's own encoding.
    with (
        Client(f"http://127.0.0.1:{free_port()}") as client,
        pytest.raises(InvalidInputError, match="rectangular"),
    ):
        client.activation("relu", [[1.0], [2.0, 3.0]])


@ALL_KINDS
async def test_too_large_is_not_retried(server: ServerProcess, kind: str) -> None:
    with pytest.raises(TooLargeError, match="over the limit") as info:
        await invoke(kind, server, lambda c: c.init("normal", (5000, 5000)), retry=FAST_RETRY)
    assert info.value.status == 413 or info.value.grpc_code == "RESOURCE_EXHAUSTED"
    assert info.value.attempts == 1


@pytest.mark.parametrize("kind", ["http", "async_http"])
async def test_unreachable_http_is_retried_to_the_budget(kind: str, tmp_path: Path) -> None:
    dead = ServerProcess(None, free_port(), free_port(), tmp_path / "none")  # type: ignore[arg-type]
    with pytest.raises(UnavailableError, match="cannot reach") as info:
        await invoke(kind, dead, lambda c: c.activation("relu", [1.0]), retry=FAST_RETRY)
    assert info.value.attempts == 3


@pytest.mark.parametrize("kind", ["grpc", "async_grpc"])
async def test_unreachable_grpc(kind: str, tmp_path: Path) -> None:
    # The channel's own retry policy retries UNAVAILABLE; what reaches the caller is the type.
    dead = ServerProcess(None, free_port(), free_port(), tmp_path / "none")  # type: ignore[arg-type]
    with pytest.raises(UnavailableError) as info:
        await invoke(kind, dead, lambda c: c.activation("relu", [1.0]), retry=FAST_RETRY, timeout_s=5)
    assert info.value.grpc_code == "UNAVAILABLE"


@ALL_KINDS
async def test_client_timeout_fires(server: ServerProcess, kind: str) -> None:
    started = time.monotonic()
    with pytest.raises(TimedOutError):
        await invoke(kind, server, lambda c: c.init("orthogonal", SLOW_SHAPE), timeout_s=0.05)
    # Raised at the timeout, not after the answer (about a second of compute) arrived.
    assert time.monotonic() - started < 0.8


# -- overload: retries, budget, and the server's own queue timeout ---------------------


async def _queue_is_full(http: httpx.AsyncClient) -> bool:
    """Whether the busy server's one queue slot is taken, per its pending-requests gauge."""
    metrics = (await http.get("/metrics")).text
    found = re.findall(r"^nv_inference_pending_request_count(?:\{[^}]*\})? (\S+)$", metrics, re.MULTILINE)
    return sum(float(v) for v in found) >= 1


@asynccontextmanager
async def saturated(busy_server: ServerProcess, grpc: bool) -> AsyncIterator[None]:
    """Keep the busy server full: one slow request running, one waiting.

    Two fillers send slow requests and retry their refusals quickly, so the waiting
    slot is refilled within milliseconds whenever it frees. The queue counts as full
    once the server's pending gauge reads 1 twice in a row: a request that is merely
    not yet dispatched (a sub-millisecond state) cannot span two round trips.
    """
    eager = RetryPolicy(
        max_retries=1000, initial_backoff_s=0.002, max_backoff_s=0.01, honor_retry_after=False
    )
    filler: AsyncClient | AsyncGrpcClient = (
        AsyncGrpcClient(busy_server.grpc_target, retry=eager)
        if grpc
        else AsyncClient(busy_server.url, retry=eager)
    )
    tasks = [asyncio.create_task(filler.init("orthogonal", SLOW_SHAPE, seed=i)) for i in range(2)]
    try:
        async with httpx.AsyncClient(base_url=busy_server.url, timeout=10) as http:
            in_a_row = 0
            while in_a_row < 2:
                in_a_row = in_a_row + 1 if await _queue_is_full(http) else 0
                assert not all(t.done() for t in tasks), "the fillers finished before the queue filled"
        yield
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
        await filler.aclose()


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
async def test_overload_retries_stop_at_the_budget(busy_server: ServerProcess, grpc: bool) -> None:
    kind = "async_grpc" if grpc else "async_http"
    async with saturated(busy_server, grpc):
        with pytest.raises(OverloadedError, match="queue full") as info:
            await invoke(kind, busy_server, lambda c: c.activation("relu", [1.0]), retry=FAST_RETRY)
    assert info.value.attempts == 3  # one try + the budget of two retries
    assert info.value.status == 429 or info.value.grpc_code == "RESOURCE_EXHAUSTED"
    if not grpc:
        assert info.value.retry_after_s is not None  # the server's Retry-After header


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
async def test_overload_retries_until_it_succeeds(
    busy_server: ServerProcess, grpc: bool, caplog: pytest.LogCaptureFixture
) -> None:
    kind = "async_grpc" if grpc else "async_http"
    patient = RetryPolicy(max_retries=100, initial_backoff_s=0.02, max_backoff_s=0.2, honor_retry_after=False)
    caplog.set_level(logging.INFO, logger="gradserve_client")
    async with saturated(busy_server, grpc):
        out = await invoke(kind, busy_server, lambda c: c.activation("relu", [-1.0, 1.0]), retry=patient)
    np.testing.assert_array_equal(out["y"], [0.0, 1.0])
    assert any("retry" in r.getMessage() and "queue full" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["http", "grpc"])
async def test_server_queue_timeout(busy_server: ServerProcess, kind: str) -> None:
    """Two slow requests with a 0.1 s queue timeout (the V2 `timeout` parameter, in
    microseconds): whichever waits behind the other expires in the server's queue."""

    def slow(client: Any) -> Any:
        params = {"shape": "2000,2000", "timeout": 100_000}
        return client.infer("orthogonal", params=params)

    # A refusal is possible while the other request is not yet dispatched: retry those.
    retry = RetryPolicy(max_retries=20, initial_backoff_s=0.002, max_backoff_s=0.01, honor_retry_after=False)
    results = await asyncio.gather(
        *(invoke(f"async_{kind}", busy_server, slow, retry=retry) for _ in range(2)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], TimedOutError), results
    assert errors[0].status == 504 or errors[0].grpc_code == "DEADLINE_EXCEEDED"
