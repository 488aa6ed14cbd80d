"""A request that keeps the device busy for a while (~0.1 s on one CPU thread): an
orthogonal init of a 1024 x 1024 weight (a QR decomposition), asked over V2 for its
weight in binary so that the answer costs little to encode. Tests queue a few of these
on a server with ``--batching false --max-batches-in-flight 1`` to hold work in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import orjson

from tests.integration.wire import metric_total, scrape

SLOW_SIDE = 1024


def slow_request(seed: int) -> tuple[str, bytes, dict[str, str]]:
    body = orjson.dumps(
        {
            "parameters": {"shape": f"{SLOW_SIDE},{SLOW_SIDE}", "seed": seed},
            "outputs": [{"name": "weight", "parameters": {"binary_data": True}}],
        }
    )
    return "/v2/models/orthogonal/infer", body, {"Content-Type": "application/json"}


async def post_slow(client: httpx.AsyncClient, seed: int) -> httpx.Response:
    path, body, headers = slow_request(seed)
    return await client.post(path, content=body, headers=headers)


async def wait_for_metric(
    client: httpx.AsyncClient,
    name: str,
    condition: Callable[[float], bool],
    *,
    timeout_s: float = 20.0,
    **labels: str,
) -> float:
    """Poll /metrics until ``condition(value)`` holds (bounded; for process state only)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = metric_total(await scrape(client), name, **labels)
        if condition(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} stayed at {value} for {timeout_s} s")
        await asyncio.sleep(0.02)
