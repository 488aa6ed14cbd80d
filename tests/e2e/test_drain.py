"""SIGTERM drain of a real `gradserve serve` process: work in flight completes with 200,
new work and readiness answer 503, and the process exits 0 within the drain timeout.
With a drain delay, readiness turns 503 at once while requests are still served for the
delay, so load balancers can stop routing before anything is refused."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable

import grpc
import httpx
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradserve_client import AsyncGrpcClient, RetryPolicy
from tests.conftest import ServerProcess
from tests.integration.slow import post_slow
from tests.integration.wire import Case, metric_total, scrape, send_native, send_v2

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
        # Everything is accepted (queued or answered; at most one runs) before the signal:
        # a request still on its way at SIGTERM is refused, rightly, and would fail the
        # test. ("pending >= 10" alone let 4 arrive late once, under CPU load.)
        sent = len(slow) + len(quick)
        deadline = time.monotonic() + 20
        while True:
            text = await scrape(client)
            accepted = metric_total(text, "nv_inference_pending_request_count") + metric_total(
                text, "nv_inference_request_success"
            )
            if accepted >= sent - 1:
                break
            assert time.monotonic() < deadline, f"only {accepted} of {sent} requests accepted"
            await asyncio.sleep(0.02)
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


DRAIN_DELAY_S = 2.0


async def _grpc_health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)


@pytest.mark.timeout(90)
async def test_drain_delay_keeps_serving_while_not_ready_then_refuses(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--drain-delay-s", str(DRAIN_DELAY_S), "--drain-timeout-s", str(DRAIN_TIMEOUT_S))
    assert await _grpc_health(server.grpc_target) == health_pb2.HealthCheckResponse.SERVING
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

        # Readiness goes 503 (both HTTP probes) and gRPC health NOT_SERVING at once...
        deadline = signalled + 1.0
        while (ready := await client.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "readyz still 200 1 s after SIGTERM"
            await asyncio.sleep(0.01)
        assert ready.json()["status"] == "draining"
        assert (await client.get("/v2/health/ready")).status_code == 503
        assert await _grpc_health(server.grpc_target) == health_pb2.HealthCheckResponse.NOT_SERVING
        not_ready_after_s = time.monotonic() - signalled

        # ...while new requests, on every transport, are still answered for the delay.
        served = 0
        # No retries: an answer here comes from this replica, not from a second attempt.
        async with AsyncGrpcClient(server.grpc_target, retry=RetryPolicy(max_retries=0)) as rpc:
            while time.monotonic() - signalled < DRAIN_DELAY_S * 0.75:
                x = torch.full((4,), float(served) - 2.0)
                status, body = await send_native(client, Case("relu", {"x": x}))
                assert status == 200, body
                status, body = await send_v2(client, Case("sigmoid", {"x": x}))
                assert status == 200, body
                out = await rpc.activation("tanh", x.numpy())
                assert torch.equal(torch.from_numpy(out["y"]), torch.tanh(x))
                served += 1
                await asyncio.sleep(0.05)
        assert served >= 5

        # After the delay, new work is refused (503) or the listener is gone.
        refused = False
        while time.monotonic() - signalled < DRAIN_TIMEOUT_S:
            try:
                status, body = await send_native(client, Case("relu", {"x": torch.ones(3)}))
            except httpx.TransportError:
                refused = True
                break
            if status == 503:
                assert b"draining" in body
                refused = True
                break
            assert status == 200, body
            await asyncio.sleep(0.02)
        refused_after_s = time.monotonic() - signalled
        assert refused
        assert refused_after_s >= DRAIN_DELAY_S * 0.9, refused_after_s

    code = server.proc.wait(DRAIN_TIMEOUT_S)
    assert code == 0, server.log()
    log = server.log()
    assert "still serving for 2.0 s" in log and "drained" in log
    assert "Traceback" not in log
    print(f"not ready after {not_ready_after_s:.3f} s, refusing after {refused_after_s:.3f} s")
