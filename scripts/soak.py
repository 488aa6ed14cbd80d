#!/usr/bin/env python3
"""Soak: minutes of mixed load with faults against a real `gradserve serve` (issue 8, item 4).

Starts `python -m gradserve serve` on free 127.0.0.1 ports, samples it idle for a
baseline, then runs closed-loop workers for ``--duration-s`` over every transport:

- native REST ``/v1`` (activations and losses with gradients, init; JSON lists or b64),
- V2 REST JSON and binary (the SDK's ``AsyncClient``), gRPC ModelInfer (``AsyncGrpcClient``),

with faults mixed in at ``--fault-rate``: clients that disconnect mid-body (raw sockets,
a plain close or a reset) or send a whole request and leave, HTTP requests whose client
times out, gRPC calls cancelled or given a deadline too short to meet, oversize bodies
(a Content-Length over the limit: 413; a shape over the element cap: 413 /
RESOURCE_EXHAUSTED) and fuzzed bodies (random bytes, truncated JSON, lying binary
headers, undecodable gRPC messages: 400/422 / INVALID_ARGUMENT).

A sample of the valid answers (``--check-fraction``) is compared with torch computed
here (seeded inits bit for bit on the CPU). Every second a thread samples the server's
RSS and threads (/proc/<pid>/status), its open descriptors (/proc/<pid>/fd), its queue
depth (nv_inference_pending_request_count summed over /metrics) and the client-side
latency of the window. After the load the clients close and sampling goes on for
``--settle-s``: memory and descriptors should come back near their baseline.

Writes soak.csv, soak.png (matplotlib, Agg), soak-summary.txt and server.log into
``--out-dir`` and prints the summary; exits 1 on any 5xx, wrong answer, unexpected
status or growth verdict. Loads 127.0.0.1 only and stops by itself.

    .venv/bin/python scripts/soak.py --duration-s 60 --out-dir /tmp/soak [-- serve flags]

Not a CI test: ``tests/unit/test_soak_script.py`` checks its pure helpers only.

The parts live in scripts/soaklib/ (server, cases, load, outcomes, samples, report);
this file is the CLI and the run's order: baseline, load, settle, final check, report.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import torch

from gradserve_client import AsyncClient, AsyncGrpcClient, GradserveError

# soaklib sits next to this file. `python scripts/soak.py` puts this folder first on
# sys.path by itself; a loader by file path (tests/unit/test_soak_script.py) does not.
# Appended, not prepended: the other scripts here must not shadow installed modules.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)

# After the sys.path line above, hence E402.
from soaklib.cases import Case, compare, decode_native, native_body  # noqa: E402
from soaklib.load import Load  # noqa: E402
from soaklib.outcomes import Tally, is_failure, status_class  # noqa: E402
from soaklib.report import growth_verdict, plot, render_summary, write_csv  # noqa: E402
from soaklib.samples import Sample, Sampler, parse_pending, percentile  # noqa: E402
from soaklib.server import Server, cpu_seconds, start_server  # noqa: E402

# The pure helpers tests/unit/test_soak_script.py reaches through this file, and main.
__all__ = [
    "Sample",
    "growth_verdict",
    "is_failure",
    "main",
    "parse_pending",
    "percentile",
    "render_summary",
    "status_class",
]


async def final_check(server: Server) -> list[str]:
    """After the settle: one valid request per transport must still be answered right."""
    problems = []
    rng = random.Random(1)
    x = np.asarray([[-2.0, 0.0, 3.0]], dtype=np.float32)
    case = Case("activations", "relu", {"x": x}, {}, ["y", "grad_x"], True)
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
        r = await http.post("/v1/activations/relu", content=native_body(case, b64=False))
        if r.status_code != 200 or compare(case, decode_native(r.content)):
            problems.append(f"native final request: {r.status_code} {r.text[:200]}")
    for transport in ("v2-json", "v2-binary", "grpc"):
        client: AsyncClient | AsyncGrpcClient = (
            AsyncGrpcClient(server.grpc_target, timeout_s=10.0)
            if transport == "grpc"
            else AsyncClient(server.url, binary=transport == "v2-binary", timeout_s=10.0)
        )
        try:
            out = await client.infer("relu", {"x": x}, outputs=["y", "grad_x"])
            problem = compare(case, dict(out))
            if problem:
                problems.append(f"{transport} final request: {problem}")
        except GradserveError as exc:
            problems.append(f"{transport} final request: {exc}")
        finally:
            await client.aclose()
    del rng
    return problems


async def run_load(server: Server, tally: Tally, args: argparse.Namespace) -> float:
    load = Load(server, tally, args)
    start = time.monotonic()
    stop_at = start + args.duration_s
    try:
        await asyncio.gather(*(load.worker(args.seed * 1000 + i, stop_at) for i in range(args.workers)))
    finally:
        wall = time.monotonic() - start
        # Close every client before the settle so their connections are not counted as fds.
        await load.close()
    return wall


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration-s", type=float, default=600.0, help="load duration (default 600)")
    p.add_argument("--workers", type=int, default=24, help="closed-loop workers (default 24)")
    p.add_argument("--fault-rate", type=float, default=0.05, help="share of fault requests (default 0.05)")
    p.add_argument("--check-fraction", type=float, default=0.2, help="share of valid answers checked (0.2)")
    p.add_argument("--baseline-s", type=float, default=5.0, help="idle sampling before the load (5)")
    p.add_argument("--settle-s", type=float, default=20.0, help="idle sampling after the load (20)")
    p.add_argument("--interval-s", type=float, default=1.0, help="sampling interval (1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the server process (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    p.add_argument("--out-dir", type=Path, default=None, help="where outputs go (default: a new temp dir)")
    p.add_argument("serve_args", nargs="*", help="extra `gradserve serve` flags, after --")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir: Path = args.out_dir or Path(tempfile.mkdtemp(prefix="gradserve-soak-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    server_env = dict(item.split("=", 1) for item in args.server_env)
    server = start_server(out_dir, args.serve_args, server_env)
    print(
        f"server pid {server.proc.pid} on {server.url} and {server.grpc_target}; outputs in {out_dir}",
        flush=True,
    )
    tally = Tally()
    sampler = Sampler(server, tally, args.interval_s)
    exit_code = 0
    try:
        sampler.start()
        time.sleep(args.baseline_s)
        sampler.phase = "load"
        wall = asyncio.run(run_load(server, tally, args))
        sampler.phase = "after"
        time.sleep(args.settle_s)
        sampler.stopped.set()
        sampler.join()
        load_after = os.getloadavg()
        server_cpu = cpu_seconds(server.proc.pid)
        client_cpu = sum(os.times()[:2])
        final = asyncio.run(final_check(server))
    finally:
        sampler.stopped.set()
        code = server.stop()
    log = server.log_path.read_text(errors="replace")
    log_problems = [
        line for line in log.splitlines() if "Traceback" in line or " 500 " in line or "ERROR" in line
    ]
    samples = sampler.samples
    growth = growth_verdict(samples)
    conditions = [
        f"load {wall:.0f} s, {args.workers} workers, fault rate {args.fault_rate}, check fraction "
        f"{args.check_fraction}, seed {args.seed}, settle {args.settle_s:.0f} s",
        f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} "
        f"at the end (other work shares it); torch {torch.__version__}, serve flags {args.serve_args or 'default'}, "
        f"server env {server_env or 'default'}",
        f"CPU seconds over the run: server {server_cpu:.0f}, this load generator {client_cpu:.0f}",
        f"valid answers checked against torch: {tally.checked}; server exit code {code}; "
        f"log lines with Traceback/ERROR/500: {len(log_problems)}",
    ]
    for problem in final:
        tally.fail(problem)
    if code != 0:
        tally.fail(f"server exited with {code} on SIGTERM")
    for line in log_problems[:10]:
        tally.fail(f"server log: {line[:200]}")
    summary = render_summary(tally.counts, tally.latencies, tally.failures, growth, wall, conditions)
    print(summary)
    (out_dir / "soak-summary.txt").write_text(summary + "\n")
    write_csv(out_dir / "soak.csv", samples)
    plot(out_dir / "soak.png", samples, f"gradserve soak: {wall:.0f} s, {args.workers} workers")
    print(f"\nwrote {out_dir}/soak.csv, soak.png, soak-summary.txt, server.log")
    if tally.failures or not growth.ok:
        exit_code = 1
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
