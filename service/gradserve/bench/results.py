"""Results: one measured cell (``Row``) and the percentile every measurement uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Row:
    """One measured cell."""

    section: str  # "small" or "large"
    target: str  # "gradserve", "floor op", "floor no-op", "torch"
    transport: str  # "native", "v2", "grpc", "grpc-stream", "shm" or "in-process"
    batching: str  # "on", "off", "-" or "target"
    concurrency: int
    loadgen: str
    req_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    server_cpu: float = float("nan")  # percent of one core
    loadgen_cpu: float = float("nan")
    errors: int = 0
    note: str = ""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]
