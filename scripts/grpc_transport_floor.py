"""gRPC transport floor: what grpc.aio and grpc's sync server reach when they do no work.

Starts ``gradserve serve`` on free ports, then a bare gRPC server (grpc.aio on uvloop, or
the sync server with a thread pool) that answers every GRPCInferenceService call with the
bytes gradserve gave for the same method (the first call of each is proxied, then
cached: no decoding, no engine), and drives it with perf_analyzer through
``gradserve bench --url ... --grpc ...`` (the small cross_entropy cell, concurrency 64).
The figures of docs/benchmarks.md ("gRPC unary: where the time goes") come from it:

    PYTHONPATH=service .venv/bin/python scripts/grpc_transport_floor.py aio sync:8 sync:64

Needs perf_analyzer (`make perf-analyzer`). A mode alone: ``serve-MODE PORT UPSTREAM``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def serve(mode: str, port: int, upstream: str) -> None:
    """The bare server: ``aio`` or ``sync:WORKERS``."""
    channel = grpc.insecure_channel(upstream)
    cache: dict[Any, bytes] = {}

    def answer(method: str, request: bytes) -> bytes:
        # ModelInfer's answer is the same for perf_analyzer's one request; the others
        # (metadata, config) are keyed by their request too.
        key: Any = method if method.endswith("/ModelInfer") else (method, request)
        if key not in cache:
            cache[key] = channel.unary_unary(method)(request)
        return cache[key]

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            method = details.method
            if mode == "aio":

                async def call(request: bytes, context: Any) -> bytes:
                    return answer(method, request)

                return grpc.unary_unary_rpc_method_handler(call)
            return grpc.unary_unary_rpc_method_handler(lambda request, context: answer(method, request))

    options = [("grpc.so_reuseport", 0)]
    if mode == "aio":
        import uvloop

        async def main() -> None:
            server = grpc.aio.server(options=options)
            server.add_generic_rpc_handlers((Handler(),))
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await server.wait_for_termination()

        uvloop.run(main())
    else:
        workers = int(mode.partition(":")[2] or 8)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
        server.add_generic_rpc_handlers((Handler(),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()


def main(modes: list[str]) -> None:
    sys.path.insert(0, str(ROOT / "service"))
    from gradserve.bench.servers import free_port

    http, grpc_port, floor = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service")}
    gradserve = subprocess.Popen(
        [PY, "-m", "gradserve", "serve", "--host", "127.0.0.1", "--http-port", str(http),
         "--grpc-port", str(grpc_port), "--log-level", "warning"],
        env=env,
    )  # fmt: skip
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
        for mode in modes:
            bare = subprocess.Popen(
                [PY, __file__, f"serve-{mode}", str(floor), f"127.0.0.1:{grpc_port}"], env=env
            )
            try:
                time.sleep(1.5)
                out = subprocess.run(
                    [PY, "-m", "gradserve", "bench", "--url", f"http://127.0.0.1:{http}",
                     "--grpc", f"127.0.0.1:{floor}", "--sections", "small", "--transports", "grpc",
                     "--batching", "on", "--concurrency", "64", "--no-floors", "--no-torch", "--duration-s", "3"],
                    env=env, capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                rows = [line for line in out.splitlines() if line.startswith("  small")]
                print(f"{mode:>8}: {rows[0].split('c=64')[1].strip() if rows else out}", flush=True)
            finally:
                bare.terminate()
                bare.wait()
    finally:
        gradserve.terminate()
        gradserve.wait()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1].startswith("serve-"):
        serve(sys.argv[1].removeprefix("serve-"), int(sys.argv[2]), sys.argv[3])
    else:
        main(sys.argv[1:] or ["aio", "sync:8", "sync:64"])
