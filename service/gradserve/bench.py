"""`gradserve bench`: throughput and latency of gradserve beside its floors.

What it measures (GitHub issue 4, item 7):

- **small requests**: ``cross_entropy`` on an 8x10 float32 input with int64 targets, at
  each concurrency (default 1, 16, 64), with dynamic batching on and off, over native
  HTTP (/v1 JSON), V2 binary HTTP (/v2, binary tensor extension) and V2 gRPC: req/s,
  p50 and p99 latency;
- **a large tensor**: ``relu`` on 16 MiB of float32 over V2 binary HTTP and gRPC: MiB/s
  of request payload.

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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.pool import Pool
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SMALL_OP = "cross_entropy"
LARGE_OP = "relu"
SMALL_SHAPE = (8, 10)
MiB = 1024 * 1024
LARGE_BYTES = 16 * MiB
LARGE_ELEMENTS = LARGE_BYTES // 4
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
FLOOR_APP = ROOT / "bench" / "floor_app.py"
DEFAULT_PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer"
TRANSPORTS = ("native", "v2", "grpc")
NOOP_PREFIX = "noop_"  # the floor app's do-nothing model for an op: noop_<op>
TRANSPORT_LABEL = {"native": "native HTTP", "v2": "V2 binary HTTP", "grpc": "V2 gRPC"}


# -- the work itself (shared with bench/floor_app.py) ------------------------------


def run_small_op(x: torch.Tensor, target: torch.Tensor, grad: bool) -> dict[str, torch.Tensor]:
    """cross_entropy (mean) and, if asked, its gradient: softmax(x) - onehot, over N."""
    import torch
    import torch.nn.functional as F

    out = {"loss": F.cross_entropy(x, target)}
    if grad:
        g = torch.softmax(x, dim=1)
        g[torch.arange(x.shape[0]), target] -= 1.0
        out["grad_input"] = g.div_(x.shape[0])
    return out


def run_large_op(x: torch.Tensor, grad: bool) -> dict[str, torch.Tensor]:
    """relu and, if asked, its gradient for an all-ones upstream gradient."""
    import torch

    out = {"y": torch.relu(x)}
    if grad:
        out["grad_x"] = (x > 0).to(x.dtype)
    return out


# -- results -----------------------------------------------------------------------


@dataclass
class Row:
    """One measured cell."""

    section: str  # "small" or "large"
    target: str  # "gradserve", "floor op", "floor no-op", "torch"
    transport: str  # key of TRANSPORT_LABEL, or "in-process"
    batching: str  # "on", "off", "-" or "target"
    concurrency: int
    loadgen: str
    req_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    server_cpu: float = float("nan")  # percent of one core
    loadgen_cpu: float = float("nan")
    errors: int = 0
    note: str = ""

    @property
    def mib_s(self) -> float:
        return self.req_s * LARGE_BYTES / MiB


@dataclass
class Work:
    """What each request asks for: the outputs (gradients or not) and its bytes."""

    small_outputs: list[str]
    large_outputs: list[str]
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def small_grad(self) -> bool:
        return "grad_input" in self.small_outputs

    @property
    def large_grad(self) -> bool:
        return "grad_x" in self.large_outputs


# -- processes and ports -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), NaN if unknown."""
    if pid is None:
        return float("nan")
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@dataclass
class Server:
    """A server process started by the bench (or a running one it targets)."""

    name: str
    http: str  # base URL
    grpc: str | None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def wait_ready(self, path: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if http_get(self.http + path, timeout=1.0)[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _spawn(name: str, cmd: list[str], log_dir: Path, http_port: int, grpc_port: int | None) -> Server:
    log_path = log_dir / f"{name.replace(' ', '_')}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    grpc = f"{HOST}:{grpc_port}" if grpc_port else None
    return Server(name, f"http://{HOST}:{http_port}", grpc, proc, log_path)


def start_gradserve(batching: bool, log_dir: Path) -> Server:
    http_port, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "gradserve",
        "serve",
        "--host",
        HOST,
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--batching",
        "true" if batching else "false",
        "--log-level",
        "warning",
    ]
    return _spawn(f"gradserve batching {'on' if batching else 'off'}", cmd, log_dir, http_port, grpc_port)


def start_floor(log_dir: Path, mirror: Path | None) -> Server:
    port = free_port()
    cmd = [sys.executable, str(FLOOR_APP), "--port", str(port)]
    if mirror is not None:
        cmd += ["--mirror", str(mirror)]
    return _spawn("floor", cmd, log_dir, port, None)


# -- request bodies ----------------------------------------------------------------


def small_arrays(seed: int = 0) -> tuple[bytes, bytes, list[list[float]], list[int]]:
    """The 8x10 input and 8 targets: raw little-endian bytes and JSON lists."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SMALL_SHAPE).astype("<f4")
    t = rng.integers(0, SMALL_SHAPE[1], SMALL_SHAPE[0]).astype("<i8")
    return x.tobytes(), t.tobytes(), x.tolist(), t.tolist()


def large_bytes() -> bytes:
    import numpy as np

    return np.random.default_rng(1).standard_normal(LARGE_ELEMENTS).astype("<f4").tobytes()


def v2_binary_body(
    model: str, inputs: list[tuple[str, str, list[int], bytes]], outputs: list[str]
) -> tuple[bytes, dict[str, str]]:
    """A V2 binary-extension request, laid out as perf_analyzer sends it."""
    header = {
        "id": "",
        "inputs": [
            {"name": n, "shape": s, "datatype": d, "parameters": {"binary_data_size": len(b)}}
            for n, d, s, b in inputs
        ],
        "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    return head + b"".join(b for *_, b in inputs), headers


def small_inputs() -> list[tuple[str, str, list[int], bytes]]:
    xb, tb, _, _ = small_arrays()
    return [("input", "FP32", list(SMALL_SHAPE), xb), ("target", "INT64", [SMALL_SHAPE[0]], tb)]


def large_inputs(rank: int = 2) -> list[tuple[str, str, list[int], bytes]]:
    """16 MiB of float32 named x: [2048, 2048], or flat for a rank-1 model."""
    side = int(LARGE_ELEMENTS**0.5)
    return [("x", "FP32", [side, side] if rank == 2 else [LARGE_ELEMENTS], large_bytes())]


# -- the Python load generator (worker processes) ----------------------------------


@dataclass
class LoadSpec:
    """What one worker process sends: an HTTP POST, or a gRPC ModelInfer."""

    kind: str  # "http" or "grpc"
    target: str  # URL, or host:port
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    model: str = ""
    inputs: list[tuple[str, str, list[int], bytes]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


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
        conns = [await _HttpConnection.open(spec.target) for _ in range(concurrency)]
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

            async def call() -> bool:
                await stub.ModelInfer(request)
                return True

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


def _http_request_bytes(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The whole HTTP/1.1 keep-alive request, built once and resent as is."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    lines = [f"POST /{path} HTTP/1.1", f"Host: {hostport}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _http_call(conn: _HttpConnection, request: bytes) -> Callable[[], Awaitable[bool]]:
    async def call() -> bool:
        return await conn.send(request) == 200

    return call


class _HttpConnection(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client connection: one request at a time, the
    response framed by Content-Length. Far cheaper per request than aiohttp or httpx,
    so that the load generator, which shares the CPUs with the server, takes less."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.status = 0
        self.waiter: asyncio.Future[int] | None = None

    @classmethod
    async def open(cls, url: str) -> _HttpConnection:
        host, _, port = url.removeprefix("http://").partition("/")[0].partition(":")
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, int(port or 80))
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            self.need = end + 4 + length
        if len(self.buf) >= self.need:
            del self.buf[: self.need]
            self.need = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("server closed the connection"))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        if self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


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
        row = Row("", "", "", "", concurrency, f"py-http x{n}" if spec.kind == "http" else f"grpc.aio x{n}")
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


# -- perf_analyzer -----------------------------------------------------------------


def perf_analyzer_path(arg: str | None) -> Path | None:
    if arg == "none":
        return None
    path = Path(arg) if arg else DEFAULT_PERF_ANALYZER
    if not path.exists():
        found = shutil.which("perf_analyzer")
        return Path(found) if found else None
    return path


def perf_analyzer_can_drive(metadata: dict[str, Any]) -> bool:
    """perf_analyzer 2.50 cannot send a 0-d tensor ("unable to set shape for the
    input"), even an optional one it is given data for: a model whose metadata lists
    an input of shape [] must be driven by the Python load generator."""
    return all(list(inp.get("shape", [-1])) != [] for inp in metadata.get("inputs", []))


def perf_analyzer_input_data(
    path: Path, config: dict[str, Any], inputs: list[tuple[str, str, list[int], bytes]]
) -> list[str]:
    """Write the request's tensors as perf_analyzer JSON input data (base64, with
    shapes); only the given inputs are sent, so optional ones stay absent. Returns the
    flags: ``--input-data`` and, for a model with max_batch_size > 0, ``-b``."""
    import base64

    batched = int(config.get("max_batch_size", 0) or 0) > 0
    entry = {
        name: {"b64": base64.b64encode(raw).decode(), "shape": shape[1:] if batched else shape}
        for name, _, shape, raw in inputs
    }
    if not path.exists():
        path.write_text(json.dumps({"data": [entry]}))
    flags = ["--input-data", str(path)]
    if batched:
        flags += ["-b", str(inputs[0][2][0])]
    return flags


def run_perf_analyzer(
    pa: Path,
    protocol: str,
    target: str,
    model: str,
    shape_args: list[str],
    concurrency: int,
    duration_s: float,
    server_pid: int | None,
    workdir: Path,
) -> Row:
    """One perf_analyzer run at one concurrency: 3 windows of duration/3 each."""
    csv_path = workdir / f"pa-{model}-{protocol}-{concurrency}-{time.monotonic_ns()}.csv"
    window_ms = max(300, int(duration_s * 1000 / 3))
    cmd = [
        str(pa),
        "-m",
        model,
        "-u",
        target,
        "-i",
        protocol,
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-interval",
        str(window_ms),
        "--stability-percentage",
        "1000",
        "--max-trials",
        "6",
        "--percentile=99",
        "-f",
        str(csv_path),
        *shape_args,
    ]
    batch = int(shape_args[shape_args.index("-b") + 1]) if "-b" in shape_args else 1
    row = Row("", "", "", "", concurrency, "perf_analyzer")
    cpu0, child0, t0 = proc_cpu_s(server_pid), children_cpu_s(), time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s * 6 + 120)
    except subprocess.TimeoutExpired:
        row.note = "perf_analyzer timed out"
        return row
    wall = time.monotonic() - t0
    row.server_cpu = 100 * (proc_cpu_s(server_pid) - cpu0) / wall
    row.loadgen_cpu = 100 * (children_cpu_s() - child0) / wall
    if proc.returncode != 0 or not csv_path.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        row.note = "perf_analyzer failed: " + " | ".join(tail)
        row.errors = 1
        return row
    with open(csv_path, newline="") as f:
        record = next(csv.DictReader(f))
    row.req_s = float(record["Inferences/Second"]) / batch
    row.p50_ms = float(record["p50 latency"]) / 1e3
    row.p99_ms = float(record["p99 latency"]) / 1e3
    return row


# -- in-process torch --------------------------------------------------------------


def measure_torch(section: str, work: Work, duration_s: float) -> Row:
    """The op in a loop on one thread (as the server's worker): no transport at all."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if section == "small":
            xb, tb, _, _ = small_arrays()
            x = torch.frombuffer(bytearray(xb), dtype=torch.float32).reshape(SMALL_SHAPE)
            t = torch.frombuffer(bytearray(tb), dtype=torch.int64)

            def step() -> None:
                run_small_op(x, t, work.small_grad)

        else:
            xl = torch.frombuffer(bytearray(large_bytes()), dtype=torch.float32)

            def step() -> None:
                run_large_op(xl, work.large_grad)

        for _ in range(3):
            step()
        lat: list[float] = []
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t_end = time.perf_counter() + duration_s
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            step()
            lat.append(time.perf_counter() - t0)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        torch.set_num_threads(threads)
    lat.sort()
    row = Row(section, "torch", "in-process", "-", 1, "loop, 1 thread")
    row.req_s = len(lat) / sum(lat)
    row.p50_ms, row.p99_ms = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
    row.server_cpu = 100 * (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / duration_s
    return row


# -- the run -----------------------------------------------------------------------


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
    p.add_argument("--transports", default="native,v2,grpc", help="of native, v2, grpc")
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


@dataclass
class Plan:
    duration_s: float
    concurrency: list[int]
    large_concurrency: list[int]
    transports: list[str]
    batching: list[str]
    sections: list[str]
    floors: bool
    torch: bool
    perf_analyzer: Path | None
    large_loadgen: str = "python"


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


def discover_work(server: Server | None) -> Work:
    """Read gradserve's V2 metadata and config: perf_analyzer asks for every output the
    metadata lists, so every other client (and the floors) ask for the same ones."""
    work = Work(["loss", "grad_input"], ["y"])
    if server is None:
        return work
    for op in (SMALL_OP, LARGE_OP):
        with contextlib.suppress(OSError, ValueError):
            code, meta = http_get(f"{server.http}/v2/models/{op}")
            ccode, conf = http_get(f"{server.http}/v2/models/{op}/config")
            if code == 200 and ccode == 200:
                metadata, config = json.loads(meta), json.loads(conf)
                work.metadata[op] = {"metadata": metadata, "config": config}
                names = [o["name"] for o in metadata.get("outputs", [])]
                if op == SMALL_OP:
                    work.small_outputs = names
    return work


def native_small_body(work: Work) -> bytes:
    _, _, x, t = small_arrays()
    return json.dumps({"input": x, "target": t, "grad": work.small_grad}).encode()


class Bench:
    """Runs the plan's cells and collects rows."""

    def __init__(self, plan: Plan, workdir: Path, load_procs: int) -> None:
        self.plan = plan
        self.workdir = workdir
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self._pyload: PyLoad | None = None
        self._load_procs = load_procs

    @property
    def pyload(self) -> PyLoad:
        if self._pyload is None:
            self._pyload = PyLoad(self._load_procs)
        return self._pyload

    def close(self) -> None:
        if self._pyload is not None:
            self._pyload.close()

    def add(self, row: Row, section: str, target: str, transport: str, batching: str) -> None:
        row.section, row.target, row.transport, row.batching = section, target, transport, batching
        self.rows.append(row)
        print(format_row_line(row), flush=True)

    def v2_cell(
        self,
        server: Server,
        protocol: str,
        model: str,
        work: Work,
        concurrency: int,
        inputs: list[tuple[str, str, list[int], bytes]],
        outputs: list[str],
        allow_pa: bool = True,
    ) -> Row:
        """One V2 cell over HTTP or gRPC: perf_analyzer if there is one (and it can send
        the model's inputs), else the Python load generator."""
        pa = self.plan.perf_analyzer
        duration = self.plan.duration_s
        meta = work.metadata.get(model.removeprefix(NOOP_PREFIX), {})
        if allow_pa and pa is not None and perf_analyzer_can_drive(meta.get("metadata", {})):
            data = self.workdir / f"pa-data-{model}.json"
            shape_args = perf_analyzer_input_data(data, meta.get("config", {}), inputs)
            target = server.grpc if protocol == "grpc" else server.http.removeprefix("http://")
            assert target is not None
            return run_perf_analyzer(
                pa, protocol, target, model, shape_args, concurrency, duration, server.pid, self.workdir
            )
        if protocol == "grpc":
            assert server.grpc is not None
            spec = LoadSpec("grpc", server.grpc, model=model, inputs=inputs, outputs=outputs)
        else:
            body, headers = v2_binary_body(model, inputs, outputs)
            spec = LoadSpec("http", f"{server.http}/v2/models/{model}/infer", body, headers)
        return self.pyload.run(spec, concurrency, duration, server.pid)

    def run(self, servers: dict[str, Server], floor: Server | None, work: Work) -> None:
        plan = self.plan
        d = plan.duration_s
        if "small" in plan.sections:
            if plan.torch:
                self.add(measure_torch("small", work, d), "small", "torch", "in-process", "-")
            s_inputs = small_inputs()
            if floor is not None:
                self._floor_small(floor, work, s_inputs)
            native_body = native_small_body(work)
            for transport in plan.transports:
                for batching, server in servers.items():
                    if transport == "grpc" and server.grpc is None:
                        continue
                    for c in plan.concurrency:
                        if transport == "native":
                            spec = LoadSpec(
                                "http",
                                f"{server.http}/v1/losses/{SMALL_OP}",
                                native_body,
                                {"Content-Type": "application/json"},
                            )
                            row = self.pyload.run(spec, c, d, server.pid)
                        else:
                            proto = "grpc" if transport == "grpc" else "http"
                            row = self.v2_cell(server, proto, SMALL_OP, work, c, s_inputs, work.small_outputs)
                        self.add(row, "small", "gradserve", transport, batching)
        if "large" in plan.sections:
            pa_large = plan.large_loadgen == "perf_analyzer"
            if pa_large:  # perf_analyzer asks for every output the metadata lists
                work.large_outputs = [
                    o["name"] for o in work.metadata.get(LARGE_OP, {}).get("metadata", {}).get("outputs", [])
                ] or work.large_outputs
            if plan.torch:
                self.add(measure_torch("large", work, d), "large", "torch", "in-process", "-")
            dims = work.metadata.get(LARGE_OP, {}).get("metadata", {}).get("inputs", [{}])[0].get("shape")
            l_inputs = large_inputs(len(dims) if dims else 2)
            if floor is not None:
                for c in plan.large_concurrency:
                    row = self.v2_cell(floor, "http", NOOP_PREFIX + LARGE_OP, work, c, l_inputs, [], pa_large)
                    self.add(row, "large", "floor no-op", "v2", "-")
                    row = self.v2_cell(
                        floor, "http", LARGE_OP, work, c, l_inputs, work.large_outputs, pa_large
                    )
                    self.add(row, "large", "floor op", "v2", "-")
            for transport in plan.transports:
                if transport == "native":
                    continue
                for batching, server in servers.items():
                    if transport == "grpc" and server.grpc is None:
                        continue
                    for c in plan.large_concurrency:
                        proto = "grpc" if transport == "grpc" else "http"
                        row = self.v2_cell(
                            server, proto, LARGE_OP, work, c, l_inputs, work.large_outputs, pa_large
                        )
                        self.add(row, "large", "gradserve", transport, batching)

    def _floor_small(
        self, floor: Server, work: Work, inputs: list[tuple[str, str, list[int], bytes]]
    ) -> None:
        """The floors at each concurrency, with each load generator the gradserve rows
        use, so every ratio compares servers driven by the same client."""
        plan, d = self.plan, self.plan.duration_s
        body, headers = v2_binary_body(SMALL_OP, inputs, work.small_outputs)
        meta = work.metadata.get(SMALL_OP, {}).get("metadata", {})
        pa_small = plan.perf_analyzer is not None and perf_analyzer_can_drive(meta)
        if plan.perf_analyzer is not None and not pa_small:
            self.notes.append(
                f"perf_analyzer cannot drive {SMALL_OP}: its metadata lists a 0-d input (shape []), which "
                "perf_analyzer 2.50 cannot send; its V2 rows use the Python load generator."
            )
            print("note: " + self.notes[-1], flush=True)
        for c in plan.concurrency:
            if "native" in plan.transports or not pa_small:
                spec = LoadSpec(
                    "http", f"{floor.http}/v2/models/{NOOP_PREFIX}{SMALL_OP}/infer", body, headers
                )
                self.add(self.pyload.run(spec, c, d, floor.pid), "small", "floor no-op", "v2", "-")
                spec = LoadSpec("http", f"{floor.http}/v2/models/{SMALL_OP}/infer", body, headers)
                self.add(self.pyload.run(spec, c, d, floor.pid), "small", "floor op", "v2", "-")
            if pa_small and ({"v2", "grpc"} & set(plan.transports)):
                row = self.v2_cell(floor, "http", NOOP_PREFIX + SMALL_OP, work, c, inputs, [])
                self.add(row, "small", "floor no-op", "v2", "-")
                row = self.v2_cell(floor, "http", SMALL_OP, work, c, inputs, work.small_outputs)
                self.add(row, "small", "floor op", "v2", "-")


# -- report ------------------------------------------------------------------------


def _loadgen_family(loadgen: str) -> str:
    return loadgen.split(" ")[0].replace("grpc.aio", "py-http")


def _reference(rows: list[Row], row: Row, target: str) -> Row | None:
    """The floor row measured with the same load generator at the same concurrency."""
    for ref in rows:
        if (
            ref.section == row.section
            and ref.target == target
            and ref.concurrency == row.concurrency
            and _loadgen_family(ref.loadgen) == _loadgen_family(row.loadgen)
            and ref.req_s > 0
        ):
            return ref
    return None


def _ratio(value: float, ref: Row | None) -> str:
    if ref is None or value <= 0:
        return "-"
    return f"{value / ref.req_s:.2f}x"


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"  # NaN -> "-"


def table(rows: list[Row]) -> list[list[str]]:
    """Header + cells of the report: small rows first, then the large tensor's."""
    out: list[list[str]] = []
    torch_rows = {r.section: r for r in rows if r.target == "torch"}
    for section in ("small", "large"):
        sec = [r for r in rows if r.section == section]
        if not sec:
            continue
        unit = "req/s" if section == "small" else "MiB/s"
        floor = "floor op" if section == "small" else "floor no-op"
        out.append(
            [
                f"{SMALL_OP} 8x10" if section == "small" else f"{LARGE_OP} 16 MiB",
                "transport",
                "batch",
                "conc",
                unit,
                "p50 ms",
                "p99 ms",
                f"vs {floor}",
                "vs torch",
                "server CPU%",
                "loadgen CPU%",
                "load generator",
            ]
        )
        for r in sec:
            value = r.req_s if section == "small" else r.mib_s
            ref = _reference(rows, r, floor) if r.target not in ("torch", floor) else None
            torch_ref = torch_rows.get(section) if r.target != "torch" else None
            note = f" ({r.note})" if r.note else ""
            errs = f" [{r.errors} errors]" if r.errors else ""
            out.append(
                [
                    r.target,
                    TRANSPORT_LABEL.get(r.transport, r.transport),
                    r.batching,
                    str(r.concurrency),
                    f"{value:,.0f}" + errs,
                    _fmt(r.p50_ms, 3 if r.p50_ms < 1 else 2),
                    _fmt(r.p99_ms, 3 if r.p99_ms < 1 else 2),
                    _ratio(r.req_s, ref),
                    _ratio(r.req_s, torch_ref),
                    _fmt(r.server_cpu, 0),
                    _fmt(r.loadgen_cpu, 0),
                    r.loadgen + note,
                ]
            )
    return out


def format_row_line(r: Row) -> str:
    value = f"{r.req_s:,.0f} req/s" if r.section == "small" else f"{r.mib_s:,.0f} MiB/s"
    return (
        f"  {r.section:5} {r.target:11} {TRANSPORT_LABEL.get(r.transport, r.transport):14} "
        f"batch={r.batching:3} c={r.concurrency:<3} {value:>14}  p50={_fmt(r.p50_ms, 3)} ms "
        f"p99={_fmt(r.p99_ms, 3)} ms  server={_fmt(r.server_cpu, 0)}% loadgen={_fmt(r.loadgen_cpu, 0)}% "
        f"[{r.loadgen}]{' ' + r.note if r.note else ''}"
    )


def render_text(rows: list[Row]) -> str:
    lines: list[str] = []
    block: list[list[str]] = []

    def flush() -> None:
        if not block:
            return
        widths = [max(len(r[i]) for r in block) for i in range(len(block[0]))]
        for n, cells in enumerate(block):
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        block.clear()

    for cells in table(rows):
        if cells[1] == "transport":
            flush()
        block.append(cells)
    flush()
    return "\n".join(lines)


def render_markdown(rows: list[Row]) -> str:
    lines: list[str] = []
    for cells in table(rows):
        if cells[1] == "transport":
            if lines:
                lines.append("")
            lines.append("| " + " | ".join(cells) + " |")
            lines.append("|" + "|".join("---" for _ in cells) + "|")
        else:
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, str]:
    info = {"nproc": str(os.cpu_count()), "python": platform.python_version(), "os": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    with contextlib.suppress(ImportError):
        import torch

        info["torch"] = torch.__version__
    return info


def _machine_line() -> str:
    return ", ".join(f"{k} {v}" for k, v in machine_info().items())


# -- entry point -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    plan = make_plan(args)
    if args.url and "grpc" in plan.transports and not args.grpc:
        plan.transports.remove("grpc")
    print(f"gradserve bench: {_machine_line()}", flush=True)
    print(
        f"cells of {plan.duration_s:g} s; load generator: "
        + (f"perf_analyzer ({plan.perf_analyzer}) for V2, " if plan.perf_analyzer else "")
        + f"py-http/grpc.aio in up to {args.load_procs} processes otherwise; "
        "server and load generator share the machine's CPUs",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="gradserve-bench-") as tmp,
        _servers(args, plan, Path(tmp)) as (
            servers,
            floor,
            work,
        ),
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
            f"Machine: {_machine_line()}.\n\n"
            f"Command: `gradserve bench {' '.join(argv or [])}`; {plan.duration_s:g} s per cell.\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + render_markdown(rows))
        print(f"wrote {args.out}")


@contextlib.contextmanager
def _servers(
    args: argparse.Namespace, plan: Plan, tmp: Path
) -> Iterator[tuple[dict[str, Server], Server | None, Work]]:
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
            server.wait_ready("/readyz")
        work = discover_work(next(iter(servers.values()), None))
        floor = None
        if plan.floors:
            mirror = tmp / "mirror.json"
            mirror.write_text(json.dumps(work.metadata))
            floor = start_floor(tmp, mirror)
            started.append(floor)
            floor.wait_ready("/readyz")
        yield servers, floor, work
    finally:
        for server in started:
            server.stop()
