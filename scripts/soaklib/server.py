"""Server: the `gradserve serve` process under soak (start on free ports, stop with
SIGTERM) and its RSS, descriptors, threads and CPU time read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

# The repository root (scripts/soaklib/server.py -> two folders up): the server runs
# from there with service/ on its PYTHONPATH, as it did from scripts/soak.py.
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_server(
    out_dir: Path,
    extra_args: Sequence[str],
    extra_env: dict[str, str] | None = None,
    ready_timeout_s: float = 120.0,
) -> Server:
    """Start `python -m gradserve serve` on free ports and wait for /readyz (the logic
    of tests/conftest.py's start_server, without importing pytest)."""
    http_port, grpc_port = free_port(), free_port()
    log_path = out_dir / "server.log"
    cmd = [
        sys.executable, "-m", "gradserve", "serve", "--host", "127.0.0.1",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service"), **(extra_env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    server = Server(proc, http_port, grpc_port, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=1.0).status_code == 200:
                return server
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"server not ready in {ready_timeout_s} s")


def read_proc(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, open descriptors, threads) of a process, from /proc."""
    rss_kib, threads = 0, 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss_kib / 1024.0, len(os.listdir(f"/proc/{pid}/fd")), threads


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/<pid>/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
