"""Overload with real processes, at a CI-friendly scale: 300 closed-loop clients that
retry at once against a server admitting 32 requests at a time (admission control in
rest/fastpath.py), for 5 s.

Asserted: only 200 and 429/503-with-Retry-After answers, no 5xx, no traceback, some
goodput, and a plain request served right after. The goodput ratio is printed, not
asserted: wall-clock figures belong to scripts/overload.py, not to a test on a shared
machine.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from gradserve.bench.overload import run_load
from tests.conftest import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
def test_overload_refuses_cheaply_and_keeps_serving(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(
        "--grpc-port", "0", "--max-queue-size", "32", "--http-max-requests-in-flight", "32",
        "--http-admission-wait-s", "0.05",
    )  # fmt: skip
    peak = run_load(server.url, 32, 2.0, "immediate", procs=1, server_pid=server.proc.pid)
    flood = run_load(server.url, 300, 5.0, "immediate", procs=2, server_pid=server.proc.pid)
    print(
        f"\npeak (32 clients) {peak.goodput:.0f} req/s; 300 clients retrying at once: "
        f"{flood.goodput:.0f} req/s = {flood.goodput / max(peak.goodput, 1e-9):.2f} of peak, "
        f"p50 {flood.p(50):.1f} ms, p99 {flood.p(99):.1f} ms, statuses {dict(flood.statuses)}"
    )

    assert set(flood.statuses) <= {200, 429, 503}, flood.statuses
    assert flood.statuses[429] > 0, "300 clients against 32 admitted were never refused"
    assert flood.refusals_without_retry_after == 0
    assert flood.ok > 0

    response = httpx.post(f"{server.url}/v1/activations/relu", json={"x": [-1.0, 3.0]}, timeout=10.0)
    assert response.status_code == 200, response.text
    assert response.json()["y"]["data"] == [0.0, 3.0]
    metrics = httpx.get(f"{server.url}/metrics", timeout=10.0).text
    assert 'reason="queue_full"' in metrics
    assert "Traceback" not in server.log()
