"""Where a loaded server's threads spend their time: py-spy on a live `gradserve serve`
under `gradserve bench` load, summed by thread, by function (inclusive) and by the
line a sample stopped on.

The profiles in docs/benchmarks.md ("gRPC: decode plans and inline stream batches",
"The stream's time, fourth session") come from it. py-spy is not a dependency of the
project: install it into the venv first (`.venv/bin/pip install py-spy`). It needs
ptrace rights over the server (root, or kernel.yama.ptrace_scope=0).

    PYTHONPATH=service .venv/bin/python scripts/profile_loop.py --transport grpc-stream

Ports 9062/9063 by default. The server is started from this checkout and stopped at
the end; the bench runs perf_analyzer (or the pure-Python load for `native`) at the
given concurrency for the whole profile and some seconds around it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the server at {url} did not become ready in {timeout_s:.0f} s")


def summarize(raw: Path, top: int) -> None:
    """py-spy's raw (collapsed) stacks -> samples per thread, then the main thread's
    functions (inclusive) and the frames samples stopped in (self)."""
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        threads[frames[0]] += n
        if "MainThread" not in frames[0]:
            continue
        leaves[stack.split(";")[-1]] += n
        for frame in set(frames[1:]):
            inclusive[frame] += n
    print("samples by thread:")
    for name, n in threads.most_common():
        print(f"  {n:6d}  {name}")
    print(f"event-loop thread, inclusive (top {top}):")
    for name, n in inclusive.most_common(top):
        print(f"  {n:6d}  {name[:130]}")
    print(f"event-loop thread, where samples stopped (top {top}):")
    for name, n in leaves.most_common(top):
        print(f"  {n:6d}  {name[:130]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", default="grpc-stream", help="a `gradserve bench --transports` name")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=12, help="how long py-spy samples")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--http-port", type=int, default=9062)
    parser.add_argument("--grpc-port", type=int, default=9063)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--keep", type=Path, help="also keep py-spy's raw stacks here")
    args = parser.parse_args()

    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service")}
    url = f"http://127.0.0.1:{args.http_port}"
    grpc_target = f"127.0.0.1:{args.grpc_port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradserve",
            "serve",
            "--http-port",
            str(args.http_port),
            "--grpc-port",
            str(args.grpc_port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bench = None
    try:
        wait_ready(url)
        bench_cmd = [
            sys.executable, "-m", "gradserve", "bench", "--url", url, "--grpc", grpc_target,
            "--transports", args.transport, "--concurrency", str(args.concurrency),
            "--sections", "small", "--no-floors", "--no-torch", "--duration-s", str(args.seconds + 12),
        ]  # fmt: skip
        bench = subprocess.Popen(
            bench_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        time.sleep(8)  # past the bench's warm-up, into its measured window
        with tempfile.TemporaryDirectory() as tmp:
            raw = args.keep or Path(tmp) / "stacks.txt"
            subprocess.run(
                [py_spy, "record", "-p", str(server.pid), "-d", str(args.seconds), "-r", str(args.rate),
                 "-f", "raw", "-o", str(raw), "--threads", "--nonblocking"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            out, _ = bench.communicate(timeout=120)
            print("".join(line + "\n" for line in out.splitlines() if " req/s" in line), end="")
            summarize(raw, args.top)
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
