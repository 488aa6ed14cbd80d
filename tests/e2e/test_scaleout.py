"""Scale-out: three `gradserve serve` replicas behind a real nginx, run with the project's
load-balancer config (deploy/nginx/nginx.conf.template), and a replica drained and one
crashed under load without a single failed call.

Load goes through nginx over V2 HTTP (the SDK, binary and JSON tensors), gRPC (the SDK)
and native /v1 (plain httpx, no client retries: nginx's next-upstream alone covers
those), with mixed ops, every answer checked against torch. Before the faults every
replica has served traffic (its own /metrics). Then one replica gets SIGTERM (drain),
another SIGKILL (crash), a replacement starts on new ports and nginx reloads a
re-rendered config, as an orchestrator would once the replacement is ready; the
replacement must then receive traffic. Requests, throughput and p99 are printed per
phase (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from gradserve_client import AsyncClient, AsyncGrpcClient
from tests.conftest import ROOT, ServerProcess, free_port, skip_or_fail_in_ci, start_server
from tests.integration.wire import metric_samples, metric_total

pytestmark = pytest.mark.e2e

TEMPLATE = ROOT / "deploy" / "nginx" / "nginx.conf.template"
# Passive-health parameters of each upstream line (the compose file uses the same).
UPSTREAM = "server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;"
SERVER_ARGS = ("--drain-delay-s", "1.0", "--drain-timeout-s", "10")
PHASE_S = 3.0
WORKERS_PER_KIND = 3
KINDS = ("v2-binary", "v2-json", "grpc", "native")


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def render_nginx_conf(values: Mapping[str, str]) -> str:
    """The template with its ${NAME} placeholders filled in, as the nginx image's envsubst
    does with a variable list: other `$` text (nginx's own variables) stays as is."""
    text = TEMPLATE.read_text()
    out = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)
    missing = re.findall(r"\$\{\w+\}", out)
    assert not missing, f"placeholders without a value: {missing}"
    return out


@dataclass
class Nginx:
    """A real nginx under ``prefix``, run in the foreground as the current user."""

    binary: str
    prefix: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    def _args(self) -> list[str]:
        main = "daemon off;"
        if os.geteuid() == 0:
            # As root nginx would run its workers as nobody, who cannot enter pytest's
            # 0700 temp dirs; a non-root run keeps them as the current user anyway.
            main += " user root;"
        return [self.binary, "-p", f"{self.prefix}/", "-c", str(self.conf), "-e", "stderr", "-g", main]

    def configure(self, replicas: Sequence[ServerProcess]) -> None:
        values = {
            "GRADSERVE_LB_HTTP_PORT": str(self.http_port),
            "GRADSERVE_LB_GRPC_PORT": str(self.grpc_port),
            "GRADSERVE_HTTP_UPSTREAMS": " ".join(UPSTREAM.format(port=r.http_port) for r in replicas),
            "GRADSERVE_GRPC_UPSTREAMS": " ".join(UPSTREAM.format(port=r.grpc_port) for r in replicas),
        }
        self.conf.write_text(render_nginx_conf(values))
        check = subprocess.run([*self._args(), "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr

    def start(self, replicas: Sequence[ServerProcess]) -> None:
        self.configure(replicas)
        with open(self.prefix / "nginx.log", "wb") as log:
            self.proc = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        for port in (self.http_port, self.grpc_port):
            while True:
                assert self.proc.poll() is None, self.log()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"nginx not listening on {port}:\n{self.log()}"
                    time.sleep(0.05)

    def reload(self, replicas: Sequence[ServerProcess]) -> None:
        """Re-render for ``replicas`` and reload (new workers; old ones finish their calls)."""
        self.configure(replicas)
        done = subprocess.run([*self._args(), "-s", "reload"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish calls, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        path = self.prefix / "nginx.log"
        return path.read_text(errors="replace") if path.exists() else ""


# -- the load: mixed ops, each answer checked against torch ---------------------------


@dataclass
class Case:
    family: str
    op: str
    tensors: dict[str, torch.Tensor]
    grad: bool
    expected: dict[str, torch.Tensor]


def make_case(i: int) -> Case:
    gen = torch.Generator().manual_seed(i)
    kind = i % 4
    if kind == 0:
        x = torch.randn(3, 7, generator=gen)
        return Case("activations", "relu", {"x": x}, False, {"y": torch.relu(x)})
    if kind == 1:
        x = torch.randn(5, 4, generator=gen).requires_grad_()
        y = torch.sigmoid(x)
        (grad_x,) = torch.autograd.grad(y.sum(), x)
        return Case("activations", "sigmoid", {"x": x.detach()}, True, {"y": y.detach(), "grad_x": grad_x})
    if kind == 2:
        a, b = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
        loss = torch.nn.functional.mse_loss(a, b)
        return Case("losses", "mse", {"input": a, "target": b}, False, {"loss": loss})
    scores = torch.randn(4, 5, generator=gen).requires_grad_()
    target = torch.randint(0, 5, (4,), generator=gen)
    loss = torch.nn.functional.cross_entropy(scores, target)
    (grad_input,) = torch.autograd.grad(loss, scores)
    tensors = {"input": scores.detach(), "target": target}
    return Case("losses", "cross_entropy", tensors, True, {"loss": loss.detach(), "grad_input": grad_input})


def check(case: Case, got: Mapping[str, Any]) -> None:
    assert set(got) == set(case.expected), (case.op, sorted(got))
    for name, want in case.expected.items():
        torch.testing.assert_close(torch.as_tensor(np.asarray(got[name])), want, msg=f"{case.op}.{name}")


async def call_sdk(client: AsyncClient | AsyncGrpcClient, case: Case) -> Mapping[str, Any]:
    arrays = {name: t.numpy() for name, t in case.tensors.items()}
    out: Mapping[str, Any]
    if case.family == "activations":
        out = await client.activation(case.op, arrays["x"], grad=case.grad)
    else:
        out = await client.loss(case.op, arrays["input"], arrays["target"], grad=case.grad)
    return out


NATIVE_RESENDS: list[float] = []  # monotonic times


async def call_native(http: httpx.AsyncClient, case: Case) -> Mapping[str, Any]:
    body: dict[str, Any] = {name: t.tolist() for name, t in case.tensors.items()}
    body["grad"] = case.grad
    try:
        response = await http.post(f"/v1/{case.family}/{case.op}", json=body)
    except (httpx.ReadError, httpx.RemoteProtocolError):
        # The one resend every keep-alive HTTP/1.1 client needs (the SDK has it): at a
        # reload, nginx's old workers close their idle client connections, and a request
        # written onto one at that moment gets no answer. It was never proxied, and the
        # op is pure, so sending it again is safe. Status codes are never retried here.
        NATIVE_RESENDS.append(round(time.monotonic(), 3))
        response = await http.post(f"/v1/{case.family}/{case.op}", json=body)
    assert response.status_code == 200, (response.status_code, response.text)
    return {name: torch.tensor(out["data"], dtype=torch.float32) for name, out in response.json().items()}


@dataclass
class Load:
    """Closed-loop workers; each call is recorded with the phase it started in."""

    phase: str = "before"
    samples: list[tuple[str, str, float, float]] = field(default_factory=list)  # phase, kind, start, latency
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(
        self, kind: str, call: Callable[[Case], Awaitable[Mapping[str, Any]]], seed: int
    ) -> None:
        i = seed
        while not self.stop.is_set():
            case = make_case(i)
            phase, start = self.phase, time.monotonic()
            try:
                check(case, await call(case))
            except Exception as exc:  # every failure is counted and shown, none stops the load
                when = f"{time.monotonic():.3f}"
                self.failures.append(f"{phase} {kind} {case.op} at {when}: {type(exc).__name__}: {exc}")
            self.samples.append((phase, kind, start, time.monotonic() - start))
            i += 1000

    def report(self, spans: Mapping[str, float]) -> dict[str, int]:
        counts = {}
        print()
        for phase, seconds in spans.items():
            latencies = sorted(s[3] for s in self.samples if s[0] == phase)
            counts[phase] = len(latencies)
            p99 = (
                latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
            )
            p50 = latencies[len(latencies) // 2] if latencies else float("nan")
            fails = sum(1 for f in self.failures if f.startswith(phase + " "))
            print(
                f"scale-out {phase:>6}: {len(latencies):5d} requests in {seconds:5.1f} s = "
                f"{len(latencies) / seconds:6.0f} req/s, p50 {p50 * 1e3:6.1f} ms, "
                f"p99 {p99 * 1e3:6.1f} ms, failed {fails}"
            )
        return counts


def served(replica: ServerProcess) -> float:
    """Requests this replica answered, from its own /metrics (bypassing nginx)."""
    text = httpx.get(f"{replica.url}/metrics", timeout=5).text
    return metric_total(metric_samples(text), "nv_inference_request_success")


def start_replica(tmp_path: Path) -> ServerProcess:
    return start_server(tmp_path, *SERVER_ARGS)


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


class RetryCounter(logging.Handler):
    """Counts the SDK's retries (it logs each one at INFO on the gradserve_client logger)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.times: list[float] = []  # monotonic, to compare with the fault and reload times

    def emit(self, record: logging.LogRecord) -> None:
        if "retry" in record.getMessage():
            self.count += 1
            self.times.append(round(record.created - time.time() + time.monotonic(), 3))


@pytest.mark.timeout(150)
async def test_replicas_drained_and_crashed_under_load_cost_no_call(tmp_path: Path) -> None:
    binary = nginx_binary()
    if binary is None:
        skip_or_fail_in_ci("nginx is not installed (make test runs scripts/install_nginx.sh)")
    began = time.monotonic()
    replicas: list[ServerProcess] = []
    nginx = Nginx(binary, tmp_path / "nginx")
    nginx.prefix.mkdir()
    load = Load()
    retries = RetryCounter()
    sdk_log = logging.getLogger("gradserve_client")
    sdk_log.addHandler(retries)
    sdk_log.setLevel(logging.INFO)
    try:
        replicas += await asyncio.gather(*(asyncio.to_thread(start_replica, tmp_path) for _ in range(3)))
        nginx.start(replicas)
        lb_url = f"http://127.0.0.1:{nginx.http_port}"
        v2_binary = AsyncClient(lb_url, timeout_s=20)
        v2_json = AsyncClient(lb_url, timeout_s=20, binary=False)
        rpc = AsyncGrpcClient(f"127.0.0.1:{nginx.grpc_port}", timeout_s=20)
        native = httpx.AsyncClient(base_url=lb_url, timeout=20)
        calls: dict[str, Callable[[Case], Awaitable[Mapping[str, Any]]]] = {
            "v2-binary": lambda c: call_sdk(v2_binary, c),
            "v2-json": lambda c: call_sdk(v2_json, c),
            "grpc": lambda c: call_sdk(rpc, c),
            "native": lambda c: call_native(native, c),
        }
        workers = [
            asyncio.create_task(load.worker(kind, calls[kind], seed=n * len(KINDS) + k))
            for k, kind in enumerate(KINDS)
            for n in range(WORKERS_PER_KIND)
        ]
        t0 = time.monotonic()
        await asyncio.sleep(PHASE_S)
        # Before any fault, nginx has spread the load over every replica.
        await wait_until(
            lambda: all(served(r) > 0 for r in replicas), 10, "a replica served nothing before the faults"
        )
        before = [served(r) for r in replicas]

        drained, crashed, survivor = replicas
        load.phase, t_fault = "during", time.monotonic()
        drained.proc.send_signal(signal.SIGTERM)
        crashed.proc.kill()
        replacement = await asyncio.to_thread(start_replica, tmp_path)
        replicas.append(replacement)
        # The orchestrator's part: once the replacement is ready, the endpoints are the
        # survivor and the replacement.
        t_reload = time.monotonic()
        await asyncio.to_thread(nginx.reload, [survivor, replacement])
        await wait_until(
            lambda: served(replacement) > 0, 15, "the replacement got no traffic after the reload"
        )
        load.phase, t_after = "after", time.monotonic()
        await asyncio.sleep(PHASE_S)
        load.stop.set()
        await asyncio.gather(*workers)
        t_end = time.monotonic()

        await v2_binary.aclose()
        await v2_json.aclose()
        await rpc.aclose()
        await native.aclose()

        counts = load.report({"before": t_fault - t0, "during": t_after - t_fault, "after": t_end - t_after})
        kinds = {kind: sum(1 for s in load.samples if s[1] == kind) for kind in KINDS}
        print(f"scale-out per transport: {kinds}; replicas served before the faults: {before}")
        print(
            f"scale-out total {time.monotonic() - began:.1f} s; faults at {t_fault:.3f}, nginx reload at "
            f"{t_reload:.3f}; SDK retries: {retries.count} at {retries.times}; native resends at "
            f"{NATIVE_RESENDS}; failed calls: {len(load.failures)}"
        )

        assert load.failures == [], "\n".join(load.failures[:20])
        assert all(counts[phase] > 0 for phase in ("before", "during", "after")), counts
        assert all(kinds[kind] > 0 for kind in KINDS), kinds
        # The drained replica finished its drain and exited cleanly.
        assert drained.proc.wait(15) == 0, drained.log()
        assert "drained" in drained.log()
        assert crashed.proc.wait(5) == -signal.SIGKILL
        assert survivor.proc.poll() is None and replacement.proc.poll() is None
    finally:
        sdk_log.removeHandler(retries)
        load.stop.set()
        nginx.stop()
        for replica in replicas:
            replica.stop(signal.SIGKILL)


@pytest.mark.timeout(120)
async def test_a_long_stream_and_an_oversize_body_through_nginx(tmp_path: Path) -> None:
    # nginx counts client_max_body_size against a whole HTTP/2 stream: at 64m it ended a
    # ModelStreamInfer stream once 64 MiB had gone up in all (RST_STREAM, "too large
    # chunked body"), however small each message. And a body nginx refuses itself gets
    # a JSON 413, as gradserve's own would be, not nginx's HTML page.
    binary = nginx_binary()
    if binary is None:
        skip_or_fail_in_ci("nginx is not installed (make test runs scripts/install_nginx.sh)")
    nginx = Nginx(binary, tmp_path / "nginx")
    nginx.prefix.mkdir()
    replica = start_replica(tmp_path)
    try:
        nginx.start([replica])
        x = np.linspace(-1.0, 1.0, 1 << 20, dtype=np.float32)  # 4 MiB a message
        async with AsyncGrpcClient(f"127.0.0.1:{nginx.grpc_port}", timeout_s=60) as rpc, rpc.stream() as s:
            for _ in range(20):  # 80 MiB up one stream, one message at a time
                out = await s.activation("relu", x)
                assert np.array_equal(out["y"], np.maximum(x, 0))
        # nginx decides from Content-Length, before any body: send the head alone.
        with socket.create_connection(("127.0.0.1", nginx.http_port), timeout=30) as sock:
            sock.sendall(
                b"POST /v2/models/relu/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (65 << 20)
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"application/json" in head and b"limit" in body, answer
    finally:
        nginx.stop()
        replica.stop(signal.SIGKILL)
