#!/usr/bin/env python3
"""Memory held by the server after a large load (issue 12, item 6): where it sits, and
whether a setting returns it. A measurement script, not a CI test
(tests/integration/test_memory_after_load.py is the CI check; docs/memory.md has the
figures).

Starts `python -m gradserve serve` on free 127.0.0.1 ports (scripts/soaklib/server.py's way),
lets it idle, then drives a 16 MiB ``relu`` load ([2048, 2048] float32 in, ``y`` out)
from a separate client process for ``--duration-s`` seconds at ``--concurrency``:

- ``grpc``: a grpc.aio channel sending one prebuilt ModelInferRequest as raw bytes
  (no protobuf work in the client, so the two cores go to the server);
- ``http``: V2 REST with the binary extension (httpx, one prebuilt body).

The server's memory is sampled every ``--sample-s``: RSS and its anonymous/file split
(/proc/PID/status), the anonymous memory by kind of mapping (/proc/PID/smaps: the main
heap ``[heap]``, glibc's per-thread arena heaps, which are 64 MiB-aligned anonymous
mappings, and other anonymous mappings: large mmapped blocks, Python's arenas, thread
stacks) and glibc's own view, ``mallinfo2()``, read inside the server by a probe thread
that a ``sitecustomize.py`` written to a temporary directory starts (debug only; the
service has no such code). With ``--trim`` the probe also calls ``malloc_trim(0)``
after the idle period, to show what trimming alone gives back.

    .venv/bin/python scripts/grpc_memory.py grpc [--duration-s 25] [--concurrency 8]
        [--idle-s 10] [--trim] [--server-env NAME=VALUE ...] [-- serve flags]
    .venv/bin/python scripts/grpc_memory.py http ...

Prints one table: baseline, peak, just after the load, after ``--idle-s`` of idle (and
after the probe's trim), with the load's req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SHAPE = (2048, 2048)  # float32: 16 MiB
MIB = 1024 * 1024
# glibc's per-thread arena heaps are reserved at HEAP_MAX_SIZE (64 MiB on 64-bit) and
# aligned to it; no other mapping in this process is, in practice.
ARENA_HEAP_ALIGN = 64 * MIB

# Debug-only probe, loaded into the server through PYTHONPATH: a daemon thread that
# writes mallinfo2() to a file every 0.2 s and runs malloc_trim(0) when asked (a
# request file appears). A thread, so nothing depends on the server's event loop.
PROBE = r"""
import ctypes, json, os, threading, time

_out = os.environ.get("GRADSERVE_MEMPROBE_FILE")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def _run(out):
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    trims = []
    while True:
        if os.path.exists(out + ".trim"):
            t0 = time.perf_counter()
            libc.malloc_trim(0)
            trims.append((time.perf_counter() - t0) * 1e3)
            os.unlink(out + ".trim")
        m = libc.mallinfo2()
        state = {n: getattr(m, n) for n, _ in _Mallinfo2._fields_}
        state["trim_ms"] = trims
        with open(out + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(out + ".tmp", out)
        time.sleep(0.2)


if _out:
    threading.Thread(target=_run, args=(_out,), daemon=True, name="memprobe").start()
"""


# ---------------------------------------------------------------- clients (own process)


def grpc_request_bytes() -> bytes:
    import numpy as np

    sys.path.insert(0, str(ROOT / "service"))
    from gradserve.grpc.generated import inference_pb2 as pb

    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    req = pb.ModelInferRequest(
        model_name="relu",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(SHAPE))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="y")],
        raw_input_contents=[x.tobytes()],
    )
    return req.SerializeToString()


async def grpc_load(target: str, duration_s: float, concurrency: int) -> dict[str, float]:
    import grpc

    body = grpc_request_bytes()
    limit = 64 * MIB
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    counts = {"requests": 0, "errors": 0}
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        # No (de)serializers: the prebuilt bytes go out as they are, the answer stays bytes.
        call = channel.unary_unary(MODEL_INFER)
        answer = await call(body, timeout=60)
        assert len(answer) > SHAPE[0] * SHAPE[1] * 4, len(answer)
        stop = time.monotonic() + duration_s

        async def worker() -> None:
            while time.monotonic() < stop:
                try:
                    await call(body, timeout=60)
                    counts["requests"] += 1
                except grpc.aio.AioRpcError:
                    counts["errors"] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.monotonic() - started
    return {**counts, "seconds": seconds}


async def http_load(url: str, duration_s: float, concurrency: int) -> dict[str, float]:
    import httpx
    import numpy as np

    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(SHAPE),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(x)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = head + x
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    counts = {"requests": 0, "errors": 0}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        first = await client.post("/v2/models/relu/infer", content=body, headers=headers)
        assert first.status_code == 200 and len(first.content) > len(x), first.status_code
        stop = time.monotonic() + duration_s

        async def worker() -> None:
            while time.monotonic() < stop:
                r = await client.post("/v2/models/relu/infer", content=body, headers=headers)
                counts["requests" if r.status_code == 200 else "errors"] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.monotonic() - started
    return {**counts, "seconds": seconds}


def client_main(transport: str, target: str, duration_s: float, concurrency: int) -> None:
    load = grpc_load if transport == "grpc" else http_load
    print(json.dumps(asyncio.run(load(target, duration_s, concurrency))), flush=True)


# ---------------------------------------------------------------- the server and its memory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sample:
    """One look at the server's memory, in MiB (mallinfo2 fields: glibc's view)."""

    rss: float
    anon: float
    file: float
    heap: float  # [heap]: the main arena
    arenas: float  # 64 MiB-aligned anonymous mappings: per-thread arena heaps
    other_anon: float  # other anonymous mappings: mmapped blocks, Python arenas, stacks
    n_arenas: int
    mallinfo: dict[str, float] = field(default_factory=dict)


def read_status(pid: int) -> tuple[float, float, float]:
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["RssAnon"], values["RssFile"] + values.get("RssShmem", 0.0)


def read_smaps(pid: int) -> tuple[float, float, float, int]:
    """Anonymous RSS (MiB) of [heap], arena heaps and other anonymous mappings."""
    heap = arenas = other = 0.0
    n_arenas = 0
    kind = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(maxsplit=6)
            if "-" in first[0] and len(first) >= 5 and not first[0].endswith(":"):
                start = int(first[0].split("-")[0], 16)
                path = first[5].strip() if len(first) > 5 else ""
                if path == "[heap]":
                    kind = "heap"
                elif path == "" and start % ARENA_HEAP_ALIGN == 0 and "rw" in first[1]:
                    kind, n_arenas = "arena", n_arenas + 1
                elif path == "":
                    kind = "other"
                else:
                    kind = ""
            elif first[0] == "Anonymous:" and kind:
                kib = int(first[1]) / 1024
                if kind == "heap":
                    heap += kib
                elif kind == "arena":
                    arenas += kib
                else:
                    other += kib
    return heap, arenas, other, n_arenas


def read_probe(path: Path) -> dict[str, float]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out = {k: v / MIB for k, v in raw.items() if k in ("arena", "hblkhd", "uordblks", "fordblks")}
    out["hblks"] = raw.get("hblks", 0)
    out["trim_ms"] = raw.get("trim_ms", [])
    return out


def sample(pid: int, probe: Path) -> Sample:
    rss, anon, file = read_status(pid)
    heap, arenas, other, n_arenas = read_smaps(pid)
    return Sample(rss, anon, file, heap, arenas, other, n_arenas, read_probe(probe))


def start_server(
    work: Path, serve_args: list[str], extra_env: dict[str, str], probe: Path
) -> tuple[subprocess.Popen[bytes], int, int]:
    import httpx

    (work / "probe").mkdir(exist_ok=True)
    (work / "probe" / "sitecustomize.py").write_text(PROBE)
    http_port, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "gradserve", "serve", "--host", "127.0.0.1",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), *serve_args,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": f"{work / 'probe'}{os.pathsep}{ROOT / 'service'}",
        "GRADSERVE_MEMPROBE_FILE": str(probe),
        **extra_env,
    }
    log = open(work / "server.log", "wb")  # noqa: SIM115 - the server writes to it until stopped
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: see {work / 'server.log'}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1.0).status_code == 200:
                return proc, http_port, grpc_port
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready in 120 s")


def row(name: str, s: Sample) -> str:
    m = s.mallinfo
    glibc = (
        f"{m.get('uordblks', 0):8.1f} {m.get('fordblks', 0):8.1f} {m.get('hblkhd', 0):8.1f}"
        if m
        else " " * 26
    )
    return (
        f"{name:<16} {s.rss:8.1f} {s.anon:8.1f} {s.file:7.1f} {s.heap:7.1f} "
        f"{s.arenas:7.1f} ({s.n_arenas:2d}) {s.other_anon:7.1f} {glibc}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("transport", choices=["grpc", "http"])
    p.add_argument("--duration-s", type=float, default=25.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--idle-s", type=float, default=10.0)
    p.add_argument("--baseline-s", type=float, default=3.0, help="idle before the baseline sample")
    p.add_argument("--sample-s", type=float, default=0.5)
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) through the probe after the idle")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument(
        "--client",
        nargs=4,
        metavar=("TRANSPORT", "TARGET", "DURATION", "CONCURRENCY"),
        help=argparse.SUPPRESS,
    )
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    args.serve_args = argv[cut + 1 :]  # extra `gradserve serve` flags, after --
    if args.client:
        client_main(args.client[0], args.client[1], float(args.client[2]), int(args.client[3]))
        return

    extra_env = dict(kv.split("=", 1) for kv in args.server_env)
    with tempfile.TemporaryDirectory(prefix="gradserve-mem-") as tmp:
        work = Path(tmp)
        probe = work / "mallinfo.json"
        proc, http_port, grpc_port = start_server(work, args.serve_args, extra_env, probe)
        try:
            time.sleep(args.baseline_s)
            rows = [("baseline", sample(proc.pid, probe))]
            target = f"127.0.0.1:{grpc_port}" if args.transport == "grpc" else f"http://127.0.0.1:{http_port}"
            client = subprocess.Popen(
                [sys.executable, __file__, args.transport, "--client", args.transport, target,
                 str(args.duration_s), str(args.concurrency)],
                stdout=subprocess.PIPE, cwd=ROOT,
            )  # fmt: skip
            peak = rows[0][1]
            while client.poll() is None:
                s = sample(proc.pid, probe)
                peak = s if s.rss > peak.rss else peak
                time.sleep(args.sample_s)
            out, _ = client.communicate()
            result = json.loads(out.decode().strip().splitlines()[-1])
            time.sleep(1.0)
            rows += [("peak", peak), ("after load", sample(proc.pid, probe))]
            time.sleep(max(0.0, args.idle_s - 1.0))
            rows.append((f"after {args.idle_s:g} s idle", sample(proc.pid, probe)))
            if args.trim:
                (work / "mallinfo.json.trim").touch()
                while (work / "mallinfo.json.trim").exists():
                    time.sleep(0.1)
                time.sleep(0.5)
                rows.append(("after trim", sample(proc.pid, probe)))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            # The server's own idle trims (malloc_trim_idle_s), one line each.
            trim_lines = [
                line.strip() for line in (work / "server.log").read_text(errors="replace").splitlines()
                if "malloc_trim:" in line
            ]  # fmt: skip
    rate = result["requests"] / result["seconds"]
    print(
        f"# {args.transport} 16 MiB relu, concurrency {args.concurrency}, {result['seconds']:.1f} s: "
        f"{result['requests']} requests ({result['errors']} errors), {rate:.2f} req/s; "
        f"serve flags {args.serve_args or 'default'}, server env {args.server_env or 'default'}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'MiB':<16} {'RSS':>8} {'anon':>8} {'file':>7} {'[heap]':>7} {'arenas (n)':>12} "
        f"{'oth.anon':>7} {'in use':>8} {'free':>8} {'mmapped':>8}"
    )
    for name, s in rows:
        print(row(name, s))
    trims = rows[-1][1].mallinfo.get("trim_ms") if args.trim else None
    if trims:
        print(f"the probe's malloc_trim(0) took {trims[-1]:.1f} ms")
    print(f"server's idle trims: {len(trim_lines)}", *trim_lines, sep="\n  ")


if __name__ == "__main__":
    main()
