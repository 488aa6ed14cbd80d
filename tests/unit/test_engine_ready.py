"""The engine's readiness hooks: what must hold before /readyz turns 200 (gRPC health
SERVING) runs in the warm-up's last step, before ``ready`` turns True."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gradserve.config import Settings
from gradserve.runtime import Runtime


async def test_hooks_run_before_ready_and_at_once_once_ready() -> None:
    runtime = Runtime(Settings(device="cpu"))
    seen: list[tuple[str, bool]] = []

    def hook(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            seen.append((name, runtime.engine.ready))

        return run

    await runtime.engine.when_ready(hook("first"))
    await runtime.engine.when_ready(hook("second"))
    assert seen == []  # not ready yet: kept for later
    try:
        await runtime.start(wait_ready=True)
        assert seen == [("first", False), ("second", False)]  # in order, before ready
        assert runtime.engine.ready
        await runtime.engine.when_ready(hook("late"))
        assert seen[-1] == ("late", True)  # already ready: at once
    finally:
        await runtime.drain()
        runtime.close()
