"""The processes under test: gradserve and the floor app started on free ports on
127.0.0.1 (or a running gradserve), and the CPU accounting of processes."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[3]
FLOOR_APP = ROOT / "bench" / "floor_app.py"


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
    """User + system CPU seconds of this process's waited-for children (perf_analyzer)."""
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

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if http_get(self.http + "/readyz", timeout=1.0)[0] == 200:
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
