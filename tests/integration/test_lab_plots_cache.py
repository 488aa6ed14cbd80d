"""lab/plots.py's machinery on a real runtime: the LRU cache's bounds, one render for
concurrent identical queries, and a render worker that comes back after it dies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gradserve.config import Settings
from gradserve.errors import InvalidInput
from gradserve.lab.plots import Plots
from gradserve.runtime import Runtime

SMALL = {"img_width": "300", "img_height": "200", "points": "11"}


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    rt = Runtime(Settings())
    await rt.start(wait_ready=True)
    yield rt
    await rt.drain()
    rt.close()


async def test_cache_is_bounded_by_entries_and_bytes(runtime: Runtime) -> None:
    plots = Plots(runtime.engine, cache_entries=2)
    try:
        for op in ("relu", "tanh", "gelu"):
            assert not (await plots.activation({**SMALL, "op": op})).cached
        assert (await plots.activation({**SMALL, "op": "gelu"})).cached
        assert not (await plots.activation({**SMALL, "op": "relu"})).cached  # evicted
        assert plots.renders == 4 and len(plots._cache) == 2
    finally:
        await plots.aclose()
    tiny = Plots(runtime.engine, cache_bytes=100)  # no image fits
    try:
        await tiny.margin(SMALL)
        assert not (await tiny.margin(SMALL)).cached and tiny._cached_bytes == 0
    finally:
        await tiny.aclose()


async def test_concurrent_identical_queries_share_one_render(runtime: Runtime) -> None:
    plots = Plots(runtime.engine)
    try:
        images = await asyncio.gather(*(plots.margin(SMALL) for _ in range(5)))
        assert plots.renders == 1 and len({image.body for image in images}) == 1
    finally:
        await plots.aclose()


async def test_a_dead_worker_is_replaced(runtime: Runtime) -> None:
    plots = Plots(runtime.engine)
    try:
        first = await plots.activation({**SMALL, "op": "silu"})
        assert plots._worker is not None
        plots._worker.kill()
        await plots._worker.wait()
        again = await plots.activation({**SMALL, "op": "silu", "low": "-4"})
        assert again.body[:4] == first.body[:4] == b"\x89PNG"
    finally:
        await plots.aclose()
    assert plots._worker is None


async def test_bad_queries_fail_before_any_work(runtime: Runtime) -> None:
    plots = Plots(runtime.engine)
    with pytest.raises(InvalidInput, match="'img_width'"):
        await plots.margin({"img_width": "99999"})
    assert plots.renders == 0 and plots._worker is None
