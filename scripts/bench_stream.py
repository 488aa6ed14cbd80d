#!/usr/bin/env python3
"""The SDK's streaming mode against its unary calls, on the bench's small workload
(issue 12 item 1): ``loss("cross_entropy", x, t, grad=True)``, x 8x10 float32, t 8
int64, at ``--concurrency`` calls in flight. A measurement script, not a CI test
(tests/clients/test_stream_client.py checks behaviour; docs/sdk.md has the figures).

Starts `python -m gradserve serve` on free 127.0.0.1 ports (default settings), then
runs each mode in a fresh client process, one after the other (``--rounds`` times,
in turn), for ``--duration-s`` after a warm-up:

- ``unary``: one ``AsyncGrpcClient``, ``concurrency`` tasks each awaiting ``loss`` in
  a closed loop (a ModelInfer rpc per call);
- ``stream``: the same tasks awaiting ``loss`` on one ``client.stream()``;
- ``infer_many``: ``client.infer_many`` over lists of 2,000 calls, ``max_in_flight``
  = ``concurrency`` (a stream per list).

Prints one line per run: calls/s, p50 and p99 latency (unary and stream), the client
process's CPU; then each mode's median. Run it under the bench lock on a shared machine:

    flock /tmp/gradserve-bench.lock .venv/bin/python scripts/bench_stream.py --rounds 3 --duration-s 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODES = ("unary", "stream", "infer_many")
MANY = 2000


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    mode: str, target: str, concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    import numpy as np

    from gradserve_client import AsyncGrpcClient, InferCall

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 10)).astype(np.float32)
    t = rng.integers(0, 10, 8).astype(np.int64)
    latencies: list[float] = []
    async with AsyncGrpcClient(target) as client:
        await client.loss("cross_entropy", x, t, grad=True)  # metadata cached, channel up
        start = time.perf_counter() + warmup_s
        end = start + duration_s
        cpu: list[float] = []

        async def marks() -> None:
            for mark in (start, end):
                await asyncio.sleep(max(0.0, mark - time.perf_counter()))
                cpu.append(_cpu_s())

        if mode == "infer_many":
            # Whole lists only: the rate is calls over the time the measured lists took.
            calls = [InferCall("cross_entropy", {"input": x, "target": t}, grad=True)] * MANY
            await client.infer_many(calls, max_in_flight=concurrency)  # warm-up
            done, cpu0, t0 = 0, _cpu_s(), time.perf_counter()
            while time.perf_counter() - t0 < duration_s:
                done += len(await client.infer_many(calls, max_in_flight=concurrency))
            elapsed = time.perf_counter() - t0
            return {"mode": mode, "calls_s": done / elapsed, "cpu_pct": 100 * (_cpu_s() - cpu0) / elapsed}

        async def loop(call: Any) -> None:
            while (t0 := time.perf_counter()) < end:
                await call("cross_entropy", x, t, grad=True)
                t1 = time.perf_counter()
                if t0 >= start and t1 <= end:
                    latencies.append(t1 - t0)

        if mode == "unary":
            await asyncio.gather(marks(), *(loop(client.loss) for _ in range(concurrency)))
        else:
            async with client.stream() as s:
                await asyncio.gather(marks(), *(loop(s.loss) for _ in range(concurrency)))
    lat = sorted(latencies)
    return {
        "mode": mode,
        "calls_s": len(lat) / duration_s,
        "p50_ms": 1e3 * lat[len(lat) // 2],
        "p99_ms": 1e3 * lat[int(len(lat) * 0.99)],
        "cpu_pct": 100 * (cpu[1] - cpu[0]) / duration_s,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", "-c", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # mode,target: one measurement
    args = parser.parse_args()
    if args.child:
        mode, target = args.child.split(",")
        result = asyncio.run(measure(mode, target, args.concurrency, args.warmup_s, args.duration_s))
        print(json.dumps(result))
        return
    http, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service")}
    with tempfile.TemporaryFile() as log:
        cmd = [sys.executable, "-m", "gradserve", "serve", "--host", "127.0.0.1"]
        server = subprocess.Popen(
            [*cmd, "--http-port", str(http), "--grpc-port", str(grpc_port)], stdout=log, stderr=log, env=env
        )
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            rates: dict[str, list[float]] = {}
            for _ in range(args.rounds):  # modes in turn: drifting load hits each alike
                for mode in args.modes.split(","):
                    child = [sys.executable, __file__, "--child", f"{mode},127.0.0.1:{grpc_port}"]
                    child += ["-c", str(args.concurrency), "--duration-s", str(args.duration_s)]
                    child += ["--warmup-s", str(args.warmup_s)]
                    out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
                    print(out.strip(), flush=True)
                    rates.setdefault(mode, []).append(json.loads(out)["calls_s"])
            for mode, values in rates.items():
                print(f"{mode}: median {statistics.median(values):.0f} calls/s over {len(values)} runs")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
