"""Smoke test of `gradserve bench`: one short cell end to end, and the table prints.

No wall-clock assertions: the numbers are whatever this machine gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(60)
def test_bench_quick_one_cell_prints_the_table(tmp_path):
    out = tmp_path / "bench.md"
    cmd = [
        sys.executable,
        "-m",
        "gradserve",
        "bench",
        "--quick",
        "--duration-s",
        "0.5",
        "--sections",
        "small",
        "--transports",
        "native",
        "--batching",
        "on",
        "--concurrency",
        "1",
        "--load-procs",
        "1",
        "--no-floors",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=55, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("cross_entropy 8x10"))
    assert "req/s" in header and "p99 ms" in header and "loadgen CPU%" in header
    row = next(line for line in lines if line.startswith("gradserve") and "native HTTP" in line)
    req_s = float(row.split()[5].replace(",", ""))  # gradserve native HTTP on 1 <req/s>
    assert req_s > 0, row
    assert any(line.startswith("torch") for line in lines)
    assert "| gradserve | native HTTP | on | 1 |" in out.read_text()


@pytest.mark.timeout(120)
def test_bench_sdk_rows(tmp_path):
    # The SDK's four clients as load generators (bench/sdk.py), each in its own process.
    out = tmp_path / "bench.md"
    cmd = [sys.executable, "-m", "gradserve", "bench", "--duration-s", "0.5", "--sections", "small"]
    cmd += ["--transports", "sdk-http,sdk-grpc", "--batching", "on", "--concurrency", "2"]
    cmd += ["--no-floors", "--no-torch", "--perf-analyzer", "none", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=115, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = out.read_text()
    for transport, client in [
        ("SDK V2 HTTP", "http-sync"),
        ("SDK V2 HTTP", "http-async"),
        ("SDK V2 gRPC", "grpc-sync"),
        ("SDK V2 gRPC", "grpc-async"),
    ]:
        row = next(line for line in table.splitlines() if f"| SDK {client}" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == transport and cells[3] == "2", row
        assert float(cells[4].replace(",", "")) > 0 and "errors" not in cells[4], row


@pytest.mark.timeout(60)
def test_bare_grpc_client_reference(server):
    # The reference for the SDK's gRPC rows (bench/sdk.py): grpcio's client sending the
    # SDK's request bytes. Its answers are not decoded; a call that did not end OK
    # raises and counts as an error.
    cmd = [
        sys.executable,
        "-m",
        "gradserve.bench.sdk",
        "--client",
        "grpc-bare",
        "--target",
        server.grpc_target,
    ]
    cmd += ["-c", "2", "--duration-s", "0.5", "--warmup-s", "0.2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "service"), str(ROOT / "clients")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=55, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["client"] == "grpc-bare" and result["errors"] == 0 and result["req_s"] > 0, result
