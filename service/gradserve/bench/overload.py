"""Overload: goodput of a real server under 10x its peak concurrency.

Flow position: a load generator outside the server (like loadgen.py), used by
``scripts/overload.py`` and tests/e2e/test_overload.py. It starts ``gradserve serve`` on
free 127.0.0.1 ports (or targets a running one), measures the peak rate of the small
native request (cross_entropy 8x10 with its gradient) at a moderate concurrency, then
runs many closed-loop clients for a bounded time in two retry modes:

- ``retry-after``: after a 429/503 a client waits as the SDK does (the server's
  Retry-After, capped at 2 s, or a short jittered backoff without one);
- ``immediate``: it resends at once (the worst case: clients that ignore the hint).

It reports goodput (200 answers per second) as a ratio of the peak, p50/p99 latency of
the successful attempts, and every status seen. Clients are spread over spawned worker
processes, each a uvloop loop of minimal keep-alive HTTP/1.1 connections that reconnect
when the server closes them (as after a 503 with ``Connection: close``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from gradserve.bench.rawhttp import RawHttpConnection
from gradserve.bench.results import percentile
from gradserve.bench.servers import HOST, ROOT, Server, free_port, proc_cpu_s
from gradserve.bench.workloads import SMALL_OP, Work, native_small_body

MODES = ("retry-after", "immediate")
SDK_MAX_BACKOFF_S = 2.0  # gradserve_client.RetryPolicy.max_backoff_s
SDK_INITIAL_BACKOFF_S = 0.05  # gradserve_client.RetryPolicy.initial_backoff_s
ANSWER_TIMEOUT_S = 60.0


@dataclass
class LoadResult:
    """What a load of ``clients`` closed loops measured over ``duration_s``."""

    clients: int
    mode: str
    duration_s: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of 200 answers, seconds
    refusals_without_retry_after: int = 0  # 429/503 answers lacking Retry-After
    connection_errors: int = 0  # connects refused, connections lost without an answer
    server_cpu: float = float("nan")  # percent of one core over the window

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def goodput(self) -> float:
        return self.ok / self.duration_s

    def p(self, q: float) -> float:
        return percentile(sorted(self.latencies), q) * 1e3 if self.latencies else float("nan")


def small_request(url: str) -> bytes:
    """The whole keep-alive request: POST /v1/losses/cross_entropy, 8x10 with grad."""
    body = native_small_body(Work(small_outputs=["loss", "grad_input"], large_outputs=[]))
    host = url.removeprefix("http://").rstrip("/")
    head = (
        f"POST /v1/losses/{SMALL_OP} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def run_load(
    url: str, clients: int, duration_s: float, mode: str, procs: int = 2, server_pid: int | None = None
) -> LoadResult:
    """``clients`` closed loops against ``url`` for ``duration_s`` (after a short warm-up,
    in which the connections open), spread over ``procs`` worker processes."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    n = max(1, min(procs, clients))
    shares = [clients // n + (1 if i < clients % n else 0) for i in range(n)]
    start_at = time.time() + 1.5
    request = small_request(url)
    with get_context("spawn").Pool(n) as pool:
        pending = pool.starmap_async(_worker, [(url, request, c, mode, start_at, duration_s) for c in shares])
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = proc_cpu_s(server_pid)
        time.sleep(max(0.0, start_at + duration_s - time.time()))
        cpu1 = proc_cpu_s(server_pid)
        parts = pending.get(timeout=duration_s + 120)
    result = LoadResult(clients, mode, duration_s, server_cpu=100 * (cpu1 - cpu0) / duration_s)
    for part in parts:
        result.statuses.update({int(k): v for k, v in part["statuses"].items()})
        result.latencies += part["latencies"]
        result.refusals_without_retry_after += part["no_retry_after"]
        result.connection_errors += part["connection_errors"]
    return result


def _worker(
    url: str, request: bytes, clients: int, mode: str, start_at: float, duration_s: float
) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_load(url, request, clients, mode, start_at, duration_s))
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        return asyncio.run(_load(url, request, clients, mode, start_at, duration_s))


async def _load(
    url: str, request: bytes, clients: int, mode: str, start_at: float, duration_s: float
) -> dict[str, Any]:
    start = time.perf_counter() + (start_at - time.time())
    end = start + duration_s
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    counts = {"no_retry_after": 0, "connection_errors": 0}
    rng = random.Random()

    async def client() -> None:
        conn: RawHttpConnection | None = None
        try:
            while (t0 := time.perf_counter()) < end:
                try:
                    if conn is None or conn.closed:
                        conn = await RawHttpConnection.open(host, int(port))
                    t0 = time.perf_counter()
                    status, retry_after, close = await asyncio.wait_for(conn.send(request), ANSWER_TIMEOUT_S)
                except (OSError, TimeoutError):
                    # Refused connect or a connection closed without an answer: back off
                    # a little in both modes, or a refusing listener makes this a spin.
                    if start <= time.perf_counter() <= end:
                        counts["connection_errors"] += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                    await asyncio.sleep(rng.uniform(0, SDK_INITIAL_BACKOFF_S))
                    continue
                t1 = time.perf_counter()
                if start <= t1 <= end:
                    statuses[status] += 1
                    if status == 200:
                        latencies.append(t1 - t0)
                    elif status in (429, 503) and retry_after is None:
                        counts["no_retry_after"] += 1
                if close:
                    conn.close()
                    conn = None
                if status in (429, 503) and mode == "retry-after":
                    # The SDK's RetryPolicy: full jitter, at least Retry-After (capped).
                    delay = rng.uniform(0, SDK_INITIAL_BACKOFF_S)
                    if retry_after is not None:
                        delay = max(delay, min(retry_after, SDK_MAX_BACKOFF_S))
                    await asyncio.sleep(min(delay, max(0.0, end - time.perf_counter())))
        finally:
            if conn is not None:
                conn.close()

    tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
    # Requests still unanswered at the end of the window do not count; do not wait long.
    _, late = await asyncio.wait(tasks, timeout=max(0.0, end - time.perf_counter()) + 2.0)
    for task in late:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*late, return_exceptions=True)
    return {"statuses": dict(statuses), "latencies": latencies, **counts}


def start_server(log_dir: Path, extra_args: Sequence[str] = ()) -> Server:
    """``gradserve serve`` on a free 127.0.0.1 port (HTTP only), waited for ready."""
    port = free_port()
    cmd = [sys.executable, "-m", "gradserve", "serve", "--host", HOST, "--http-port", str(port)]
    cmd += ["--grpc-port", "0", "--log-level", "warning", *extra_args]
    log_path = log_dir / "overload-server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    server = Server("gradserve", f"http://{HOST}:{port}", None, proc, log_path)
    server.wait_ready()
    return server


def _row(name: str, r: LoadResult, peak: float) -> str:
    refused = r.statuses.get(429, 0) + r.statuses.get(503, 0)
    other = {s: c for s, c in sorted(r.statuses.items()) if s not in (200, 429, 503)}
    return (
        f"| {name} | {r.clients} | {r.goodput:,.0f} | {r.goodput / peak:.2f} | {r.p(50):,.1f} | "
        f"{r.p(99):,.1f} | {r.statuses.get(429, 0):,} | {r.statuses.get(503, 0):,} | "
        f"{refused / r.duration_s:,.0f} | {r.connection_errors:,} | {other or '-'} | {r.server_cpu:.0f} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one on free ports)")
    parser.add_argument("--peak-clients", type=int, default=64, help="concurrency of the peak run")
    parser.add_argument("--clients", type=int, default=1000, help="closed-loop clients of the overload")
    parser.add_argument("--duration-s", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--procs", type=int, default=2, help="load worker processes")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {MODES}")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument(
        "server_args", nargs="*", help="extra `gradserve serve` flags (after --), for the started server"
    )
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        server = (
            Server("running", args.url.rstrip("/"), None)
            if args.url
            else start_server(Path(tmp), args.server_args)
        )
        try:
            print(f"server {server.http}; {args.duration_s:g} s per run", flush=True)
            peak = run_load(
                server.http, args.peak_clients, args.duration_s, "immediate", args.procs, server.pid
            )
            print(f"peak ({args.peak_clients} clients): {peak.goodput:,.0f} req/s", flush=True)
            runs = [("peak", peak)]
            for mode in modes:
                time.sleep(1.0)
                result = run_load(server.http, args.clients, args.duration_s, mode, args.procs, server.pid)
                runs.append((mode, result))
                print(
                    f"{mode} ({args.clients} clients): {result.goodput / peak.goodput:.2f} of peak",
                    flush=True,
                )
            time.sleep(1.0)
            after = run_load(server.http, 1, 1.0, "immediate", 1, server.pid)
        finally:
            server.stop()
    base = max(peak.goodput, 1e-9)
    print()
    print(
        "| run | clients | goodput req/s | of peak | p50 ms | p99 ms | 429 | 503 | refusals/s "
        "| conn errors | other statuses | server CPU% |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs:
        print(_row(name, r, base))
    print(f"\nafter the overload, one client: {after.goodput:,.0f} req/s, statuses {dict(after.statuses)}")
    if args.json:
        figures = {
            name: {
                "clients": r.clients,
                "goodput": r.goodput,
                "ratio": r.goodput / base,
                "p50_ms": r.p(50),
                "p99_ms": r.p(99),
                "statuses": dict(r.statuses),
                "connection_errors": r.connection_errors,
            }
            for name, r in runs
        }
        args.json.write_text(json.dumps(figures, indent=2))
    return 0
