"""Request ids and traces: the one place a request's identity, timings and spans live.

Flow position: the transport's entry (rest/gate.py for HTTP, grpc/calls.py for gRPC)
makes a ``RequestContext`` and sets it as ``CURRENT`` -> the engine reads it into the
``OpRequest`` and records the op and its outcome -> the batcher records queue and
compute time and the batch size, and starts the queue, batch and kernel spans -> the
transport's exit puts the id on the answer and writes the access log line (logs.py).

- **Request ids**: a client's ``X-Request-ID`` (HTTP header or gRPC metadata) is kept
  when it is 1-128 characters of ``A-Z a-z 0-9 . _ : / + = @ ~ -`` (nothing that could
  break a log line or a header); otherwise, or when absent, one is generated: 32 hex
  digits of ``os.urandom``, as random as a uuid4 and cheaper to make.
- **Traces** (OpenTelemetry, off by default: ``otel_exporter``): a SERVER span per call
  (the transport span; W3C ``traceparent`` continues a caller's trace) -> a
  ``gradserve.queue`` span from submit to the start of the request's batch -> the
  ``gradserve.batch`` span, one per kernel call and shared by the requests in it, so it
  is the root of a trace of its own, with a link to each request's queue span (and each
  queue span a link back) -> its ``gradserve.kernel`` child around the executor call.
  Every span carries ``gradserve.request_id`` (the batch's links carry each request's).
- **Zero cost when off**: nothing of OpenTelemetry is imported, ``Runtime.tracing`` is
  None, and each hook is one ``is None`` test. The context itself (an id, a few floats)
  is always made: the id and the access log line are not optional.

The provider is built here and handed down (no global tracer provider), so two servers
in one process (tests) trace apart.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from gradserve import __version__
from gradserve.config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

#: The header (HTTP) and metadata key (gRPC, trailing on the answer) of the request id.
REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=@~-]{1,128}")
_VALID_ID_BYTES = re.compile(rb"[A-Za-z0-9._:/+=@~-]{1,128}")

# Span attribute names of our own (OpenTelemetry's conventions have none for these).
ATTR_REQUEST_ID = "gradserve.request_id"
ATTR_OP = "gradserve.op"


def new_request_id() -> str:
    return os.urandom(16).hex()


def request_id(given: bytes | str | None) -> str:
    """The client's id when it is safe to echo and log, else a fresh one."""
    if given is None:
        return new_request_id()
    if isinstance(given, bytes):
        if _VALID_ID_BYTES.fullmatch(given):
            return given.decode("ascii")
    elif _VALID_ID.fullmatch(given):
        return given
    return new_request_id()


class RequestContext:
    """One call, from its transport's entry to its answer: what the access log line and
    the spans say about it. The engine and the batcher fill in what only they know."""

    __slots__ = (
        "batch_size",
        "compute_s",
        "op",
        "outcome",
        "queue_s",
        "queue_span",
        "request_id",
        "span",
        "started_s",
        "transport",
    )

    def __init__(self, request_id: str, transport: str, started_s: float | None = None) -> None:
        self.request_id = request_id
        self.transport = transport
        #: time.perf_counter() at the transport's entry.
        self.started_s = time.perf_counter() if started_s is None else started_s
        self.op: str | None = None
        #: The engine's outcome: "success" or the error code (queue_full, invalid_input...).
        self.outcome: str | None = None
        # Summed over the engine calls of the request (a lab plot makes several).
        self.queue_s: float | None = None
        self.compute_s: float | None = None
        self.batch_size: int | None = None
        self.span: Span | None = None
        self.queue_span: Span | None = None

    def ran(self, queue_s: float, compute_s: float, batch_size: int) -> None:
        """The batcher's report: this request waited ``queue_s`` and its batch of
        ``batch_size`` requests computed for ``compute_s``."""
        self.queue_s = queue_s + (self.queue_s or 0.0)
        self.compute_s = compute_s + (self.compute_s or 0.0)
        self.batch_size = batch_size

    def answered(self, op: str, outcome: str) -> None:
        """The engine's report: ``op`` answered with ``outcome``."""
        if self.op is None:
            self.op = op
            if self.span is not None:
                self.span.set_attribute(ATTR_OP, op)
        self.outcome = outcome


#: The call being served by the current task (set by the transports' entry).
CURRENT: ContextVar[RequestContext | None] = ContextVar("gradserve_request", default=None)


def current_request_id() -> str | None:
    ctx = CURRENT.get()
    return None if ctx is None else ctx.request_id


class Tracing:
    """OpenTelemetry spans for the request path; exists only when tracing is on."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("gradserve", __version__)
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._server_kind = trace.SpanKind.SERVER
        self._error = trace.Status(trace.StatusCode.ERROR)

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing | None:
        """None when ``otel_exporter`` is none (nothing of OpenTelemetry is imported)."""
        if settings.otel_exporter == "none":
            return None
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        exporter: SpanExporter
        if settings.otel_exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise RuntimeError(
                    "otel_exporter=otlp needs the OTLP exporter: pip install 'gradserve[otlp]'"
                ) from exc
            # Endpoint, headers, TLS and timeout come from the standard environment
            # (OTEL_EXPORTER_OTLP_ENDPOINT, ..._HEADERS, ..._INSECURE, ..._TIMEOUT).
            exporter = OTLPSpanExporter()
        # Batched export on the processor's own thread: the event loop never waits on
        # stdout or the collector.
        return cls(_provider(BatchSpanProcessor(exporter)))

    @classmethod
    def with_exporter(cls, exporter: SpanExporter) -> Tracing:
        """Spans exported synchronously as each ends (the in-memory exporter of tests)."""
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        return cls(_provider(SimpleSpanProcessor(exporter)))

    def shutdown(self) -> None:
        """Flush and stop the exporter (at the end of ``gradserve serve``)."""
        self.provider.shutdown()

    # -- the transport span -------------------------------------------------------------

    def start_call(
        self, ctx: RequestContext, name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]
    ) -> None:
        """The SERVER span of one call; ``carrier`` holds the caller's ``traceparent``
        and ``tracestate``, if any, whose trace the span joins."""
        parent = self._propagator.extract(carrier) if carrier else None
        # Attributes given at the start, not set one by one: each set takes the span's lock.
        ctx.span = self.tracer.start_span(
            name,
            context=parent,
            kind=self._server_kind,
            attributes={ATTR_REQUEST_ID: ctx.request_id, **attributes},
            start_time=_ns_ago(ctx.started_s),
        )

    def end_call(self, ctx: RequestContext, attributes: Mapping[str, Any], failed: bool) -> None:
        span = ctx.span
        if span is None:
            return
        span.set_attributes(attributes)
        if failed:
            span.set_status(self._error)
        span.end()

    # -- the batcher's spans ---------------------------------------------------------------

    def queued(self, ctx: RequestContext | None, op: str) -> None:
        """A request entered the batcher's queue (a child of its call's span)."""
        if ctx is None or ctx.span is None:
            return
        parent = self._trace.set_span_in_context(ctx.span)
        ctx.queue_span = self.tracer.start_span(
            "gradserve.queue", context=parent, attributes={ATTR_REQUEST_ID: ctx.request_id, ATTR_OP: op}
        )

    def left_queue(self, ctx: RequestContext | None, outcome: str) -> None:
        """A queued request will never run (deadline, cancelled, drained)."""
        if ctx is None or ctx.queue_span is None:
            return
        span, ctx.queue_span = ctx.queue_span, None
        span.set_attribute("gradserve.outcome", outcome)
        span.end()

    def batch(self, op: str, contexts: Sequence[RequestContext | None], rows: int) -> BatchSpans:
        """The spans of one kernel call, started now. The batch span is the root of a
        trace of its own, linked to the queue span of each request in it; each of those
        ends now, with a link back. Its kernel span (a child) covers the executor call."""
        from opentelemetry.trace import Link

        queued = [c for c in contexts if c is not None and c.queue_span is not None]
        links = [
            Link(c.queue_span.get_span_context(), {ATTR_REQUEST_ID: c.request_id})
            for c in queued
            if c.queue_span is not None
        ]
        span = self.tracer.start_span(
            "gradserve.batch",
            links=links,
            attributes={
                ATTR_OP: op,
                "gradserve.batch.requests": len(contexts),
                "gradserve.batch.rows": rows,
                "gradserve.batch.request_ids": [c.request_id for c in queued],
            },
        )
        batch_context = span.get_span_context()
        for ctx in queued:
            queue_span, ctx.queue_span = ctx.queue_span, None
            if queue_span is not None:
                queue_span.add_link(batch_context)
                queue_span.end()
        kernel = self.tracer.start_span(
            "gradserve.kernel", context=self._trace.set_span_in_context(span), attributes={ATTR_OP: op}
        )
        return BatchSpans(span, kernel, self._error)


class BatchSpans:
    """A batch span and its kernel span (``Tracing.batch``)."""

    __slots__ = ("_error", "batch", "kernel")

    def __init__(self, batch: Span, kernel: Span, error_status: Any) -> None:
        self.batch, self.kernel, self._error = batch, kernel, error_status

    def kernel_done(self) -> None:
        """The executor's call returned (or raised)."""
        self.kernel.end()

    def end(self, error: str | None) -> None:
        """Every request of the batch has its answer; ``error``: the batch's error code."""
        if error is not None:
            self.batch.set_attribute("gradserve.outcome", error)
            self.batch.set_status(self._error)
        self.batch.end()


def _provider(processor: Any) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, but what it
    # is given wins over them: the name is only a default under the environment's.
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "gradserve"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    return provider


def _ns_ago(perf_counter_s: float) -> int:
    """Wall-clock nanoseconds of a past ``time.perf_counter()`` reading (spans take
    wall-clock start times; the entry was timed on the monotonic counter)."""
    return time.time_ns() - int((time.perf_counter() - perf_counter_s) * 1e9)


def carrier_from(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The W3C trace-context entries of headers or metadata, for ``start_call``."""
    return {k: v for k, v in pairs if k in ("traceparent", "tracestate")}
