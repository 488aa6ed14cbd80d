"""`gradserve bench`: throughput and latency of gradserve beside its floors.

What it measures (GitHub issue 4, item 7):

- **small requests**: ``cross_entropy`` on an 8x10 float32 input with int64 targets, at
  each concurrency (default 1, 16, 64), with dynamic batching on and off, over native
  HTTP (/v1 JSON), V2 binary HTTP (/v2, binary tensor extension) and V2 gRPC: req/s,
  p50 and p99 latency;
- **a large tensor**: ``relu`` on 16 MiB of float32 over V2 binary HTTP and gRPC: MiB/s
  of request payload;
- **gRPC streaming** (``grpc-stream``): the same V2 requests on ModelStreamInfer
  streams (perf_analyzer ``--streaming``), small and large;
- **system shared memory** (``shm``, large only): the 16 MiB relu with its input read
  from and its output written into registered shared-memory regions, each request a
  few hundred bytes of JSON over HTTP (Python load generator: perf_analyzer refuses
  shared memory for a model with optional inputs).

Each beside two references: in-process torch doing the same work in a loop (no
transport at all), and the floors of bench/floor_app.py, plain FastAPI served by
uvicorn with gradserve's options: an unbatched endpoint that reads a raw V2 binary body
and runs the same op, and a do-nothing endpoint that reads the body and answers.

Load generators. Python cannot generate small-request load fast enough to saturate a
server (its client costs as much CPU per request as the server does), so:

- V2 HTTP and gRPC (and the floors) are driven by Triton's ``perf_analyzer`` (C++) when
  it is installed (``scripts/install_perf_analyzer.sh`` puts it in .tools/);
- native HTTP (which perf_analyzer does not speak), and V2 when perf_analyzer is
  missing or cannot send the model's inputs, and the 16 MiB cells, by ``--load-procs``
  worker processes, each a uvloop loop of minimal keep-alive HTTP/1.1 connections
  ("py-http", several times cheaper per request than aiohttp) or grpc.aio calls,
  sharing the concurrency.

Every row reports the load generator's own CPU use and the server's, in percent of one
core, so a reader can see who was short of CPU. The server and the load generator share
the machine's cores: on a small machine the numbers measure both together.

The servers are started here (gradserve with ``--batching true`` and ``--batching
false``, and the floor app) on free ports on 127.0.0.1, unless ``--url``/``--grpc``
name a running gradserve. Every load is bounded by ``--duration-s``.

Modules: ``servers`` (starting the servers, CPU accounting), ``workloads`` (the ops,
request bodies, in-process torch), ``loadgen`` (the Python load generator),
``perf_analyzer`` (driving perf_analyzer), ``sdk`` (the SDK's clients as load
generators), ``runner`` (the cells of a plan),
``results`` (a measured row), ``report`` (the table); this module parses the
command line into a plan and runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from gradserve.bench.perf_analyzer import perf_analyzer_path
from gradserve.bench.report import machine_line, render_markdown, render_text
from gradserve.bench.runner import Bench, Plan
from gradserve.bench.servers import FLOOR_APP, Server, start_floor, start_gradserve
from gradserve.bench.workloads import Work, discover_work

__all__ = ["main"]

TRANSPORTS = ("native", "v2", "grpc", "grpc-stream", "shm", "sdk-http", "sdk-grpc")


def parse_list(text: str, allowed: Sequence[str] | None = None) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if allowed is not None:
        bad = [s for s in items if s not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(allowed)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradserve bench", description=__doc__.splitlines()[0])
    p.add_argument("--url", help="target a running gradserve over HTTP (e.g. http://127.0.0.1:8000)")
    p.add_argument("--grpc", help="its gRPC address (e.g. 127.0.0.1:8001)")
    p.add_argument("--duration-s", type=float, default=None, help="measured seconds per cell (default 3)")
    p.add_argument("--quick", action="store_true", help="short run: 1 s cells, concurrency 1 and 64")
    p.add_argument("--concurrency", default=None, help="small-request concurrencies (default 1,16,64)")
    p.add_argument("--large-concurrency", default="1", help="concurrencies of the 16 MiB relu (default 1)")
    p.add_argument(
        "--transports",
        default="native,v2,grpc,grpc-stream,shm",
        help="of native, v2, grpc, grpc-stream (ModelStreamInfer), shm (V2 HTTP, tensors in system "
        "shared memory; large section only), sdk-http, sdk-grpc (gradserve_client's sync client in "
        "threads and async client in tasks, small section only; not in the default)",
    )
    p.add_argument("--batching", default="on,off", help="on, off or both (ignored with --url)")
    p.add_argument(
        "--sections", default="small,large", help="small (cross_entropy 8x10), large (relu 16 MiB)"
    )
    p.add_argument(
        "--floors", action=argparse.BooleanOptionalAction, default=True, help="measure the FastAPI floors"
    )
    p.add_argument(
        "--torch", action=argparse.BooleanOptionalAction, default=True, help="measure in-process torch"
    )
    p.add_argument("--load-procs", type=int, default=2, help="Python load generator processes (default 2)")
    p.add_argument(
        "--perf-analyzer",
        default=None,
        help="perf_analyzer binary (default .tools/perf_analyzer or PATH); 'none' uses the Python load generator",
    )
    p.add_argument(
        "--large-loadgen",
        choices=("python", "perf_analyzer"),
        default="python",
        help="load generator of the 16 MiB cells (default python: perf_analyzer 2.50 tops out near "
        "200 MiB/s against a do-nothing endpoint here, and asks for every output incl. grad_x)",
    )
    p.add_argument("--out", type=Path, help="also write the report as markdown here")
    return p


def make_plan(args: argparse.Namespace) -> Plan:
    duration = args.duration_s if args.duration_s is not None else (1.0 if args.quick else 3.0)
    conc_text = args.concurrency or ("1,64" if args.quick else "1,16,64")
    batching = ["target"] if args.url else parse_list(args.batching, ("on", "off"))
    return Plan(
        duration_s=duration,
        concurrency=[int(c) for c in parse_list(conc_text)],
        large_concurrency=[int(c) for c in parse_list(args.large_concurrency)],
        transports=parse_list(args.transports, TRANSPORTS),
        batching=batching,
        sections=parse_list(args.sections, ("small", "large")),
        floors=args.floors and FLOOR_APP.exists(),
        torch=args.torch,
        perf_analyzer=perf_analyzer_path(args.perf_analyzer),
        large_loadgen=args.large_loadgen,
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    plan = make_plan(args)
    if args.url and not args.grpc:
        plan.transports = [t for t in plan.transports if "grpc" not in t]
    machine = machine_line()
    print(f"gradserve bench: {machine}", flush=True)
    print(
        f"cells of {plan.duration_s:g} s; load generator: "
        + (f"perf_analyzer ({plan.perf_analyzer}) for V2, " if plan.perf_analyzer else "")
        + f"py-http/grpc.aio in up to {args.load_procs} processes otherwise; "
        "server and load generator share the machine's CPUs",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="gradserve-bench-") as tmp,
        _servers(args, plan, Path(tmp)) as (servers, floor, work),
    ):
        bench = Bench(plan, Path(tmp), args.load_procs)
        try:
            bench.run(servers, floor, work)
        finally:
            bench.close()
    rows = bench.rows
    print()
    print(render_text(rows))
    if args.out is not None:
        header = (
            f"Machine: {machine}.\n\n"
            f"Command: `gradserve bench {' '.join(argv or [])}`; {plan.duration_s:g} s per cell.\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + render_markdown(rows))
        print(f"wrote {args.out}")


@contextlib.contextmanager
def _servers(
    args: argparse.Namespace, plan: Plan, tmp: Path
) -> Iterator[tuple[dict[str, Server], Server | None, Work]]:
    """gradserve (started per batching mode, or the running one at ``--url``), the work
    its metadata asks for, and the floor app mirroring that metadata; stopped on exit."""
    started: list[Server] = []
    try:
        servers: dict[str, Server] = {}
        if args.url:
            servers["target"] = Server("target", args.url.rstrip("/"), args.grpc)
        else:
            for b in plan.batching:
                server = start_gradserve(b == "on", tmp)
                started.append(server)
                servers[b] = server
        for server in servers.values():
            server.wait_ready()
        first = next(iter(servers.values()), None)
        work = discover_work(first.http if first is not None else None)
        floor = None
        if plan.floors:
            mirror = tmp / "mirror.json"
            mirror.write_text(json.dumps(work.metadata))
            floor = start_floor(tmp, mirror)
            started.append(floor)
            floor.wait_ready()
        yield servers, floor, work
    finally:
        for server in started:
            server.stop()
