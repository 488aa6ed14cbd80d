"""The engine: the one entry point every transport calls.

Flow position: transport -> codec -> **engine** -> validation -> scheduler (batcher)
-> executor. A transport hands over decoded tensors and raw params; the engine looks
up the op, validates, resolves the wanted outputs and submits the request to the
scheduler. Transports never import kernels, the batcher or the executor.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from gradserve.config import Settings
from gradserve.errors import GradservError, RequestTooLarge, Unavailable
from gradserve.ops.registry import Family, OpSpec, Registry
from gradserve.tracing import CURRENT, RequestContext

if TYPE_CHECKING:
    from gradserve.metrics import Metrics
from gradserve.validation import (
    Limits,
    resolve_outputs,
    unify_float_dtypes,
    validate_params,
    validate_tensors,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    """How a transport's requests reach the batcher. The batcher's rules read this,
    never a transport's name (batching.py's module doc has the figures behind both)."""

    # Under load, calls are handed to the loop one per trip (grpc.aio's completion
    # queue): a request that follows closely behind others waits for company even on
    # an idle device.
    trickles_in: bool = False
    # A small batch may run inline on the loop thread. Unary gRPC's may not: inline
    # kernels starve grpc.aio of new calls.
    may_run_inline: bool = True


AT_ONCE = Arrival()  # HTTP (native, V2, lab plots), warm-up and tests
GRPC_UNARY = Arrival(trickles_in=True, may_run_inline=False)
GRPC_STREAM = Arrival(trickles_in=True, may_run_inline=True)  # messages on an open call


@dataclass
class OpRequest:
    """One validated request, as the scheduler and executor see it."""

    spec: OpSpec
    tensors: dict[str, torch.Tensor]
    params: dict[str, Any]
    want: tuple[str, ...]
    transport: str = "rest"
    # Monotonic times, set by the engine on arrival.
    arrived_s: float = field(default_factory=time.monotonic)
    deadline_s: float | None = None
    # The call it belongs to (tracing.py): the batcher records its queue and compute
    # time there, and hangs its spans off it. None outside a transport (warm-up, tests).
    context: RequestContext | None = None
    arrival: Arrival = AT_ONCE


class Runner(Protocol):
    """What runs kernels (the executor)."""

    async def run(
        self,
        spec: OpSpec,
        tensors: Sequence[Mapping[str, torch.Tensor]],
        params: Mapping[str, Any],
        want: frozenset[str],
        *,
        allow_inline: bool = True,
    ) -> list[dict[str, torch.Tensor]]: ...


class Scheduler(Protocol):
    """What the engine needs from the batcher (batching.py)."""

    async def submit(self, request: OpRequest) -> dict[str, torch.Tensor]: ...

    async def start(self) -> None: ...

    async def drain(self, timeout_s: float) -> None: ...


class Engine:
    """Validates and submits requests; tracks readiness and draining."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        scheduler: Scheduler,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.scheduler = scheduler
        self.metrics = metrics
        self.ready = False
        # Run, in order, just before ``ready`` turns True (gRPC health: SERVING in the
        # same step, so no probe sees /readyz 200 beside a NOT_SERVING health check).
        self._before_ready: list[Callable[[], Awaitable[None]]] = []
        self.limits = Limits(settings.max_tensor_elements, settings.max_tensor_dims)
        # Two steps of a stop: ``draining`` turns readiness off (SIGTERM seen) while work is
        # still taken for the drain delay; ``refusing_work`` then answers new work 503.
        self.draining = False
        self.refusing_work = False

    async def when_ready(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` just before the engine turns ready, or now if it already is."""
        if self.ready:
            await hook()
        else:
            self._before_ready.append(hook)

    def prepare(
        self,
        op: str,
        tensors: Mapping[str, torch.Tensor],
        params: Mapping[str, Any],
        *,
        outputs: Sequence[str] | None = None,
        grad: bool = False,
        family: Family | None = None,
        transport: str = "rest",
        lenient: bool = False,
        timeout_s: float | None = None,
        arrival: Arrival = AT_ONCE,
    ) -> OpRequest:
        """Look up and validate; raises the 4xx errors of API.md section 4.

        ``lenient`` (V2 and gRPC) accepts numbers spelled as strings and ignores unknown
        params, as the Open Inference Protocol asks; the native API refuses both.
        """
        spec = self.registry.get(op, family)
        checked_params = validate_params(
            spec, params, lenient=lenient, ignore_unknown=lenient, limits=self.limits
        )
        checked = validate_tensors(spec, tensors, limits=self.limits, unify=False)
        if spec.work is not None:
            self._check_work(spec, checked_params)
        if spec.check is not None:
            # On the values as sent: a float64 target of 1.000000001 is outside bce's
            # [0, 1] even though a float32 input would round it to 1.
            spec.check(checked, checked_params)
        checked = unify_float_dtypes(checked)
        if spec.intermediate is not None:
            what, count = spec.intermediate(checked, checked_params)
            if count > self.limits.max_elements:
                raise RequestTooLarge(
                    f"op {spec.name!r}: these inputs make {what} of {count} elements, over the "
                    f"limit of {self.limits.max_elements} per tensor"
                )
        want = resolve_outputs(spec, checked, outputs, grad)
        now = time.monotonic()
        timeout = self.settings.request_timeout_s if timeout_s is None else timeout_s
        return OpRequest(
            spec, checked, checked_params, want, transport, now, now + timeout, CURRENT.get(), arrival
        )

    def _check_work(self, spec: OpSpec, params: Mapping[str, Any]) -> None:
        """413 for an op whose params ask for more compute than ``lab_max_work``: no
        tensor of its request is large, so the element limits cannot bound it."""
        assert spec.work is not None
        cost, limit = spec.work.of(params), self.settings.lab_max_work
        if cost > limit:
            raise RequestTooLarge(
                f"op {spec.name!r}: {spec.work.formula} = {cost:,} is over this server's limit of "
                f"{limit:,} (setting lab_max_work)",
                code="work_too_large",
            )

    async def submit(self, request: OpRequest) -> dict[str, torch.Tensor]:
        if self.refusing_work:
            raise Unavailable("server is draining; retry on another replica")
        if not self.ready:
            raise Unavailable("server is warming up; retry shortly")
        outputs = await self.scheduler.submit(request)
        return {name: outputs[name] for name in request.want}

    async def infer(
        self,
        op: str,
        tensors: Mapping[str, torch.Tensor],
        params: Mapping[str, Any],
        *,
        transport: str = "rest",
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """prepare + submit: the whole path for one request, counted in the metrics."""
        started = time.monotonic()
        outcome = "success"
        try:
            return await self.submit(self.prepare(op, tensors, params, transport=transport, **kwargs))
        except GradservError as exc:
            outcome = exc.kind.code
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            # Only known op names become label values: garbage names must not grow
            # the metric's cardinality.
            known = op in self.registry
            if self.metrics is not None and known:
                self.metrics.answered(op, transport, outcome, time.monotonic() - started)
            ctx = CURRENT.get()
            if ctx is not None:  # the access log line and the call's span
                ctx.answered(op if known else "(unknown)", outcome)

    async def warm_up(self, runner: Runner) -> None:
        """Run every op once (with and without gradients) on the device, then turn ready."""
        from gradserve.warmup import example

        for spec in self.registry:
            tensors, params = example(spec)
            for grad in (False, True):
                try:
                    req = self.prepare(spec.name, tensors, params, grad=grad)
                    await runner.run(spec, [req.tensors], req.params, frozenset(req.want))
                except GradservError as exc:
                    # Limits set below the examples' sizes: that op just stays cold.
                    log.warning("warm-up of %s skipped: %s", spec.name, exc.message)
        # Everything built so far (modules, the registry, torch's state) lives as long
        # as the process: move it out of the collector's sight, so the full
        # collections that request garbage triggers do not rescan it (they showed as
        # ~100 ms pauses in p99 latency under load).
        gc.collect()
        gc.freeze()
        for hook in self._before_ready:
            await hook()
        self.ready = True
        log.info("warmed %d ops; ready", len(self.registry))
