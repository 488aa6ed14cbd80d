"""The runtime: the core object both transports share (registry, executor, batcher,
engine, metrics), with its start and drain. Built once per process from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gradserve.batching import DynamicBatcher
from gradserve.config import Settings
from gradserve.engine import Engine
from gradserve.executor import Executor
from gradserve.metrics import Metrics
from gradserve.ops import build_registry

log = logging.getLogger(__name__)


class Runtime:
    """Everything behind the transports. HTTP and gRPC call ``runtime.engine``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = build_registry()
        self.metrics = Metrics()
        self.executor = Executor(settings)
        self.batcher = DynamicBatcher(settings, self.executor, self.metrics)
        self.engine = Engine(settings, self.registry, self.batcher, self.metrics)
        self._warm_task: asyncio.Task[None] | None = None
        self._started = False

    async def start(self, *, wait_ready: bool = False) -> None:
        """Start the batcher and warm every op; ``/readyz`` turns 200 when warm."""
        if self._started:
            return
        self._started = True
        await self.batcher.start()
        self._warm_task = asyncio.create_task(self.engine.warm_up(self.executor), name="warm-up")
        if wait_ready:
            await self._warm_task

    async def drain(self) -> None:
        """Stop taking work at once; finish what was accepted (up to the drain timeout)."""
        self.engine.draining = True
        self.engine.refusing_work = True
        if self._warm_task is not None and not self._warm_task.done():
            self._warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm_task
        await self.batcher.drain(self.settings.drain_timeout_s)
        log.info("drained")

    def close(self) -> None:
        self.executor.shutdown()
