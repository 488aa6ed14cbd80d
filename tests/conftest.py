"""Shared fixtures: a real `gradserve serve` process on free ports, and an in-process app."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip a test whose tool is missing here, but fail it in CI (CI=true): there the
    project's own set-up (`make test`) installs every tool, so a missing one is a bug
    that a skip would hide."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run this test (make test installs what it needs)")
    pytest.skip(reason)


# Every port free_port has handed out in this process.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one handed out before in this run.

    The kernel may give the port of a socket just closed to the next bind(0), so two
    picks in a row could be the same port (19 pairs in 200,000 here); a server given
    both then fails to bind its second, about once in 200 runs of the suite.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class ServerProcess:
    """A gradserve process started by a test; ``url`` is its HTTP base URL."""

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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_server(
    tmp_path: Path, *extra_args: str, env: dict[str, str] | None = None, ready_timeout_s: float = 60.0
) -> ServerProcess:
    """Start `python -m gradserve serve` on free ports and wait for /readyz; on fresh
    ports once more if a port was taken between its pick and the server's bind (other
    processes share this machine's ports)."""
    try:
        return _start_server_once(tmp_path, *extra_args, env=env, ready_timeout_s=ready_timeout_s)
    except RuntimeError as exc:
        if "address already in use" not in str(exc).lower():
            raise
        return _start_server_once(tmp_path, *extra_args, env=env, ready_timeout_s=ready_timeout_s)


def _start_server_once(
    tmp_path: Path, *extra_args: str, env: dict[str, str] | None, ready_timeout_s: float
) -> ServerProcess:
    http_port, grpc_port = free_port(), free_port()
    log_path = tmp_path / f"server-{http_port}.log"
    cmd = [
        sys.executable,
        "-m",
        "gradserve",
        "serve",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        *extra_args,
    ]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "service"), **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    server = ServerProcess(proc, http_port, grpc_port, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready in {ready_timeout_s} s:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared server process for the whole session (default settings)."""
    proc = start_server(tmp_path_factory.mktemp("server"))
    yield proc
    proc.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with custom flags; each is stopped at the end of the test."""
    started: list[ServerProcess] = []

    def factory(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        proc = start_server(tmp_path, *args, env=env)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop(signal.SIGKILL)


@pytest.fixture
async def app_client() -> AsyncIterator[httpx.AsyncClient]:
    """The real app in-process (ASGI), warmed, with default settings."""
    from gradserve.config import Settings
    from gradserve.rest.app import create_app

    app = create_app(settings=Settings())
    runtime = app.state.runtime
    await runtime.start(wait_ready=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        yield client
    await runtime.drain()
    runtime.close()
