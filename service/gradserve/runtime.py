"""The runtime: the core object both transports share (registry, executor, batcher,
engine, metrics, shared-memory regions), with its start and drain. Built once per
process from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gradserve.auth import KeyStore
from gradserve.batching import DynamicBatcher
from gradserve.config import Settings
from gradserve.engine import Engine
from gradserve.executor import Executor
from gradserve.metrics import Metrics
from gradserve.ops import build_registry
from gradserve.shm import SharedMemory
from gradserve.tracing import Tracing

log = logging.getLogger(__name__)


class Runtime:
    """Everything behind the transports. HTTP and gRPC call ``runtime.engine``."""

    def __init__(self, settings: Settings, *, tracing: Tracing | None = None) -> None:
        """``tracing``: spans to this instead of what ``otel_exporter`` says (tests)."""
        self.settings = settings
        # The one key store both transports check (None: no keys, no check).
        self.keys = KeyStore.from_settings(settings)
        # None when tracing is off: every hook is then one `is None` test.
        self.tracing = tracing if tracing is not None else Tracing.from_settings(settings)
        self.registry = build_registry()
        self.metrics = Metrics()
        self.executor = Executor(settings)
        self.batcher = DynamicBatcher(settings, self.executor, self.metrics, tracing=self.tracing)
        self.engine = Engine(settings, self.registry, self.batcher, self.metrics)
        # One region registry for REST and gRPC: a region registered over one is
        # usable from the other (Triton's shared-memory extensions).
        self.shm = SharedMemory(settings)
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
        if self.tracing is not None:
            self.tracing.shutdown()  # flushes spans still waiting for export
