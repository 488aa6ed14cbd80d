"""/metrics: the Triton-style series exist and move when requests are served, fail,
are refused (queue full) or are dropped because their client left."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess
from tests.integration.slow import post_slow, wait_for_metric
from tests.integration.wire import Case, metric_total, scrape, send_native, send_v2

SERIES = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_request_duration_histogram_us",
    "nv_inference_queue_duration_histogram_us",
    "nv_inference_compute_infer_duration_histogram_us",
    "nv_inference_batch_size_rows",
    "nv_inference_batch_size_requests",
)
# Triton's own series: exact names and types, counters without a _total suffix.
TRITON_TYPES = {
    "nv_inference_request_success": "counter",
    "nv_inference_request_failure": "counter",
    "nv_inference_count": "counter",
    "nv_inference_exec_count": "counter",
    "nv_inference_request_duration_us": "counter",
    "nv_inference_queue_duration_us": "counter",
    "nv_inference_compute_infer_duration_us": "counter",
    "nv_inference_pending_request_count": "gauge",
}


async def test_series_exist_and_move(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name for f in text_string_to_metric_families(response.text)}
        assert set(SERIES) <= families, set(SERIES) - families
        for name, kind in TRITON_TYPES.items():
            assert f"# TYPE {name} {kind}\n" in response.text
        assert not re.search(r"^\w+_(total|created)[{ ]", response.text, re.MULTILINE)
        before = await scrape(client)
        for i in range(3):
            status, _ = await send_native(
                client, Case("tanh", {"x": torch.full((2, 3), float(i))}, grad=True)
            )
            assert status == 200
        status, _ = await send_v2(client, Case("tanh", {"x": torch.ones(4)}))
        assert status == 200
        # A class index out of range: 422, counted as invalid_input.
        bad = Case("cross_entropy", {"input": torch.zeros(2, 3), "target": torch.tensor([0, 7])})
        status, body = await send_native(client, bad)
        assert status == 422, body
        after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return metric_total(after, name, **labels) - metric_total(before, name, **labels)

    tanh = {"model": "tanh"}
    assert moved("nv_inference_request_success", transport="rest", **tanh) == 3
    assert moved("nv_inference_request_success", transport="v2", **tanh) == 1
    assert moved("nv_inference_request_failure", model="cross_entropy", reason="invalid_input") == 1
    assert moved("nv_inference_count", **tanh) == 4
    assert 1 <= moved("nv_inference_exec_count", **tanh) <= 4
    assert moved("nv_inference_request_duration_histogram_us_count", **tanh) == 4
    assert moved("nv_inference_request_duration_us", **tanh) > 0
    assert moved("nv_inference_queue_duration_histogram_us_count", **tanh) == 4
    assert moved("nv_inference_compute_infer_duration_histogram_us_count", **tanh) == 4
    assert moved("nv_inference_compute_infer_duration_us", **tanh) > 0
    assert moved("nv_inference_batch_size_requests_sum", **tanh) == 4
    # Rows: dim 0 for rows ops, one per request for elementwise ops (tanh).
    assert moved("nv_inference_batch_size_rows_sum", **tanh) == 4
    assert metric_total(after, "nv_inference_pending_request_count") == 0


@pytest.mark.timeout(60)
async def test_queue_full_is_429_and_counted(server_factory: Callable[..., ServerProcess]) -> None:
    # No admission wait: with the default (1 s, rest/fastpath.py) a request past the full
    # queue waits for a slot, and on a fast machine all 8 slow requests got one in time.
    server = server_factory(
        "--batching",
        "false",
        "--max-batches-in-flight",
        "1",
        "--max-queue-size",
        "2",
        "--http-admission-wait-s",
        "0",
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
        # They arrive together: two wait (one may already run), the rest are refused.
        responses = await asyncio.gather(*(post_slow(client, seed) for seed in range(8)))
        statuses = sorted(r.status_code for r in responses)
        refused = [r for r in responses if r.status_code == 429]
        # At least the first (taken when the dispatcher runs) and two queued.
        assert statuses.count(200) >= 2, statuses
        assert refused, statuses
        assert set(statuses) <= {200, 429}
        assert all(r.headers.get("retry-after") for r in refused)
        assert all("queue full" in r.json()["error"] for r in refused)
        samples = await scrape(client)
    assert metric_total(samples, "nv_inference_request_failure", reason="queue_full") == len(refused)
    assert metric_total(samples, "nv_inference_count", model="orthogonal") == 8 - len(refused)


@pytest.mark.timeout(60)
async def test_client_that_gives_up_while_queued_is_dropped(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--batching", "false", "--max-batches-in-flight", "1")
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
        slow = [asyncio.ensure_future(post_slow(client, seed)) for seed in range(10)]
        # Several slow requests are waiting behind the running one (~0.1 s each)...
        await wait_for_metric(client, "nv_inference_pending_request_count", lambda v: v >= 7)
        # ... when this client sends a quick request and gives up after 0.3 s.
        async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(30.0, read=0.3)) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await send_native(impatient, Case("relu", {"x": torch.ones(3)}))
        for response in await asyncio.gather(*slow):
            assert response.status_code == 200
        # The server noticed the disconnect and dropped the queued request: it never ran.
        await wait_for_metric(
            client, "nv_inference_request_failure", lambda v: v == 1, model="relu", reason="cancelled"
        )
        samples = await scrape(client)
    assert metric_total(samples, "nv_inference_count", model="relu") == 0
    assert metric_total(samples, "nv_inference_request_success", model="relu") == 0
    assert metric_total(samples, "nv_inference_count", model="orthogonal") == 10
    assert metric_total(samples, "nv_inference_pending_request_count") == 0
    assert "Traceback" not in server.log()
