"""The dynamic batcher: groups compatible requests into one kernel call.

Flow position: engine -> **batcher** -> executor. Every request goes through here,
batched or not, so backpressure (429), queue deadlines (504) and cancellation work the
same for all of them.

- Requests that share op, params, dtypes, wanted outputs and (for ``rows`` ops) trailing
  dims land in one bucket; ``elementwise`` ops ignore shapes (they are flattened).
  Solo ops, vetoed requests, requests with shared tensors and large requests get a
  bucket of their own.
- One dispatcher task serves the buckets oldest first. A bucket is sent when it is full
  (rows or elements), when its oldest request has waited ``max_queue_delay_us``, or at
  once when no batch is running (an idle device never waits for company: that would
  only add latency). The clock starts at the first arrival; waits are on an event
  (arrivals and finished batches set it) with a timeout, never a polling tick.
- Except for gRPC requests arriving close together: grpc.aio accepts calls one per trip
  through its completion queue, so under load they trickle in one at a time, and
  "idle device: go at once" sent batches of 1-2. Each then cost a kernel call, the
  worker thread took the GIL from the loop, calls were accepted slower still, and a
  run could stay in that state (c=64: 1.5 requests per batch and ~1,000 req/s, against
  10-12 and ~1,900 when it did not). A gRPC head that arrived while other requests
  were queued or running, less than ``max_queue_delay_us`` after the previous arrival,
  waits out the delay even on an idle device; a sequential caller (c=1) finds the
  batcher empty at each arrival and still goes at once.
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
from gradserve.tracing import Tracing

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE = "queued", "running", "done"


@dataclass(eq=False)
class _Item:
    request: OpRequest
    future: asyncio.Future[dict[str, torch.Tensor]]
    rows: int
    elements: int
    bucket: _Bucket | None = None
    state: str = QUEUED
    enqueued_s: float = field(default_factory=time.monotonic)
    # A request that trickles in (gRPC) within the queue delay of the one before it
    # (module doc).
    waits_for_company: bool = False


@dataclass(eq=False)
class _Bucket:
    """Queued requests that may share one kernel call, with their live totals (kept
    up to date on arrival, take, cancel and expiry, so "is it full?" costs nothing)."""

    solo: bool
    items: deque[_Item] = field(default_factory=deque)
    rows: int = 0
    elements: int = 0

    def add(self, item: _Item) -> None:
        item.bucket = self
        self.items.append(item)
        self.rows += item.rows
        self.elements += item.elements

    def discount(self, item: _Item) -> None:
        self.rows -= item.rows
        self.elements -= item.elements

    def head(self) -> _Item | None:
        """The oldest request still queued (dropping cancelled and expired ones)."""
        while self.items and self.items[0].state != QUEUED:
            self.items.popleft()
        return self.items[0] if self.items else None


def _freeze(value: object) -> Hashable:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class DynamicBatcher:
    """Bounded, deadline- and cancel-aware request queue in front of the executor."""

    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        metrics: Metrics | None = None,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
        self.tracing = tracing  # None when tracing is off (tracing.py)
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._pending = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.max_batches_in_flight)
        self._arrival = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._solo_ids = itertools.count()
        self._last_arrival_s = float("-inf")

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
            for item in bucket.items:
                if item.state == QUEUED:
                    self._forget(item, Unavailable("server stopped before this request ran"))
        self._buckets.clear()

    # -- submission ---------------------------------------------------------------

    def _key(self, request: OpRequest, elements: int) -> tuple[Hashable, bool]:
        """The bucket key, and whether the request must run alone."""
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
            return ("solo", next(self._solo_ids)), True
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
        return (spec.name, params, request.want, tensors), False

    async def submit(self, request: OpRequest) -> dict[str, torch.Tensor]:
        if self._closed:
            raise Unavailable("server is draining; retry on another replica")
        if self._pending >= self.settings.max_queue_size:
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
        loop = asyncio.get_running_loop()
        item = _Item(request, loop.create_future(), rows, elements)
        gap_s, self._last_arrival_s = item.enqueued_s - self._last_arrival_s, item.enqueued_s
        # Company is coming when others are still queued or running as this one arrives
        # and arrivals are close: a sequential caller, however fast its round trip,
        # always finds the batcher empty and never waits (module doc).
        item.waits_for_company = (
            request.arrival.trickles_in
            and gap_s * 1e6 < self.settings.max_queue_delay_us
            and (self._pending > 0 or bool(self._in_flight))
        )
        key, solo = self._key(request, elements)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(solo)
        bucket.add(item)
        self._pending += 1
        self._idle.clear()
        self._arrival.set()
        if self.metrics is not None:
            self.metrics.enqueued(request.spec.name)
        if self.tracing is not None:
            self.tracing.queued(request.context, request.spec.name)
        # One timer per request answers 504 at its deadline if it is still queued; a
        # running request is answered whatever its deadline.
        timer = (
            None
            if request.deadline_s is None
            else loop.call_later(max(request.deadline_s - time.monotonic(), 0.0), self._deadline, item)
        )
        try:
            return await item.future
        except asyncio.CancelledError:
            # The client is gone (the await cancelled the future too, so a batch that
            # already runs it just drops the answer): a queued request never runs.
            if item.state == QUEUED:
                self._forget(item)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _deadline(self, item: _Item) -> None:
        if item.state == QUEUED:
            self._forget(item, self._expired(item.request))

    def _expired(self, request: OpRequest) -> DeadlineExceeded:
        waited = time.monotonic() - request.arrived_s
        return DeadlineExceeded(
            f"op {request.spec.name!r}: request waited {waited:.3f} s in the queue, past its "
            "deadline; it did not run"
        )

    def _forget(self, item: _Item, error: GradservError | None = None) -> None:
        """Take a queued item out: it will never run."""
        item.state = DONE
        if item.bucket is not None:
            item.bucket.discount(item)
        self._pending -= 1
        if error is not None and not item.future.done():
            item.future.set_exception(error)
        if self.metrics is not None:
            self.metrics.dequeued(item.request.spec.name)
        if self.tracing is not None:
            self.tracing.left_queue(item.request.context, "cancelled" if error is None else error.code)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._pending == 0 and not self._in_flight:
            self._idle.set()

    # -- dispatch -----------------------------------------------------------------

    def _is_full(self, bucket: _Bucket) -> bool:
        s = self.settings
        return bucket.solo or bucket.rows >= s.max_batch_rows or bucket.elements >= s.max_batch_elements

    def _next_ready(self, delay_s: float) -> tuple[Hashable, _Bucket] | float | None:
        """The oldest bucket that may go now (solo, full, its head has waited the queue
        delay, or no batch is running; anything while draining); else the seconds until
        the first one's delay runs out, or None when nothing is queued.

        Every bucket is looked at, not just the oldest: a bucket waiting for more
        arrivals must not hold back a full one or a solo request behind it.
        """
        now = time.monotonic()
        soonest: float | None = None
        for key in list(self._buckets):
            bucket = self._buckets[key]
            head = bucket.head()
            if head is None:
                del self._buckets[key]
                continue
            wait_s = head.enqueued_s + delay_s - now
            # An idle device takes work at once: waiting then only adds latency, and
            # batches grow anyway from what arrives while a batch runs (but see the
            # module doc for gRPC arrivals in a stream).
            idle = not self._in_flight and not head.waits_for_company
            if wait_s <= 0 or self._closed or idle or self._is_full(bucket):
                return key, bucket
            soonest = wait_s if soonest is None else min(soonest, wait_s)
        return soonest

    async def _dispatch_loop(self) -> None:
        delay_s = self.settings.max_queue_delay_us / 1e6
        while True:
            found = self._next_ready(delay_s)
            if not isinstance(found, tuple):
                # Nothing may go yet: sleep until an arrival (which may fill a bucket)
                # or until the oldest waiting bucket's delay runs out.
                self._check_idle()
                self._arrival.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrival.wait(), found)
                continue
            key, bucket = found
            await self._slots.acquire()
            items = self._take(key, bucket)
            if not items:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run_batch(items))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _take(self, key: Hashable, bucket: _Bucket) -> list[_Item]:
        items: list[_Item] = []
        rows = elements = 0
        now = time.monotonic()
        queue = bucket.items
        while queue:
            item = queue[0]
            if item.state != QUEUED:
                queue.popleft()
                continue
            if item.request.deadline_s is not None and now >= item.request.deadline_s:
                # Its own wait in submit() answers 504; just make sure it never runs.
                queue.popleft()
                self._forget(item, self._expired(item.request))
                continue
            if items and (
                rows + item.rows > self.settings.max_batch_rows
                or elements + item.elements > self.settings.max_batch_elements
            ):
                break
            queue.popleft()
            bucket.discount(item)
            item.state = RUNNING
            items.append(item)
            rows += item.rows
            elements += item.elements
        if not queue and self._buckets.get(key) is bucket:
            del self._buckets[key]
        self._pending -= len(items)
        if self.metrics is not None and items:
            self.metrics.dequeued(items[0].request.spec.name, len(items))
        return items

    async def _run_batch(self, items: list[_Item]) -> None:
        first = items[0].request
        started = time.monotonic()
        spans = (
            None
            if self.tracing is None
            else self.tracing.batch(
                first.spec.name, [i.request.context for i in items], sum(i.rows for i in items)
            )
        )
        try:
            outputs = await self.runner.run(
                first.spec,
                [i.request.tensors for i in items],
                first.params,
                frozenset(first.want),
                # A kernel run inline blocks the loop, and grpc.aio hands new calls to
                # the loop only while it waits: inline unary gRPC batches measured as
                # batches of one (about 1,000 req/s against 1,700 via the worker
                # thread; with the arrival rule above, still 0.6-0.9x). Stream messages
                # come on calls already open, and inline they skip the worker thread's
                # GIL contention with grpc.aio: 1.30-1.47x at c=64, 1.4-2.5x at c=16
                # (perf_analyzer --streaming, 3 A/B rounds; docs/benchmarks.md).
                allow_inline=all(i.request.arrival.may_run_inline for i in items),
            )
            if len(outputs) != len(items):
                raise InternalError(
                    f"op {first.spec.name!r}: {len(outputs)} answers for a batch of {len(items)}"
                )
            error: GradservError | None = None
        except GradservError as exc:
            error = exc
        except Exception:  # the executor maps errors; this is a last line of defence
            log.exception("batch of %s failed", first.spec.name)
            error = InternalError("internal error while computing")
        finally:
            self._slots.release()
            if spans is not None:
                spans.kernel_done()
        compute_s = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.batch(first.spec.name, len(items), sum(i.rows for i in items))
        for n, item in enumerate(items):
            item.state = DONE
            if self.metrics is not None:
                self.metrics.queued(item.request, started - item.enqueued_s, compute_s)
            if item.request.context is not None:  # for the request's access log line
                item.request.context.ran(started - item.enqueued_s, compute_s, len(items))
            if item.future.done():
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(outputs[n])
        if spans is not None:
            spans.end(None if error is None else error.code)
        self._check_idle_after(asyncio.current_task())

    def _check_idle_after(self, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            self._in_flight.discard(task)
        self._check_idle()
        # A finished batch may leave the device idle: let the dispatcher look again.
        self._arrival.set()
