"""SIGTERM drain of a real `gradserve serve` process: work in flight completes with 200,
new work and readiness answer 503, and the process exits 0 within the drain timeout."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest
import torch

from tests.conftest import ServerProcess
from tests.integration.slow import post_slow, wait_for_metric
from tests.integration.wire import Case, send_native, send_v2

DRAIN_TIMEOUT_S = 30.0

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(90)
async def test_sigterm_drains_in_flight_work_then_exits_0(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        "--batching", "false", "--max-batches-in-flight", "1", "--drain-timeout-s", str(DRAIN_TIMEOUT_S)
    )
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=server.url, timeout=60.0, limits=limits) as client:
        slow = [asyncio.ensure_future(post_slow(client, seed)) for seed in range(12)]
        quick = [
            asyncio.ensure_future(send_native(client, Case("relu", {"x": torch.full((3,), float(i))})))
            for i in range(4)
        ]
        # Everything is accepted: one runs, the rest wait in the queue.
        await wait_for_metric(client, "nv_inference_pending_request_count", lambda v: v >= 10)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

        # Readiness turns 503 at once, and new work is refused (503, or no connection).
        deadline = time.monotonic() + 10
        while (ready := await client.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "readyz still 200 after SIGTERM"
            await asyncio.sleep(0.01)
        assert ready.status_code == 503
        assert ready.json()["status"] == "draining"
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as fresh:
            try:
                status, body = await send_native(fresh, Case("relu", {"x": torch.ones(3)}))
                assert status == 503, body
                assert b"draining" in body
                status, body = await send_v2(fresh, Case("sigmoid", {"x": torch.ones(3)}))
                assert status == 503, body
            except httpx.ConnectError:
                pass

        # Every request accepted before the signal completes with its answer.
        responses = await asyncio.gather(*slow)
        assert [r.status_code for r in responses] == [200] * len(slow)
        assert all(int(r.headers["inference-header-content-length"]) > 0 for r in responses)
        for i, (status, body) in enumerate(await asyncio.gather(*quick)):
            assert status == 200, body
            assert f"{float(i)}".encode() in body

    try:
        code = server.proc.wait(DRAIN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server still running {DRAIN_TIMEOUT_S} s after SIGTERM:\n{server.log()}")
    assert code == 0, server.log()
    assert time.monotonic() - signalled < DRAIN_TIMEOUT_S
    log = server.log()
    assert "drained" in log
    assert "Traceback" not in log
