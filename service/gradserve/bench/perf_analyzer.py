"""Triton's perf_analyzer (C++) as the load generator of V2 HTTP and gRPC cells: finding
it, checking it can send a model's inputs, writing its input data, running one cell and
parsing its CSV."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from gradserve.bench.results import Row
from gradserve.bench.servers import ROOT, children_cpu_s, proc_cpu_s
from gradserve.bench.workloads import InputTensor

DEFAULT_PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer"


def perf_analyzer_path(arg: str | None) -> Path | None:
    """The binary: ``arg``, else .tools/perf_analyzer, else PATH; None for 'none' or none found."""
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


def perf_analyzer_input_data(path: Path, config: dict[str, Any], inputs: list[InputTensor]) -> list[str]:
    """Write the request's tensors as perf_analyzer JSON input data (base64, with
    shapes); only the given inputs are sent, so optional ones stay absent. Returns the
    flags: ``--input-data`` and, for a model with max_batch_size > 0, ``-b``."""
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
