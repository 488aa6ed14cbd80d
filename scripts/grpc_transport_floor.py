"""gRPC transport floor: what grpc.aio and grpc's sync server reach when they do no work.

Starts ``gradserve serve`` on free ports, then a bare gRPC server that answers every
GRPCInferenceService call with the bytes gradserve gave for the same method (the first
call of each is proxied, then cached: no decoding, no engine), and drives it with
perf_analyzer as ``gradserve bench`` drives its gRPC cells (the small cross_entropy
cell; gradserve.bench's perf_analyzer driver). The modes:

- ``aio``: grpc.aio on uvloop, one process, unary calls;
- ``sync:N``: grpc's sync server with N worker threads (default 8);
- ``aio-stream``: ``aio`` that also serves ModelStreamInfer (raw bytes), each incoming
  message answered at once by an async generator with a ModelStreamInferResponse
  holding the cached ModelInfer answer as its ``infer_response`` and the request's id
  (perf_analyzer matches stream answers by id; the id is found by walking the first
  fields, about 1.5 us); driven with perf_analyzer ``--streaming``.
  ``aio-stream:write`` answers with ``context.write`` instead (the same within noise
  here: 7,856 vs 7,805 req/s, medians of 3 at c=64);
- ``front``: two processes, the floor of a separate gRPC front: a grpc.aio front
  (generic handler, raw bytes) forwards each ModelInfer request's bytes over a Unix
  socket (length-prefixed frames with a request id, many in flight on one connection,
  the frames of one loop iteration in one write) to a backend process that answers each
  frame with the cached answer; metadata and config are answered by the front.

Each row: req/s, p50/p99, and CPU in % of one core of each floor process and of
perf_analyzer (/proc utime+stime over the run, as the bench counts it). The figures of
docs/benchmarks.md ("gRPC unary: where the time goes") come from it:

    PYTHONPATH=service .venv/bin/python scripts/grpc_transport_floor.py aio sync:8 sync:64
    PYTHONPATH=service .venv/bin/python scripts/grpc_transport_floor.py \\
        --concurrency 16,64 aio aio-stream front

Needs perf_analyzer (`make perf-analyzer`). A process alone: ``serve-MODE PORT UPSTREAM``
(MODE also ``backend``, the front's backend, listening on the socket of PORT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent import futures
from pathlib import Path
from typing import Any, cast

import grpc

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
FRAME = struct.Struct("<IQ")  # a link frame: payload length, request id; then the payload


class Upstream:
    """gradserve's answers, each asked for once (a blocking call) and then cached."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.cache: dict[Any, bytes] = {}

    def answer(self, method: str, request: bytes) -> bytes:
        # ModelInfer's answer is the same for perf_analyzer's one request; the others
        # (metadata, config) are keyed by their request too.
        key: Any = method if method == INFER else (method, request)
        if key not in self.cache:
            self.cache[key] = self.channel.unary_unary(method)(request)
        return self.cache[key]

    def stream_answer(self, request: bytes) -> bytes:
        """A ModelStreamInferResponse holding ModelInfer's answer as its
        ``infer_response`` (field 2, length-delimited) with the request's id: perf_analyzer
        matches a stream's answers to its requests by id. The id field (3) is appended
        to the cached answer: protobuf takes the last value of a field."""
        answer = self.cache.get(INFER) or self.answer(INFER, request)
        rid = request_id(request)
        inner_len = len(answer) + 1 + len(varint(len(rid))) + len(rid)
        return b"".join((b"\x12", varint(inner_len), answer, b"\x1a", varint(len(rid)), rid))


def request_id(request: bytes) -> bytes:
    """ModelInferRequest's ``id`` (field 3): its first fields walked, no decoding."""
    pos = 0
    while pos < len(request):
        tag, pos = read_varint(request, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = read_varint(request, pos)
        elif wire == 2:
            length, pos = read_varint(request, pos)
            if field == 3:
                return request[pos : pos + length]
            pos += length
        else:
            break
        if field > 3:  # fields are written in order: no id
            break
    return b""


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def link_path(port: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"grpc-floor-{port}.sock")


def read_frames(buffer: bytearray, data: bytes) -> list[tuple[int, bytes]]:
    """Append ``data`` to ``buffer``; take out the complete frames as (id, payload)."""
    buffer += data
    frames, pos = [], 0
    while len(buffer) - pos >= FRAME.size:
        length, rid = FRAME.unpack_from(buffer, pos)
        end = pos + FRAME.size + length
        if end > len(buffer):
            break
        frames.append((rid, bytes(buffer[pos + FRAME.size : end])))
        pos = end
    del buffer[:pos]
    return frames


class FrontLink(asyncio.Protocol):
    """The front's end of the link: one connection, any number of requests in flight;
    the frames asked for in one loop iteration leave in one write."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.outbox: list[bytes] = []
        self.inbox = bytearray()
        self.ids = itertools.count()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def ask(self, payload: bytes) -> asyncio.Future[bytes]:
        rid = next(self.ids)
        future: asyncio.Future[bytes] = self.loop.create_future()
        self.pending[rid] = future
        if not self.outbox:
            self.loop.call_soon(self._flush)
        self.outbox += (FRAME.pack(len(payload), rid), payload)
        return future

    def _flush(self) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(self.outbox))
        self.outbox.clear()

    def data_received(self, data: bytes) -> None:
        for rid, payload in read_frames(self.inbox, data):
            future = self.pending.pop(rid)
            if not future.done():
                future.set_result(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("backend link lost"))


class BackendLink(asyncio.Protocol):
    """The backend's end: each frame answered with the cached ModelInfer answer; the
    answers to the frames of one read leave in one write."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.inbox = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        replies: list[bytes] = []
        for rid, request in read_frames(self.inbox, data):
            answer = self.upstream.answer(INFER, request)
            replies += (FRAME.pack(len(answer), rid), answer)
        if replies:
            assert self.transport is not None
            self.transport.write(b"".join(replies))


Unary = Callable[[bytes, Any], Awaitable[bytes]]


class AioHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped here
    """Every unary method from the cache (ModelInfer through ``infer`` if given);
    ModelStreamInfer, if ``stream`` is ``gen`` or ``write``, answered per message."""

    def __init__(self, upstream: Upstream, infer: Unary | None = None, stream: str = "") -> None:
        self.upstream, self.infer, self.stream = upstream, infer, stream

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        upstream = self.upstream
        if method == STREAM:
            if self.stream == "gen":

                async def generate(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
                    async for request in requests:
                        yield upstream.stream_answer(request)

                return grpc.stream_stream_rpc_method_handler(generate)
            if self.stream == "write":

                async def write(requests: AsyncIterator[bytes], context: Any) -> None:
                    async for request in requests:
                        await context.write(upstream.stream_answer(request))

                return grpc.stream_stream_rpc_method_handler(write)
            return None
        if method == INFER and self.infer is not None:
            return grpc.unary_unary_rpc_method_handler(self.infer)

        async def call(request: bytes, context: Any) -> bytes:
            return upstream.answer(method, request)

        return grpc.unary_unary_rpc_method_handler(call)


def serve(mode: str, port: int, address: str) -> None:
    """One process: ``aio``, ``aio-stream[:write]``, ``front``, ``backend`` or ``sync:N``."""
    upstream = Upstream(address)
    options = [("grpc.so_reuseport", 0)]
    if mode.startswith("sync"):
        workers = int(mode.partition(":")[2] or 8)

        class SyncHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped here
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                method: str = details.method
                return grpc.unary_unary_rpc_method_handler(
                    lambda request, _: upstream.answer(method, request)
                )

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
        server.add_generic_rpc_handlers((SyncHandler(),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def main() -> None:
        if mode == "backend":
            loop = asyncio.get_running_loop()
            backend = await loop.create_unix_server(lambda: BackendLink(upstream), link_path(port))
            await backend.serve_forever()
            return
        handler = AioHandler(upstream)
        if mode.startswith("aio-stream"):
            handler.stream = mode.partition(":")[2] or "gen"
        elif mode == "front":
            link = await _connect(link_path(port))

            async def infer(request: bytes, context: Any) -> bytes:
                return await link.ask(request)

            handler.infer = infer
        elif mode != "aio":
            raise SystemExit(f"unknown mode {mode!r}")
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    import uvloop

    if mode == "backend":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link_path(port))
    uvloop.run(main())


async def _connect(path: str) -> FrontLink:
    """The link to the backend, once its socket listens (up to 30 s)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 30
    while True:
        try:
            _, link = await loop.create_unix_connection(FrontLink, path)
            return link
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def _wait_port(port: int, procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a floor process exited: {[p.args for p in procs]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modes", nargs="*", default=["aio", "sync:8", "sync:64"])
    parser.add_argument("--concurrency", default="64", help="perf_analyzer concurrencies (default 64)")
    parser.add_argument("--duration-s", type=float, default=3.0, help="measured seconds per cell (default 3)")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    sys.path.insert(0, str(ROOT / "service"))
    from gradserve.bench.perf_analyzer import perf_analyzer_input_data, perf_analyzer_path, run_perf_analyzer
    from gradserve.bench.servers import free_port, proc_cpu_s
    from gradserve.bench.workloads import SMALL_OP, discover_work, small_inputs

    pa = perf_analyzer_path(None)
    if pa is None:
        raise SystemExit("perf_analyzer not found (make perf-analyzer)")
    http, grpc_port, floor = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service")}
    gradserve = subprocess.Popen(
        [PY, "-m", "gradserve", "serve", "--host", "127.0.0.1", "--http-port", str(http),
         "--grpc-port", str(grpc_port), "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    tmp: tempfile.TemporaryDirectory[str] | None = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        work = discover_work(f"http://127.0.0.1:{http}")
        tmp = tempfile.TemporaryDirectory(prefix="grpc-floor-")
        workdir = Path(tmp.name)
        inputs = perf_analyzer_input_data(workdir / "data.json", work.model_config(SMALL_OP), small_inputs())
        for mode in args.modes:
            roles = ["backend", "front"] if mode == "front" else [mode]
            procs: list[subprocess.Popen[bytes]] = []
            try:
                for role in roles:
                    cmd = [PY, __file__, f"serve-{role}", str(floor), f"127.0.0.1:{grpc_port}"]
                    procs.append(subprocess.Popen(cmd, env=env))
                _wait_port(floor, procs)
                time.sleep(0.5)
                stream = mode.startswith("aio-stream")
                for c in concurrencies:
                    cpu0, t0 = [proc_cpu_s(p.pid) for p in procs], time.monotonic()
                    row = run_perf_analyzer(
                        pa, "grpc", f"127.0.0.1:{floor}", SMALL_OP,
                        [*inputs, *(["--streaming"] if stream else [])],
                        c, args.duration_s, procs[-1].pid, workdir,
                    )  # fmt: skip
                    wall = time.monotonic() - t0
                    cpu = [100 * (proc_cpu_s(p.pid) - c0) / wall for p, c0 in zip(procs, cpu0, strict=True)]
                    shares = ", ".join(f"{r} {v:.0f}" for r, v in zip(roles, cpu, strict=True))
                    print(
                        f"{mode:>16} c={c:<3} {row.req_s:8,.0f} req/s  p50 {row.p50_ms:6.2f} ms  "
                        f"p99 {row.p99_ms:6.2f} ms  CPU%: {shares}, perf_analyzer {row.loadgen_cpu:.0f}"
                        + (f"  {row.note}" if row.note else ""),
                        flush=True,
                    )
            finally:
                for p in reversed(procs):
                    p.terminate()
                    p.wait()
                if mode == "front":
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(link_path(floor))
    finally:
        gradserve.terminate()
        gradserve.wait()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1].startswith("serve-"):
        serve(sys.argv[1].removeprefix("serve-"), int(sys.argv[2]), sys.argv[3])
    else:
        main(sys.argv[1:])
