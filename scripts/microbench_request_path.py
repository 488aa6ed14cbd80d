"""Microbenchmark of the small-request path: what gradserve's own layers cost per request.

The app is driven in-process through ASGI (no sockets, no HTTP client: only gradserve's
code from ``GradservApp.__call__`` to the last ``send``), and gRPC over loopback with
one sequential channel. Requests are tiny (relu on 8 floats), so the figures are the
per-request overhead of the transport, engine, batcher and executor, which is where a
key check, a request id, an access log line or a span would show.

    .venv/bin/python scripts/microbench_request_path.py [--set name=value ...] [--trace-memory]

``--set`` passes settings (e.g. ``--set api_keys=k1``); ``--trace-memory`` turns tracing
on with the OpenTelemetry SDK's in-memory exporter (needs gradserve.tracing). Log
records go through a real handler writing to /dev/null at INFO, as ``gradserve serve``
writes them to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from typing import Any

import orjson

ROUNDS = 7
PER_ROUND = 1500
GRPC_PER_ROUND = 600


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


async def _asgi_round(app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> list[float]:
    times: list[float] = []
    for _ in range(PER_ROUND):
        sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # never: the client stays connected
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        started = time.perf_counter_ns()
        await app(_scope(path, headers), receive, send)
        times.append((time.perf_counter_ns() - started) / 1000)
        assert status == 200, status
    return times


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[], help="a setting, name=value")
    parser.add_argument("--trace-memory", action="store_true")
    parser.add_argument(
        "--trace-batch",
        action="store_true",
        help="tracing on as `gradserve serve` runs it: a batch span processor (export off the loop)",
    )
    parser.add_argument("--key", default=None, help="send this API key")
    args = parser.parse_args()

    from gradserve.config import Settings
    from gradserve.grpc.server import GrpcServer
    from gradserve.rest.app import create_app
    from gradserve.runtime import Runtime

    given = dict(item.split("=", 1) for item in args.set)
    settings = Settings(device="cpu", grpc_port=0, host="127.0.0.1", **given)  # type: ignore[arg-type]
    # Logging as `gradserve serve` sets it up (logs.configure: a handler on stderr, and
    # the access lines' direct writer), stderr sent to /dev/null; code from before
    # logs.py existed gets a plain handler at INFO.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - once, before any request
    try:
        from gradserve import logs

        logs.configure(settings)
    except ImportError:
        logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stderr)])
    if args.trace_memory or args.trace_batch:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from gradserve import tracing

        exporter = InMemorySpanExporter()
        if args.trace_batch:
            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(exporter))
            traced = tracing.Tracing(provider)
        else:
            traced = tracing.Tracing.with_exporter(exporter)
        runtime = Runtime(settings, tracing=traced)
    else:
        exporter = None
        runtime = Runtime(settings)
    app = create_app(runtime)
    await runtime.start(wait_ready=True)
    grpc_server = GrpcServer(runtime)
    await grpc_server.start()

    headers = [(b"content-type", b"application/json")]
    if args.key:
        headers.append((b"authorization", f"Bearer {args.key}".encode()))
    v1_body = orjson.dumps({"x": [0.5, -1.0, 2.0, -3.0, 0.1, 0.2, -0.3, 4.0]})
    v2_body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [8],
                    "data": [0.5, -1.0, 2.0, -3.0, 0.1, 0.2, -0.3, 4.0],
                }
            ]
        }
    )

    import grpc

    from gradserve.grpc.generated import inference_pb2 as pb
    from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="relu")
    request.inputs.add(name="x", datatype="FP32", shape=[8])
    request.raw_input_contents.append(bytes(32))
    metadata = (("authorization", f"Bearer {args.key}"),) if args.key else ()

    results: dict[str, list[float]] = {"v1": [], "v2": [], "grpc": []}
    for _ in range(ROUNDS):
        results["v1"].append(
            statistics.median(await _asgi_round(app, "/v1/activations/relu", v1_body, headers))
        )
        results["v2"].append(
            statistics.median(await _asgi_round(app, "/v2/models/relu/infer", v2_body, headers))
        )
        times = []
        for _ in range(GRPC_PER_ROUND):
            started = time.perf_counter_ns()
            await stub.ModelInfer(request, metadata=metadata)
            times.append((time.perf_counter_ns() - started) / 1000)
        results["grpc"].append(statistics.median(times))
        if exporter is not None:
            exporter.clear()
    for name, medians in results.items():
        print(
            f"{name:5s} median of {ROUNDS} round medians: {statistics.median(medians):7.1f} us  "
            f"(rounds {min(medians):.1f}-{max(medians):.1f})",
            flush=True,
        )
    await channel.close()
    await grpc_server.stop(0)
    await runtime.drain()
    runtime.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
