"""The SDK as a load generator: gradserve_client's four clients driving the small op.

Flow position: ``gradserve bench --transports sdk-http,sdk-grpc`` -> runner ->
**run_sdk_cell** -> a fresh ``python -m gradserve.bench.sdk`` process (so the client
never shares a GIL or a core's accounting with the bench) -> one JSON line back -> a
``Row``. Also runnable by hand, which is how the SDK's own figures in docs/sdk.md were
taken::

    python -m gradserve.bench.sdk --client http-async --url http://127.0.0.1:8000 -c 64

What each client does is what a user's code would: ``loss("cross_entropy", x, t,
grad=True)`` with numpy inputs (8x10 float32, 8 int64 targets), in a closed loop:

- ``http-sync`` / ``grpc-sync``: one shared ``Client`` / ``GrpcClient`` called from
  ``concurrency`` threads;
- ``http-async`` / ``grpc-async``: one ``AsyncClient`` / ``AsyncGrpcClient`` with
  ``concurrency`` tasks on one event loop (asyncio's default loop unless ``--uvloop``);
- ``grpc-bare`` (by hand only, the reference for the two above): grpcio's own
  ``grpc.aio`` channel sending the request bytes ``AsyncGrpcClient`` builds, built
  once, and not reading the answers: what a Python gRPC client can reach here at all.

Every call runs until the warm-up plus the measured window ends; only calls that start
inside the window are counted. The process's own CPU (getrusage over the window) is the
client's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from gradserve.bench.results import Row, percentile
from gradserve.bench.servers import ROOT, proc_cpu_s
from gradserve.bench.workloads import SMALL_OP, SMALL_SHAPE

CLIENTS = ("http-sync", "http-async", "grpc-sync", "grpc-async", "grpc-bare")
# bench transport -> the two clients (sync in threads, async in tasks) of its rows
TRANSPORT_CLIENTS = {"sdk-http": ("http-sync", "http-async"), "sdk-grpc": ("grpc-sync", "grpc-async")}


def _arrays() -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal(SMALL_SHAPE).astype(np.float32)
    t = rng.integers(0, SMALL_SHAPE[1], SMALL_SHAPE[0]).astype(np.int64)
    return x, t


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Window:
    """The measured window: latencies of calls started inside it, errors, CPU marks."""

    def __init__(self, warmup_s: float, duration_s: float) -> None:
        self.start = time.perf_counter() + warmup_s
        self.end = self.start + duration_s
        self.latencies: list[float] = []
        self.errors = 0
        self.cpu: list[float] = []
        self.first_error = ""

    def record(self, t0: float, t1: float) -> None:
        if t0 >= self.start and t1 <= self.end:
            self.latencies.append(t1 - t0)  # list.append is atomic under the GIL

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"

    def mark(self) -> None:
        """The window starts or ends: note the CPU, and tell the parent (run_sdk_cell)
        so that it samples the server's CPU over the same window."""
        self.cpu.append(_cpu_s())
        print("mark", flush=True)

    def result(self, duration_s: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "req_s": len(lat) / duration_s,
            "p50_ms": percentile(lat, 50) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3,
            "cpu_pct": 100 * (self.cpu[1] - self.cpu[0]) / duration_s if len(self.cpu) == 2 else None,
            "errors": self.errors,
            "first_error": self.first_error,
        }


def run_sync(kind: str, target: str, concurrency: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """One shared sync client, ``concurrency`` threads calling it in closed loops."""
    from gradserve_client import Client, GrpcClient

    x, t = _arrays()
    client: Client | GrpcClient = Client(target) if kind == "http-sync" else GrpcClient(target)
    client.loss(SMALL_OP, x, t, grad=True)  # metadata cached, connection up
    window = _Window(warmup_s, duration_s)

    def loop() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= window.end:
                return
            try:
                client.loss(SMALL_OP, x, t, grad=True)
            except Exception as exc:
                window.error(exc)
            window.record(t0, time.perf_counter())

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    with client:
        for th in threads:
            th.start()
        for mark in (window.start, window.end):
            time.sleep(max(0.0, mark - time.perf_counter()))
            window.mark()
        for th in threads:
            th.join()
    return window.result(duration_s)


async def run_async(
    kind: str, target: str, concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """One async client, ``concurrency`` tasks on this loop calling it in closed loops."""
    import grpc

    from gradserve_client import AsyncClient, AsyncGrpcClient, _grpc_wire

    class KeepingClient(AsyncGrpcClient):
        """The SDK's client, keeping the last request bytes it built (for grpc-bare)."""

        built: Any = None

        def _build(self, *args: Any) -> Any:
            self.built = super()._build(*args)
            return self.built

    x, t = _arrays()
    client: AsyncClient | AsyncGrpcClient = (
        AsyncClient(target)
        if kind == "http-async"
        else KeepingClient(target)
        if kind == "grpc-bare"
        else AsyncGrpcClient(target)
    )
    async with client:
        await client.loss(SMALL_OP, x, t, grad=True)
        window = _Window(warmup_s, duration_s)
        if kind == "grpc-bare":
            channel = grpc.aio.insecure_channel(target)
            bare = channel.unary_unary(_grpc_wire.MODEL_INFER)
            assert isinstance(client, KeepingClient)
            request = client.built

            async def call() -> Any:
                return await bare(request, timeout=60)

        else:

            async def call() -> Any:
                return await client.loss(SMALL_OP, x, t, grad=True)

        async def loop() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= window.end:
                    return
                try:
                    await call()
                except Exception as exc:
                    window.error(exc)
                window.record(t0, time.perf_counter())

        async def marks() -> None:
            for mark in (window.start, window.end):
                await asyncio.sleep(max(0.0, mark - time.perf_counter()))
                window.mark()

        await asyncio.gather(marks(), *(loop() for _ in range(concurrency)))
        if kind == "grpc-bare":
            await channel.close()
    return window.result(duration_s)


def run(
    kind: str, target: str, concurrency: int, warmup_s: float, duration_s: float, uvloop: bool = False
) -> dict[str, Any]:
    if kind.endswith("-sync"):
        return run_sync(kind, target, concurrency, warmup_s, duration_s)
    coro = run_async(kind, target, concurrency, warmup_s, duration_s)
    if uvloop:
        import uvloop as uv

        return uv.run(coro)
    return asyncio.run(coro)


def run_sdk_cell(kind: str, target: str, concurrency: int, duration_s: float, server_pid: int | None) -> Row:
    """One cell in a fresh process; the row carries the client's CPU and the server's,
    both over the measured window (the child prints "mark" as it starts and ends)."""
    warmup_s = min(1.0, max(0.3, duration_s / 3))
    cmd = [sys.executable, "-m", "gradserve.bench.sdk", "--client", kind, "--target", target]
    cmd += ["-c", str(concurrency), "--duration-s", str(duration_s), "--warmup-s", str(warmup_s)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "service"), os.environ.get("PYTHONPATH", "")]),
    }
    row = Row("", "", "", "", concurrency, f"SDK {kind}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    timer = threading.Timer(duration_s + warmup_s + 120, proc.kill)
    timer.start()
    try:
        server_cpu: list[float] = []
        last = ""
        for line in proc.stdout:
            if line.strip() == "mark":
                server_cpu.append(proc_cpu_s(server_pid))
            elif line.strip():
                last = line
        err = proc.stderr.read()
        proc.wait()
    finally:
        timer.cancel()
    if proc.returncode != 0 or not last:
        row.note = "SDK load generator failed: " + " | ".join(err.strip().splitlines()[-2:])
        row.errors = 1
        return row
    if len(server_cpu) == 2:
        row.server_cpu = 100 * (server_cpu[1] - server_cpu[0]) / duration_s
    result = json.loads(last)
    row.req_s, row.p50_ms, row.p99_ms = result["req_s"], result["p50_ms"], result["p99_ms"]
    row.loadgen_cpu = result["cpu_pct"] if result["cpu_pct"] is not None else float("nan")
    row.errors = int(result["errors"])
    if result["first_error"]:
        row.note = result["first_error"][:120]
    return row


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m gradserve.bench.sdk", description=__doc__.splitlines()[0])
    p.add_argument("--client", choices=CLIENTS, required=True)
    p.add_argument("--target", "--url", required=True, help="http://host:port, or host:port for gRPC")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--duration-s", type=float, default=5.0)
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--uvloop", action="store_true", help="run the async clients on uvloop")
    args = p.parse_args(argv)
    result = run(args.client, args.target, args.concurrency, args.warmup_s, args.duration_s, args.uvloop)
    print(json.dumps({"client": args.client, "concurrency": args.concurrency, **result}), flush=True)


if __name__ == "__main__":
    main()
