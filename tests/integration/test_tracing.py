"""OpenTelemetry spans, with the SDK's in-memory exporter: one batched request followed
from its transport span to the kernel, over HTTP and gRPC; a caller's trace continued;
nothing of the SDK loaded when tracing is off. Then real processes: the console
exporter, and OTLP to a collector run by the test."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gradserve.config import Settings
from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc
from gradserve.grpc.server import GrpcServer
from gradserve.rest.app import create_app
from gradserve.runtime import Runtime
from gradserve.tracing import Tracing
from tests.conftest import ROOT, ServerProcess, free_port

# Batches form: every batch goes to the compute thread (none inline), one at a time, so
# requests arriving while one runs queue up together behind it.
BATCHING = {"inline_below_elements": 0, "max_batches_in_flight": 1, "max_queue_delay_us": 20_000}


@pytest.fixture
async def traced() -> AsyncIterator[tuple[httpx.AsyncClient, grpc.aio.Channel, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    settings = Settings(grpc_port=0, host="127.0.0.1", device="cpu", **BATCHING)
    runtime = Runtime(settings, tracing=Tracing.with_exporter(exporter))
    app = create_app(runtime)
    await runtime.start(wait_ready=True)
    server = GrpcServer(runtime)
    await server.start()
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield http, channel, exporter
    await server.stop(0)
    await runtime.drain()
    runtime.close()


def _by_id(spans: Sequence[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans}


def follow(spans: Sequence[ReadableSpan], request_id: str) -> tuple[ReadableSpan, ...]:
    """transport -> queue -> (link) batch -> kernel of one request, each step checked."""
    by_id = _by_id(spans)
    (transport,) = [
        s for s in spans if s.kind == SpanKind.SERVER and s.attributes["gradserve.request_id"] == request_id
    ]
    (queue,) = [
        s for s in spans if s.name == "gradserve.queue" and s.parent.span_id == transport.context.span_id
    ]
    assert queue.context.trace_id == transport.context.trace_id
    assert queue.attributes["gradserve.request_id"] == request_id
    (to_batch,) = queue.links
    batch = by_id[to_batch.context.span_id]
    assert batch.name == "gradserve.batch"
    back = [link for link in batch.links if link.context.span_id == queue.context.span_id]
    assert len(back) == 1 and back[0].attributes["gradserve.request_id"] == request_id
    assert request_id in batch.attributes["gradserve.batch.request_ids"]
    (kernel,) = [
        s for s in spans if s.name == "gradserve.kernel" and s.parent.span_id == batch.context.span_id
    ]
    # In time order: queued, then batched, then computed, all within the call.
    assert transport.start_time <= queue.start_time <= queue.end_time <= transport.end_time
    assert batch.start_time <= kernel.start_time <= kernel.end_time <= batch.end_time
    assert queue.end_time <= kernel.start_time
    return transport, queue, batch, kernel


async def server_spans_of(exporter: InMemorySpanExporter, request_ids: set[str]) -> None:
    """Until a server span of each request has ended. A client has its answer once the
    server has sent it; a gRPC server span ends a step later, in the interceptor's own
    exit, so reading the exporter at once raced it (a test failed so, once)."""
    deadline = time.monotonic() + 10
    while True:
        ended = {
            s.attributes.get("gradserve.request_id")
            for s in exporter.get_finished_spans()
            if s.kind == SpanKind.SERVER
        }
        if request_ids <= ended:
            return
        assert time.monotonic() < deadline, f"no server span for {sorted(request_ids - ended)}"
        await asyncio.sleep(0.01)


async def test_a_batched_requests_spans_from_the_transport_to_the_kernel(
    traced: tuple[httpx.AsyncClient, grpc.aio.Channel, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    http, channel, exporter = traced
    caplog.set_level(logging.INFO, logger="gradserve.access")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    async def over_http(n: int) -> str:
        r = await http.post(
            "/v1/activations/relu", json={"x": [float(n), -1.0]}, headers={"X-Request-ID": f"h{n}"}
        )
        assert r.status_code == 200
        return str(r.headers["x-request-id"])

    async def over_grpc(n: int) -> str:
        request = pb.ModelInferRequest(model_name="relu")
        request.inputs.add(name="x", datatype="FP32", shape=[2])
        request.raw_input_contents.append(np.array([n, -1.0], np.float32).tobytes())
        call = stub.ModelInfer(request, metadata=(("x-request-id", f"g{n}"),))
        await call
        return str(dict(await call.trailing_metadata())["x-request-id"])

    ids = await asyncio.gather(*[over_http(n) for n in range(24)], *[over_grpc(n) for n in range(8)])
    assert sorted(ids) == sorted([f"h{n}" for n in range(24)] + [f"g{n}" for n in range(8)])
    await server_spans_of(exporter, set(ids))
    spans = exporter.get_finished_spans()
    batches = [
        s for s in spans if s.name == "gradserve.batch" and s.attributes["gradserve.batch.requests"] >= 2
    ]
    assert batches, "no batch of two or more formed"
    batched = set().union(*(set(b.attributes["gradserve.batch.request_ids"]) for b in batches))

    # One HTTP and (when one was batched) one gRPC request, followed end to end.
    http_id = next(i for i in sorted(batched) if i.startswith("h"))
    transport, _, batch, _ = follow(spans, http_id)
    assert transport.name == "POST relu" and transport.attributes["http.response.status_code"] == 200
    assert transport.attributes["url.path"] == "/v1/activations/relu"
    assert transport.attributes["gradserve.op"] == "relu" and batch.attributes["gradserve.op"] == "relu"
    assert batch.attributes["gradserve.batch.requests"] >= 2 and len(batch.links) >= 2
    assert transport.status.status_code == StatusCode.UNSET and batch.status.status_code == StatusCode.UNSET
    # The same id in the answer (checked above), the log line and the spans.
    (line,) = [
        r for r in caplog.records if r.name == "gradserve.access" and r.fields["request_id"] == http_id
    ]  # type: ignore[attr-defined]
    assert line.fields["batch_size"] == batch.attributes["gradserve.batch.requests"]  # type: ignore[attr-defined]

    for request_id in [i for i in ids if i.startswith("g")]:
        transport, _, batch, _ = follow(spans, request_id)
        assert transport.name == "inference.GRPCInferenceService/ModelInfer"
        assert (
            transport.attributes["rpc.system"] == "grpc" and transport.attributes["rpc.grpc.status_code"] == 0
        )


async def test_a_callers_trace_is_continued(
    traced: tuple[httpx.AsyncClient, grpc.aio.Channel, InMemorySpanExporter],
) -> None:
    http, channel, exporter = traced
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    traceparent = f"00-{trace_id}-{parent_id}-01"
    await http.post(
        "/v1/activations/gelu",
        json={"x": [1.0]},
        headers={"traceparent": traceparent, "X-Request-ID": "tp-h"},
    )
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    await stub.ServerLive(
        pb.ServerLiveRequest(), metadata=(("traceparent", traceparent), ("x-request-id", "tp-g"))
    )
    await server_spans_of(exporter, {"tp-h", "tp-g"})
    for request_id in ("tp-h", "tp-g"):
        (span,) = [
            s
            for s in exporter.get_finished_spans()
            if s.attributes.get("gradserve.request_id") == request_id and s.kind == SpanKind.SERVER
        ]
        assert f"{span.context.trace_id:032x}" == trace_id
        assert span.parent is not None and f"{span.parent.span_id:016x}" == parent_id


async def test_failures_mark_their_spans(
    traced: tuple[httpx.AsyncClient, grpc.aio.Channel, InMemorySpanExporter],
) -> None:
    http, channel, exporter = traced
    await http.post("/v1/activations/relu", json={"x": "bad"}, headers={"X-Request-ID": "bad-1"})
    with pytest.raises(grpc.aio.AioRpcError):
        await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name="nope"), metadata=(("x-request-id", "bad-2"),)
        )
    await server_spans_of(exporter, {"bad-1", "bad-2"})
    spans = {
        s.attributes.get("gradserve.request_id"): s
        for s in exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER
    }
    # A client's mistake is not the server's failure (OpenTelemetry's conventions).
    assert spans["bad-1"].attributes["http.response.status_code"] == 422
    assert spans["bad-1"].status.status_code == StatusCode.UNSET
    assert spans["bad-2"].attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


def test_nothing_of_the_sdk_is_loaded_when_tracing_is_off() -> None:
    """Off by default, and then free: no provider, no SDK import, every hook skipped."""
    code = """
import asyncio, sys, httpx
from gradserve.config import Settings
from gradserve.rest.app import create_app
from gradserve.runtime import Runtime

async def main():
    runtime = Runtime(Settings(device="cpu"))
    assert runtime.tracing is None and runtime.batcher.tracing is None
    app = create_app(runtime)
    await runtime.start(wait_ready=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        assert (await c.post("/v1/activations/relu", json={"x": [1.0]})).status_code == 200
    await runtime.drain()
    runtime.close()
    loaded = [m for m in sys.modules if m.startswith("opentelemetry.sdk")]
    assert not loaded, loaded

asyncio.run(main())
"""
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": "service", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_the_console_exporter_of_a_real_process(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory("--otel-exporter", "console")
    r = httpx.post(
        f"{proc.url}/v1/activations/relu", json={"x": [1.0]}, headers={"X-Request-ID": "console-1"}
    )
    assert r.status_code == 200
    assert proc.stop() == 0  # the exporter is flushed at shutdown
    log = proc.log()
    for name in (
        '"name": "POST relu"',
        '"name": "gradserve.queue"',
        '"name": "gradserve.batch"',
        '"name": "gradserve.kernel"',
    ):
        assert name in log, name
    assert '"gradserve.request_id": "console-1"' in log


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC trace collector: keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: Any, context: Any) -> Any:  # the proto's name
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Any]:
        return [
            span
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]


def test_otlp_export_of_a_real_process(server_factory: Callable[..., ServerProcess]) -> None:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        proc = server_factory(
            "--otel-exporter",
            "otlp",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms between exports, not 5 s
                "OTEL_SERVICE_NAME": "gradserve-under-test",
            },
        )
        r = httpx.post(
            f"{proc.url}/v1/activations/tanh", json={"x": [1.0]}, headers={"X-Request-ID": "otlp-1"}
        )
        assert r.status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = {s.name for s in collector.spans()}
            if {"POST tanh", "gradserve.queue", "gradserve.batch", "gradserve.kernel"} <= names:
                break
            time.sleep(0.1)
        names = {s.name for s in collector.spans()}
        assert {"POST tanh", "gradserve.queue", "gradserve.batch", "gradserve.kernel"} <= names, names
        (transport,) = [s for s in collector.spans() if s.name == "POST tanh"]
        attributes = {a.key: a.value.string_value for a in transport.attributes}
        assert attributes["gradserve.request_id"] == "otlp-1"
        resource = collector.requests[0].resource_spans[0].resource
        assert {a.key: a.value.string_value for a in resource.attributes}[
            "service.name"
        ] == "gradserve-under-test"
        assert proc.stop() == 0
    finally:
        server.stop(0)
