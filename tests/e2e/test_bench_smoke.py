"""Smoke test of `gradserve bench`: one short cell end to end, and the table prints.

No wall-clock assertions: the numbers are whatever this machine gives.
"""

from __future__ import annotations

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
