"""DynamicBatcher, driven by events: a gated fake runner decides when batches finish.

The fake runner stands in for the device so that each test controls exactly when a
batch completes; the last tests use the real Executor and compare numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from gradserve.batching import DynamicBatcher
from gradserve.config import Settings
from gradserve.engine import AT_ONCE, GRPC_STREAM, GRPC_UNARY, Engine, OpRequest
from gradserve.errors import (
    DeadlineExceeded,
    GradservError,
    InternalError,
    InvalidInput,
    Overloaded,
    Unavailable,
)
from gradserve.executor import Executor
from gradserve.metrics import Metrics
from gradserve.ops import build_registry
from gradserve.ops.registry import OpSpec, Registry

TIMEOUT_S = 10.0  # a bound on every wait, never a synchronization tool
HUGE_DELAY_US = 10**9  # 1000 s: a batch only goes when full
# A solo request: it goes at once whatever the delay; tests hold the only batch slot
# with it (its runner call stays unreleased) so that other requests pile up.
HOLD = ("regularization", {"weight": torch.full((3,), -1.0)})


@dataclass
class Call:
    op: str
    tensors: list[Mapping[str, torch.Tensor]]
    params: Mapping[str, Any]
    want: frozenset[str]
    release: asyncio.Event = field(default_factory=asyncio.Event)
    allow_inline: bool = True


def echo(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return next(iter(tensors.values())) if tensors else torch.zeros(())


class GatedRunner:
    """A Runner whose batches finish only when the test releases them.

    Each answer (every wanted output) echoes the request's own first tensor, so a test can tell
    that every request got its own answer back.
    """

    def __init__(self, *, gated: bool = True) -> None:
        self.calls: list[Call] = []
        self._arrived: asyncio.Queue[Call] = asyncio.Queue()
        self.gated = gated
        self.fail: Callable[[Call], BaseException | None] = lambda call: None

    async def run(
        self,
        spec: OpSpec,
        tensors: Sequence[Mapping[str, torch.Tensor]],
        params: Mapping[str, Any],
        want: frozenset[str],
        *,
        allow_inline: bool = True,
    ) -> list[dict[str, torch.Tensor]]:
        call = Call(spec.name, list(tensors), params, want, allow_inline=allow_inline)
        self.calls.append(call)
        self._arrived.put_nowait(call)
        if self.gated:
            await call.release.wait()
        error = self.fail(call)
        if error is not None:
            raise error
        return [{name: echo(t) for name in want} for t in tensors]

    async def next_call(self) -> Call:
        return await asyncio.wait_for(self._arrived.get(), TIMEOUT_S)

    def no_call_waiting(self) -> bool:
        return self._arrived.empty()


@pytest.fixture(scope="module")
def registry() -> Registry:
    return build_registry()


Factory = Callable[..., Awaitable[tuple[DynamicBatcher, GatedRunner, Engine]]]


@pytest.fixture
async def make_batcher(registry: Registry) -> AsyncIterator[Factory]:
    made: list[DynamicBatcher] = []

    async def make(runner: Any = None, **overrides: Any) -> tuple[DynamicBatcher, Any, Engine]:
        settings = Settings(**{"max_queue_delay_us": 0, "max_batches_in_flight": 1, **overrides})
        runner = runner if runner is not None else GatedRunner()
        batcher = DynamicBatcher(settings, runner, Metrics())
        engine = Engine(settings, registry, batcher)
        engine.ready = True
        await batcher.start()
        made.append(batcher)
        return batcher, runner, engine

    yield make
    for batcher in made:
        for call in getattr(batcher.runner, "calls", []):
            call.release.set()
        await batcher.drain(TIMEOUT_S)


def x(*shape: int, value: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.full(shape, value, dtype=dtype)


def submit(engine: Engine, op: str, tensors: dict[str, torch.Tensor], **params: Any) -> asyncio.Task[Any]:
    grad = bool(params.pop("grad", False))
    request = engine.prepare(op, tensors, params, grad=grad)
    return asyncio.ensure_future(engine.submit(request))


async def gather(tasks: Sequence[asyncio.Task[Any]]) -> list[Any]:
    return list(await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT_S))


async def settle() -> None:
    """Let every ready task run until all are blocked (a scheduling yield, not a timer)."""
    for _ in range(20):
        await asyncio.sleep(0)


def values(call: Call) -> list[float]:
    """The marker value each request of a call carries (its first element)."""
    return [float(next(iter(t.values())).reshape(-1)[0]) for t in call.tensors]


# ------------------------------------------------------------------ batch limits


async def test_batches_form_up_to_max_batch_rows(make_batcher: Factory) -> None:
    # softmax is a "rows" op: rows are counted along dim 0 (2 per request here).
    _batcher, runner, engine = await make_batcher(max_batch_rows=4, max_queue_delay_us=HUGE_DELAY_US)
    rows = [3, 1, 2, 2, 1, 3]
    tasks = [submit(engine, "softmax", {"x": x(n, 3, value=i)}) for i, n in enumerate(rows)]
    sizes = []
    for _ in range(3):
        call = await runner.next_call()
        sizes.append([t["x"].shape[0] for t in call.tensors])
        call.release.set()
    results = await gather(tasks)
    assert sizes == [[3, 1], [2, 2], [1, 3]]
    # Each request got its own tensor back.
    for i, (n, result) in enumerate(zip(rows, results, strict=True)):
        assert torch.equal(result["y"], x(n, 3, value=i))


async def test_batches_form_up_to_max_batch_elements(make_batcher: Factory) -> None:
    batcher, runner, engine = await make_batcher(max_batch_elements=8, max_queue_delay_us=HUGE_DELAY_US)
    tasks = [submit(engine, "relu", {"x": x(4, value=i)}) for i in range(6)]
    for _ in range(3):
        call = await runner.next_call()
        assert [t["x"].numel() for t in call.tensors] == [4, 4]
        call.release.set()
    await gather(tasks)
    assert batcher.pending == 0


async def test_request_bigger_than_the_limits_runs_alone(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(max_batch_rows=2)
    task = submit(engine, "softmax", {"x": x(5, 3)})
    call = await runner.next_call()
    assert len(call.tensors) == 1
    call.release.set()
    await gather([task])


# ------------------------------------------------------------------ the clock


async def test_clock_starts_at_first_arrival_and_a_full_batch_goes_at_once(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(
        max_batch_rows=4, max_queue_delay_us=HUGE_DELAY_US, max_batches_in_flight=2
    )
    hold = submit(engine, *HOLD)  # the device is busy, so a new arrival may wait
    held = await runner.next_call()
    first = submit(engine, "relu", {"x": x(3, value=0)})
    await settle()
    assert runner.no_call_waiting()  # a slot is free, but the delay is huge: it waits for company
    rest = [submit(engine, "relu", {"x": x(3, value=i)}) for i in (1, 2, 3)]
    call = await runner.next_call()  # the batch filled: it went without waiting the delay
    assert values(call) == [0.0, 1.0, 2.0, 3.0]
    call.release.set()
    held.release.set()
    await gather([hold, first, *rest])


async def test_idle_device_takes_a_lone_request_at_once(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(max_queue_delay_us=HUGE_DELAY_US)
    task = submit(engine, "relu", {"x": x(3)})
    call = await runner.next_call()  # nothing running: waiting would only add latency
    assert len(call.tensors) == 1
    call.release.set()
    await gather([task])


def submit_grpc(engine: Engine, value: float) -> asyncio.Task[Any]:
    request = engine.prepare("relu", {"x": x(3, value=value)}, {}, transport="grpc", arrival=GRPC_UNARY)
    return asyncio.ensure_future(engine.submit(request))


async def test_grpc_arrivals_in_a_stream_wait_for_company_on_an_idle_device(make_batcher: Factory) -> None:
    # grpc.aio hands calls over one at a time: an idle device taking each at once ran
    # batches of one (module doc of batching.py).
    _batcher, runner, engine = await make_batcher(max_queue_delay_us=HUGE_DELAY_US, max_batch_rows=3)
    first = submit_grpc(engine, 1)
    call = await runner.next_call()  # the first of them still goes at once
    assert values(call) == [1.0]
    close = [submit_grpc(engine, 2), submit_grpc(engine, 3)]  # right behind it
    call.release.set()
    await gather([first])
    await settle()
    assert runner.no_call_waiting()  # idle, but they followed closely: they wait
    last = submit_grpc(engine, 4)
    call = await runner.next_call()  # the bucket filled: it goes
    assert values(call) == [2.0, 3.0, 4.0]
    call.release.set()
    await gather([*close, last])


async def test_a_sequential_grpc_caller_never_waits(make_batcher: Factory) -> None:
    # However fast its round trip (arrivals far closer than the delay), a caller that
    # waits for each answer finds the batcher empty: nothing to wait for.
    _batcher, runner, engine = await make_batcher(max_queue_delay_us=HUGE_DELAY_US)
    for value in (1.0, 2.0, 3.0):
        task = submit_grpc(engine, value)
        await settle()  # scheduling yields only
        assert not runner.no_call_waiting()  # it went without waiting the delay
        call = await runner.next_call()
        assert values(call) == [value]
        call.release.set()
        await gather([task])


async def test_only_stream_messages_of_grpc_may_run_inline(make_batcher: Factory) -> None:
    # Inline unary gRPC batches starve grpc.aio of new calls; stream messages come on
    # open calls and run faster inline (batching.py, where allow_inline is set).
    _batcher, runner, engine = await make_batcher()
    for arrival, inline in [(AT_ONCE, True), (GRPC_UNARY, False), (GRPC_STREAM, True)]:
        request = engine.prepare("relu", {"x": x(3)}, {}, arrival=arrival)
        task = asyncio.ensure_future(engine.submit(request))
        call = await runner.next_call()
        assert call.allow_inline is inline, arrival
        call.release.set()
        await gather([task])
    # A batch mixing both kinds of gRPC request keeps the unary call's rule.
    _batcher, runner, engine = await make_batcher(max_queue_delay_us=HUGE_DELAY_US, max_batch_rows=6)
    tasks = [
        asyncio.ensure_future(
            engine.submit(engine.prepare("relu", {"x": x(3)}, {}, transport="grpc", arrival=arrival))
        )
        for arrival in (GRPC_STREAM, GRPC_UNARY)
    ]
    call = await runner.next_call()
    assert len(call.tensors) == 2 and call.allow_inline is False
    call.release.set()
    await gather(tasks)


async def test_a_finished_batch_wakes_a_waiting_bucket(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(max_queue_delay_us=HUGE_DELAY_US)
    hold = submit(engine, *HOLD)
    held = await runner.next_call()
    waiting = submit(engine, "relu", {"x": x(3, value=4)})
    await settle()
    assert runner.no_call_waiting()
    held.release.set()  # the device turns idle: the waiting request goes now
    call = await runner.next_call()
    assert values(call) == [4.0]
    call.release.set()
    await gather([hold, waiting])


async def test_zero_delay_sends_a_lone_request_at_once(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(max_queue_delay_us=0)
    task = submit(engine, "relu", {"x": x(3)})
    call = await runner.next_call()
    assert len(call.tensors) == 1
    call.release.set()
    await gather([task])


async def test_a_waiting_bucket_does_not_hold_back_a_full_or_solo_one(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(
        max_batch_rows=2, max_queue_delay_us=HUGE_DELAY_US, max_batches_in_flight=4
    )
    hold = submit(engine, *HOLD)  # keeps the device busy throughout
    held = await runner.next_call()
    waiting = submit(engine, "sigmoid", {"x": x(3, value=9)})  # alone: waits for company
    solo = submit(engine, "regularization", {"weight": x(3, value=7)})
    call = await runner.next_call()
    assert call.op == "regularization"
    call.release.set()
    full = [submit(engine, "relu", {"x": x(3, value=i)}) for i in (1, 2)]
    call = await runner.next_call()
    assert (call.op, values(call)) == ("relu", [1.0, 2.0])
    call.release.set()
    await gather([solo, *full])
    assert not waiting.done()
    # Its company arrives: now it goes.
    partner = submit(engine, "sigmoid", {"x": x(3, value=8)})
    call = await runner.next_call()
    assert (call.op, values(call)) == ("sigmoid", [9.0, 8.0])
    call.release.set()
    held.release.set()
    await gather([hold, waiting, partner])


# ------------------------------------------------------------------ errors


async def test_error_in_a_batch_reaches_exactly_its_requests(make_batcher: Factory) -> None:
    batcher, runner, engine = await make_batcher(max_batches_in_flight=1)
    runner.gated = False
    runner.fail = lambda call: InvalidInput("bad batch") if call.op == "sigmoid" else None
    blocker = GatedRunner()
    # Hold the only slot so the others pile up and batch.
    batcher.runner = blocker
    hold = submit(engine, *HOLD)
    held = await blocker.next_call()
    batcher.runner = runner
    bad = [submit(engine, "sigmoid", {"x": x(3, value=i)}) for i in range(3)]
    good = [submit(engine, "relu", {"x": x(3, value=i)}) for i in range(3)]
    await settle()
    held.release.set()
    bad_results = await gather(bad)
    good_results = await gather(good)
    await gather([hold])
    assert [len(c.tensors) for c in runner.calls] == [3, 3]
    assert all(isinstance(r, InvalidInput) for r in bad_results)
    for i, r in enumerate(good_results):
        assert torch.equal(r["y"], x(3, value=i))


async def test_unexpected_runner_error_becomes_internal_error(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher()
    runner.gated = False
    runner.fail = lambda call: RuntimeError("kernel exploded")
    [result] = await gather([submit(engine, "relu", {"x": x(3)})])
    assert isinstance(result, InternalError)
    assert "exploded" not in result.message
    # The batcher survives: the next request is served.
    runner.fail = lambda call: None
    [ok] = await gather([submit(engine, "relu", {"x": x(3)})])
    assert not isinstance(ok, BaseException)


# ------------------------------------------------------------------ cancel, queue, deadline


async def test_cancelled_requests_never_run(make_batcher: Factory) -> None:
    batcher, runner, engine = await make_batcher(max_batches_in_flight=1)
    hold = submit(engine, *HOLD)
    held = await runner.next_call()
    queued = [submit(engine, "relu", {"x": x(3, value=i)}) for i in range(4)]
    await settle()
    assert batcher.pending == 4
    queued[1].cancel()
    queued[3].cancel()
    await settle()
    assert batcher.pending == 2
    held.release.set()
    call = await runner.next_call()
    assert values(call) == [0.0, 2.0]
    call.release.set()
    results = await gather(queued)
    assert isinstance(results[1], asyncio.CancelledError)
    assert isinstance(results[3], asyncio.CancelledError)
    assert len(runner.calls) == 2
    await gather([hold])
    assert batcher.pending == 0


async def test_cancelled_while_running_does_not_disturb_its_batch(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(max_batch_rows=3, max_queue_delay_us=HUGE_DELAY_US)
    tasks = [submit(engine, "relu", {"x": x(3, value=i)}) for i in range(3)]
    call = await runner.next_call()
    tasks[0].cancel()
    call.release.set()
    results = await gather(tasks)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [float(r["y"][0]) for r in results[1:]] == [1.0, 2.0]


async def test_full_queue_refuses_with_overloaded(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(max_batches_in_flight=1, max_queue_size=2)
    hold = submit(engine, *HOLD)
    held = await runner.next_call()  # running: no longer counted as waiting
    queued = [submit(engine, "relu", {"x": x(3)}) for _ in range(2)]
    await settle()
    with pytest.raises(Overloaded) as refused:
        await engine.submit(engine.prepare("relu", {"x": x(3)}, {}))
    assert refused.value.http_status == 429
    held.release.set()
    call = await runner.next_call()
    assert len(call.tensors) == 2
    call.release.set()
    await gather([hold, *queued])


async def test_expired_deadline_answers_504_and_never_runs(make_batcher: Factory) -> None:
    batcher, runner, engine = await make_batcher(max_batches_in_flight=1)
    hold = submit(engine, *HOLD)
    held = await runner.next_call()
    late = engine.prepare("relu", {"x": x(3, value=5)}, {}, timeout_s=0.05)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as expired:
        await asyncio.wait_for(engine.submit(late), TIMEOUT_S)
    assert expired.value.http_status == 504
    assert time.monotonic() - started < TIMEOUT_S / 2
    assert batcher.pending == 0
    held.release.set()
    await gather([hold])
    # A later request runs alone: the expired one never reached the runner.
    after = submit(engine, "relu", {"x": x(3, value=1)})
    call = await runner.next_call()
    assert values(call) == [1.0]
    call.release.set()
    await gather([after])
    assert [c.op for c in runner.calls] == ["regularization", "relu"]


async def test_deadline_passed_before_dispatch_never_runs(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(max_batches_in_flight=1)
    hold = submit(engine, *HOLD)
    held = await runner.next_call()
    past = engine.prepare("relu", {"x": x(3, value=5)}, {})
    past.deadline_s = time.monotonic() - 1.0
    live = submit(engine, "relu", {"x": x(3, value=1)})
    results = await asyncio.gather(engine.submit(past), return_exceptions=True)
    assert isinstance(results[0], DeadlineExceeded)
    held.release.set()
    call = await runner.next_call()
    assert values(call) == [1.0]
    call.release.set()
    await gather([hold, live])


# ------------------------------------------------------------------ grouping


def _signature(call: Call) -> set[Any]:
    return {
        (
            tuple((n, t.dtype, tuple(t.shape[1:])) for n, t in tensors.items())
            if call.op == "softmax"
            else None,
            tuple((n, t.dtype) for n, t in tensors.items()),
        )
        for tensors in call.tensors
    }


async def test_different_params_dtypes_and_trailing_dims_never_share_a_batch(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(max_batches_in_flight=1)
    hold = submit(engine, *HOLD)
    held = await runner.next_call()
    kinds: list[tuple[str, dict[str, torch.Tensor], dict[str, Any]]] = [
        ("leaky_relu", {"x": x(3)}, {"negative_slope": 0.1}),
        ("leaky_relu", {"x": x(5)}, {"negative_slope": 0.2}),
        ("leaky_relu", {"x": x(2, dtype=torch.float64)}, {"negative_slope": 0.1}),
        ("leaky_relu", {"x": x(4)}, {"negative_slope": 0.1, "grad": True}),
        ("softmax", {"x": x(2, 3)}, {}),
        ("softmax", {"x": x(2, 4)}, {}),
        ("softmax", {"x": x(2, 3, 1)}, {}),
        ("softmax", {"x": x(1, 3, dtype=torch.bfloat16)}, {}),
        ("softmax", {"x": x(3, 3)}, {"dim": 1}),
    ]
    tasks = [submit(engine, op, tensors, **dict(params)) for _ in range(3) for op, tensors, params in kinds]
    await settle()
    held.release.set()
    calls = []
    for _ in kinds:
        call = await runner.next_call()
        calls.append(call)
        call.release.set()
    await gather([hold, *tasks])
    assert len(runner.calls) == 1 + len(kinds)
    seen = set()
    for call in calls:
        # Three of each kind arrived together, and they (only they) share a batch.
        assert len(call.tensors) == 3
        assert len(_signature(call)) == 1
        key = (call.op, tuple(sorted(call.params.items())), call.want, frozenset(_signature(call)))
        assert key not in seen
        seen.add(key)


async def test_solo_ops_never_batch(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(max_batches_in_flight=1, max_queue_delay_us=HUGE_DELAY_US)
    hold = submit(engine, *HOLD)
    held = await runner.next_call()
    tasks = [
        *(submit(engine, "prelu", {"x": x(2, 3, value=i)}) for i in range(3)),
        *(submit(engine, "regularization", {"weight": x(4, value=i)}) for i in range(3)),
        *(submit(engine, "normal", {}, shape=[3, 2], seed=i) for i in range(3)),
        # softmax over dim 0 would mix requests' rows: it runs alone too.
        *(submit(engine, "softmax", {"x": x(2, 3, value=i)}, dim=0) for i in range(3)),
        # a loss with shared class weights, too.
        *(
            submit(
                engine, "cross_entropy", {"input": x(2, 3), "target": torch.tensor([0, 1]), "weight": x(3)}
            )
            for _ in range(3)
        ),
    ]
    await settle()
    held.release.set()
    for _ in range(len(tasks)):
        call = await runner.next_call()
        assert len(call.tensors) == 1, call.op
        call.release.set()
    await gather([hold, *tasks])


async def test_large_request_runs_alone(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(
        max_batches_in_flight=1, large_request_elements=8, max_queue_delay_us=HUGE_DELAY_US
    )
    hold = submit(engine, *HOLD)
    held = await runner.next_call()
    tasks = [submit(engine, "relu", {"x": x(9, value=i)}) for i in range(2)]
    await settle()
    held.release.set()
    for _ in range(2):
        call = await runner.next_call()
        assert len(call.tensors) == 1
        call.release.set()
    await gather([hold, *tasks])


async def test_batching_off_runs_every_request_alone(make_batcher: Factory) -> None:
    _batcher, runner, engine = await make_batcher(batching=False, max_batches_in_flight=1)
    hold = submit(engine, *HOLD)
    held = await runner.next_call()
    tasks = [submit(engine, "relu", {"x": x(3, value=i)}) for i in range(3)]
    await settle()
    held.release.set()
    for i in range(3):
        call = await runner.next_call()
        assert values(call) == [float(i)]  # alone, and in arrival order
        call.release.set()
    await gather([hold, *tasks])


# ------------------------------------------------------------------ drain


async def test_drain_finishes_queued_work_and_refuses_new(make_batcher: Factory) -> None:
    batcher, runner, engine = await make_batcher(max_batches_in_flight=1, max_queue_delay_us=HUGE_DELAY_US)
    hold = submit(engine, *HOLD)
    held = await runner.next_call()
    queued = [submit(engine, "relu", {"x": x(3, value=i)}) for i in range(2)]
    await settle()
    drain = asyncio.ensure_future(batcher.drain(TIMEOUT_S))
    await settle()
    with pytest.raises(Unavailable):
        await batcher.submit(engine.prepare("relu", {"x": x(3)}, {}))
    held.release.set()
    # Draining: the waiting bucket goes now, not after the (huge) delay.
    call = await runner.next_call()
    assert values(call) == [0.0, 1.0]
    call.release.set()
    await asyncio.wait_for(drain, TIMEOUT_S)
    results = await gather([hold, *queued])
    assert not any(isinstance(r, BaseException) for r in results)


# ------------------------------------------------------------------ the real executor


def _mixed_requests() -> list[tuple[str, dict[str, torch.Tensor], dict[str, Any]]]:
    g = torch.Generator().manual_seed(4)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype) * 3

    out: list[tuple[str, dict[str, torch.Tensor], dict[str, Any]]] = []
    for i in range(12):
        n = 1 + i % 5
        dtype = (torch.float32, torch.float64, torch.bfloat16)[i % 3]
        out += [
            ("relu", {"x": randn(n, 7, dtype=dtype)}, {"grad": True}),
            (
                "gelu",
                {"x": randn(n + 3, dtype=dtype)},
                {"approximate": ("none", "tanh")[i % 2], "grad": True},
            ),
            ("sigmoid", {"x": randn(n, 2, 3)}, {"grad": True}),
            ("softmax", {"x": randn(n, 6)}, {}),
            ("log_softmax", {"x": randn(n, 6, dtype=dtype)}, {"grad": True}),
            (
                "cross_entropy",
                {"input": randn(n, 5), "target": torch.randint(0, 5, (n,), generator=g)},
                {"reduction": ("mean", "sum", "none")[i % 3], "grad": True},
            ),
            (
                "mse",
                {"input": randn(n, 4), "target": randn(n, 4)},
                {"reduction": ("mean", "sum")[i % 2], "grad": True},
            ),
            (
                "hinge",
                {"input": randn(n, 5), "target": torch.randint(0, 5, (n,), generator=g)},
                {"grad": True},
            ),
        ]
    return out


async def test_real_executor_batched_answers_equal_lone_answers(registry: Registry) -> None:
    settings = Settings(max_queue_delay_us=2000, max_batches_in_flight=1, torch_threads=1)
    executor = Executor(settings)
    metrics = Metrics()
    batcher = DynamicBatcher(settings, executor, metrics)
    engine = Engine(settings, registry, batcher)
    engine.ready = True
    await batcher.start()
    try:
        requests = _mixed_requests()
        prepared: list[OpRequest] = []
        for op, tensors, params in requests:
            params = dict(params)
            grad = bool(params.pop("grad", False))
            prepared.append(engine.prepare(op, tensors, params, grad=grad))
        batched = await asyncio.wait_for(asyncio.gather(*(engine.submit(r) for r in prepared)), TIMEOUT_S * 3)
    finally:
        await batcher.drain(TIMEOUT_S)
        executor.shutdown()
    sizes = next(iter(metrics.batch_requests.collect())).samples
    batch_count = sum(s.value for s in sizes if s.name.endswith("_count"))
    assert batch_count < len(prepared)  # batching happened
    for request, answer in zip(prepared, batched, strict=True):
        [alone] = executor.run_sync(request.spec, [request.tensors], request.params, frozenset(request.want))
        assert answer.keys() == set(request.want)
        for name in request.want:
            assert answer[name].dtype == alone[name].dtype
            assert torch.equal(answer[name], alone[name]), (request.spec.name, name)


def test_gradserve_errors_keep_their_status() -> None:
    # The statuses the batcher's errors map to (API.md section 4).
    assert Overloaded("x").http_status == 429
    assert DeadlineExceeded("x").http_status == 504
    assert Unavailable("x").http_status == 503
    assert issubclass(Overloaded, GradservError)
