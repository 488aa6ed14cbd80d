"""The dynamic batcher: groups compatible requests into one kernel call.

Flow position: engine -> **batcher** -> executor. Every request goes through here,
batched or not, so backpressure (429), queue deadlines (504) and cancellation work the
same for all of them.

- Requests that share op, params, dtypes, wanted outputs and (for ``rows`` ops) trailing
  dims land in one bucket; ``elementwise`` ops ignore shapes (they are flattened).
  Solo ops, vetoed requests, requests with shared tensors and large requests get a
  bucket of their own.
- One dispatcher task serves the buckets oldest first. A bucket is sent when it is full
  (rows or elements) or when its oldest request has waited ``max_queue_delay_us``; the
  clock starts at that first arrival and waits are on an event with a timeout, never a
  polling tick. A lone request with nothing to wait for is sent at once.
- ``max_batches_in_flight`` batches run at once; while they run, arrivals pile into
  buckets, which is where batches grow under load.
- The queue is bounded: a full queue refuses at submit time (``Overloaded``). A request
  still queued at its deadline answers ``DeadlineExceeded`` and never runs; a cancelled
  one (client gone) is dropped before it runs. Once a request is in a running batch it
  is answered, whatever its deadline: nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from gradserve.config import Settings
from gradserve.engine import OpRequest, Runner
from gradserve.errors import DeadlineExceeded, GradservError, InternalError, Overloaded, Unavailable
from gradserve.metrics import Metrics

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE = "queued", "running", "done"


@dataclass(eq=False)
class _Item:
    request: OpRequest
    future: asyncio.Future[dict[str, torch.Tensor]]
    rows: int
    elements: int
    state: str = QUEUED
    enqueued_s: float = field(default_factory=time.monotonic)


def _freeze(value: object) -> Hashable:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class DynamicBatcher:
    """Bounded, deadline- and cancel-aware request queue in front of the executor."""

    def __init__(self, settings: Settings, runner: Runner, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
        self._buckets: OrderedDict[Hashable, deque[_Item]] = OrderedDict()
        self._pending = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.max_batches_in_flight)
        self._arrival = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._solo_ids = itertools.count()

    @property
    def pending(self) -> int:
        """Requests waiting in the queue (not yet handed to the device)."""
        return self._pending

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._dispatch_loop(), name="gradserve-batcher")

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, let queued and running work finish, then stop."""
        self._closed = True
        self._arrival.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for bucket in self._buckets.values():
            for item in bucket:
                if not item.future.done():
                    item.future.set_exception(Unavailable("server stopped before this request ran"))
        self._buckets.clear()

    # -- submission ---------------------------------------------------------------

    def _key(self, request: OpRequest, elements: int) -> Hashable:
        spec = request.spec
        s = self.settings
        solo = (
            not s.batching
            or spec.batch_mode == "solo"
            or elements > s.large_request_elements
            or any(not spec.input_index[n].per_row for n in request.tensors)
            or (spec.batchable is not None and not spec.batchable(request.tensors, request.params))
        )
        if solo:
            return ("solo", next(self._solo_ids))
        tensors = tuple(
            (
                name,
                t.dtype,
                t.dim() if spec.batch_mode == "rows" else 0,
                tuple(t.shape[1:]) if spec.batch_mode == "rows" else (),
            )
            for name, t in request.tensors.items()
        )
        params = tuple((k, _freeze(v)) for k, v in request.params.items())
        return (spec.name, params, request.want, tensors)

    async def submit(self, request: OpRequest) -> dict[str, torch.Tensor]:
        if self._closed:
            raise Unavailable("server is draining; retry on another replica")
        if self._pending >= self.settings.max_queue_size:
            if self.metrics is not None:
                self.metrics.rejected(request)
            raise Overloaded(
                f"queue full ({self.settings.max_queue_size} requests waiting); retry later",
                retry_after_s=1.0,
            )
        primary = request.tensors.get(request.spec.inputs[0].name) if request.spec.inputs else None
        elements = primary.numel() if primary is not None else 0
        rows = (
            1
            if primary is None or primary.dim() == 0 or request.spec.batch_mode != "rows"
            else primary.shape[0]
        )
        item = _Item(request, asyncio.get_running_loop().create_future(), rows, elements)
        key = self._key(request, elements)
        self._buckets.setdefault(key, deque()).append(item)
        self._pending += 1
        self._idle.clear()
        self._arrival.set()
        if self.metrics is not None:
            self.metrics.set_pending(self._pending)
        try:
            remaining = (request.deadline_s or float("inf")) - time.monotonic()
            done, _ = await asyncio.wait({item.future}, timeout=max(remaining, 0.0))
            if not done and item.state == QUEUED:
                self._forget(item)
                raise self._expired(request)
            # Running (or just finished): it will be answered, whatever the deadline.
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            if item.state == QUEUED:
                self._forget(item)
            raise

    def _expired(self, request: OpRequest) -> DeadlineExceeded:
        waited = time.monotonic() - request.arrived_s
        return DeadlineExceeded(
            f"op {request.spec.name!r}: request waited {waited:.3f} s in the queue, past its "
            "deadline; it did not run"
        )

    def _forget(self, item: _Item, error: GradservError | None = None) -> None:
        """Take a queued item out: it will never run."""
        item.state = DONE
        self._pending -= 1
        if error is not None and not item.future.done():
            item.future.set_exception(error)
        if self.metrics is not None:
            self.metrics.set_pending(self._pending)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._pending == 0 and not self._in_flight:
            self._idle.set()

    # -- dispatch -----------------------------------------------------------------

    def _oldest_live(self) -> tuple[Hashable, deque[_Item]] | None:
        """The bucket whose head is the oldest request still waiting."""
        for key in list(self._buckets):
            bucket = self._buckets[key]
            while bucket and bucket[0].state != QUEUED:
                bucket.popleft()
            if not bucket:
                del self._buckets[key]
                continue
            return key, bucket
        return None

    def _is_full(self, key: Hashable, bucket: deque[_Item]) -> bool:
        if isinstance(key, tuple) and key[0] == "solo":
            return True
        rows = elements = 0
        for item in bucket:
            if item.state != QUEUED:
                continue
            rows += item.rows
            elements += item.elements
            if rows >= self.settings.max_batch_rows or elements >= self.settings.max_batch_elements:
                return True
        return False

    async def _dispatch_loop(self) -> None:
        delay_s = self.settings.max_queue_delay_us / 1e6
        while True:
            found = self._oldest_live()
            if found is None:
                if self._closed and not self._in_flight:
                    self._idle.set()
                self._arrival.clear()
                await self._arrival.wait()
                continue
            key, bucket = found
            # Wait for more arrivals until the bucket is full or its oldest request
            # has waited the queue delay; a wake-up re-checks both.
            wait_s = bucket[0].enqueued_s + delay_s - time.monotonic()
            if wait_s > 0 and not self._is_full(key, bucket) and not self._closed:
                self._arrival.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrival.wait(), wait_s)
                continue
            await self._slots.acquire()
            items = self._take(key, bucket)
            if not items:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run_batch(items))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _take(self, key: Hashable, bucket: deque[_Item]) -> list[_Item]:
        items: list[_Item] = []
        rows = elements = 0
        now = time.monotonic()
        while bucket:
            item = bucket[0]
            if item.state != QUEUED:
                bucket.popleft()
                continue
            if item.request.deadline_s is not None and now >= item.request.deadline_s:
                # Its own wait in submit() answers 504; just make sure it never runs.
                bucket.popleft()
                self._forget(item, self._expired(item.request))
                continue
            if items and (
                rows + item.rows > self.settings.max_batch_rows
                or elements + item.elements > self.settings.max_batch_elements
            ):
                break
            bucket.popleft()
            item.state = RUNNING
            items.append(item)
            rows += item.rows
            elements += item.elements
        if not bucket:
            self._buckets.pop(key, None)
        self._pending -= len(items)
        if self.metrics is not None:
            self.metrics.set_pending(self._pending)
        return items

    async def _run_batch(self, items: list[_Item]) -> None:
        first = items[0].request
        started = time.monotonic()
        try:
            outputs = await self.runner.run(
                first.spec, [i.request.tensors for i in items], first.params, frozenset(first.want)
            )
            error: GradservError | None = None
        except GradservError as exc:
            error = exc
        except Exception:  # the executor maps errors; this is a last line of defence
            log.exception("batch of %s failed", first.spec.name)
            error = InternalError("internal error while computing")
        finally:
            self._slots.release()
        compute_s = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.batch(first.spec.name, len(items), sum(i.rows for i in items), compute_s)
        for n, item in enumerate(items):
            item.state = DONE
            if self.metrics is not None:
                self.metrics.queued(item.request, started - item.enqueued_s, compute_s)
            if item.future.done():
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(outputs[n])
        self._check_idle_after(asyncio.current_task())

    def _check_idle_after(self, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            self._in_flight.discard(task)
        self._check_idle()
