"""Smoke test of `gradserve bench`'s shared-memory and gRPC streaming rows: one short
cell each, end to end (the bench starts its own server), and the table shows them.

No wall-clock assertions: the numbers are whatever this machine gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(120)
def test_bench_shm_and_stream_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    before = {p.name for p in Path("/dev/shm").iterdir()}
    cmd = [
        sys.executable,
        "-m",
        "gradserve",
        "bench",
        "--duration-s",
        "0.5",
        "--sections",
        "small,large",
        "--transports",
        "grpc-stream,shm",
        "--batching",
        "on",
        "--concurrency",
        "4",
        "--large-concurrency",
        "1",
        "--load-procs",
        "1",
        "--perf-analyzer",
        "none",
        "--no-floors",
        "--no-torch",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=115, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = out.read_text()
    assert "| gradserve | V2 gRPC stream | on | 4 |" in table, table
    assert "| gradserve | V2 gRPC stream | on | 1 |" in table, table  # the 16 MiB cell
    assert "| gradserve | V2 HTTP + system shm | on | 1 |" in table, table
    assert "errors" not in table, table
    # The regions the shared-memory cell made are gone again.
    left = {p.name for p in Path("/dev/shm").iterdir()} - before
    assert not [name for name in left if name.startswith("bench_")], left
