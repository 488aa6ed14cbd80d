"""The Python load generator: spawned worker processes, each a uvloop loop of minimal
keep-alive HTTP/1.1 connections ("py-http"), grpc.aio calls, or one grpc.aio
ModelStreamInfer stream per process ("grpc-stream", its share of the concurrency in
flight on it), closed loops sharing the concurrency; latencies of the measured window
and each process's own CPU."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.pool import Pool
from typing import Any

from gradserve.bench.rawhttp import RawHttpConnection
from gradserve.bench.results import Row, percentile
from gradserve.bench.servers import proc_cpu_s
from gradserve.bench.workloads import InputTensor


@dataclass
class LoadSpec:
    """What one worker process sends: an HTTP POST, or a gRPC ModelInfer."""

    kind: str  # "http", "grpc" or "grpc-stream"
    target: str  # URL, or host:port
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    model: str = ""
    inputs: list[InputTensor] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


class PyLoad:
    """A pool of load worker processes, reused across cells."""

    def __init__(self, procs: int) -> None:
        self.procs = procs
        self.pool: Pool = get_context("spawn").Pool(procs)

    def run(self, spec: LoadSpec, concurrency: int, duration_s: float, server_pid: int | None) -> Row:
        n = max(1, min(self.procs, concurrency))
        shares = [concurrency // n + (1 if i < concurrency % n else 0) for i in range(n)]
        warmup_s = min(1.0, max(0.3, duration_s / 3))
        start_at = time.time() + warmup_s
        pending = self.pool.starmap_async(_worker, [(spec, c, start_at, duration_s) for c in shares])
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = proc_cpu_s(server_pid)
        time.sleep(max(0.0, start_at + duration_s - time.time()))
        cpu1 = proc_cpu_s(server_pid)
        results = pending.get(timeout=duration_s + 180)
        lat = sorted(x for r in results for x in r["latencies"])
        label = {"http": "py-http", "grpc": "grpc.aio", "grpc-stream": "grpc-stream"}[spec.kind]
        row = Row("", "", "", "", concurrency, f"{label} x{n}")
        row.req_s = len(lat) / duration_s
        row.p50_ms = percentile(lat, 50) * 1e3
        row.p99_ms = percentile(lat, 99) * 1e3
        row.errors = sum(int(r["errors"]) for r in results)
        row.loadgen_cpu = 100 * sum(float(r["cpu_s"]) for r in results) / duration_s
        row.server_cpu = 100 * (cpu1 - cpu0) / duration_s
        return row

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def _worker(spec: LoadSpec, concurrency: int, start_at: float, duration_s: float) -> dict[str, Any]:
    """Entry point of a load worker process: run the load, return its measurements."""
    try:
        import uvloop

        return uvloop.run(_load(spec, concurrency, start_at, duration_s))
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        return asyncio.run(_load(spec, concurrency, start_at, duration_s))


async def _load(spec: LoadSpec, concurrency: int, start_at: float, duration_s: float) -> dict[str, Any]:
    # Wall-clock start shared by all workers; warm-up runs until then, unrecorded.
    start = time.perf_counter() + (start_at - time.time())
    end = start + duration_s
    latencies: list[float] = []
    errors = 0
    cpu: list[float] = []

    async def cpu_marks() -> None:
        for mark in (start, end):
            await asyncio.sleep(max(0.0, mark - time.perf_counter()))
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu.append(usage.ru_utime + usage.ru_stime)

    if spec.kind == "http":
        conns = [await RawHttpConnection.open_url(spec.target) for _ in range(concurrency)]
        request = _http_request_bytes(spec.target, spec.body, spec.headers)
        calls = [_http_call(c, request) for c in conns]
        try:
            errors = await _drive(calls, end, start, latencies, cpu_marks())
        finally:
            for c in conns:
                c.close()
    else:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        request = service_pb2.ModelInferRequest(model_name=spec.model)
        for name, dtype, shape, raw in spec.inputs:
            request.inputs.add(name=name, datatype=dtype, shape=shape)
            request.raw_input_contents.append(raw)
        for name in spec.outputs:
            request.outputs.add(name=name)
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        async with grpc.aio.insecure_channel(spec.target, options=options) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            # Unary calls send the request's bytes serialized once and take the answer
            # as bytes (an error is a non-OK status, raised): building and parsing a
            # 16 MiB protobuf message per call cost the client more than the server
            # spends (docs/benchmarks.md), so the client would be what is measured.
            raw_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            body = request.SerializeToString()

            async def call() -> bool:
                await raw_call(body)
                return True

            if spec.kind == "grpc-stream":
                errors = await _drive_stream(stub, request, concurrency, end, start, latencies, cpu_marks())
            else:
                errors = await _drive([call] * concurrency, end, start, latencies, cpu_marks())
    cpu_s = cpu[1] - cpu[0] if len(cpu) == 2 else float("nan")
    return {"latencies": latencies, "errors": errors, "cpu_s": cpu_s}


async def _drive(
    calls: list[Callable[[], Awaitable[bool]]],
    end: float,
    start: float,
    latencies: list[float],
    marks: Awaitable[None],
) -> int:
    """One closed loop per call until ``end``; latencies of calls ending in [start, end]."""
    errors = 0

    async def loop(call: Callable[[], Awaitable[bool]]) -> None:
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                ok = await call()
            except Exception:
                ok = False
            t1 = time.perf_counter()
            if start <= t1 <= end:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1
            if not ok:
                await asyncio.sleep(0.01)

    await asyncio.gather(marks, *(loop(c) for c in calls))
    return errors


async def _drive_stream(
    stub: Any,
    request: Any,
    concurrency: int,
    end: float,
    start: float,
    latencies: list[float],
    marks: Awaitable[None],
) -> int:
    """``concurrency`` requests in flight on one ModelStreamInfer stream until ``end``:
    each answer (matched by id) sends that slot's next request."""
    requests = []
    for slot in range(concurrency):
        r = type(request)()
        r.CopyFrom(request)
        r.id = str(slot)
        requests.append(r)
    sent = [0.0] * concurrency
    errors = 0
    call = stub.ModelStreamInfer()

    async def answers() -> None:
        nonlocal errors
        for slot, r in enumerate(requests):
            sent[slot] = time.perf_counter()
            await call.write(r)
        in_flight = concurrency
        async for answer in call:
            t1 = time.perf_counter()
            slot = int(answer.infer_response.id)
            if start <= t1 <= end:
                if answer.error_message:
                    errors += 1
                else:
                    latencies.append(t1 - sent[slot])
            if t1 < end:
                sent[slot] = time.perf_counter()
                await call.write(requests[slot])
            else:
                in_flight -= 1
                if in_flight == 0:
                    break
        await call.done_writing()

    await asyncio.gather(marks, answers())
    return errors


def _http_request_bytes(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The whole HTTP/1.1 keep-alive request, built once and resent as is."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    lines = [f"POST /{path} HTTP/1.1", f"Host: {hostport}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _http_call(conn: RawHttpConnection, request: bytes) -> Callable[[], Awaitable[bool]]:
    async def call() -> bool:
        return (await conn.send(request)).status == 200

    return call
