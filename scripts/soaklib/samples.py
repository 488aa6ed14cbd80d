"""Samples: the thread that samples the server every second (RSS, descriptors,
threads, queue depth from /metrics) with the clients' latency of that second.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from .outcomes import TRANSPORTS, Tally
from .server import Server, read_proc


def parse_pending(metrics_text: str, name: str = "nv_inference_pending_request_count") -> float:
    """Sum every sample of the gauge ``name`` in a Prometheus text exposition."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        # Another metric whose name starts with ``name`` (e.g. a _created series).
        if rest[:1] not in ("{", " "):
            continue
        value = rest.rsplit("}", 1)[-1].split()
        if value:
            total += float(value[0])
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100, linear interpolation); NaN when there are no values."""
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass
class Sample:
    """One second of the server and of the clients."""

    t_s: float
    phase: str  # baseline | load | after
    rss_mib: float
    fds: int
    threads: int
    pending: float
    completed: int
    p50_ms: float
    p99_ms: float
    p99_by_transport: dict[str, float] = field(default_factory=dict)
    failures: int = 0
    # Size of the /metrics text: a label set that grows with requests (an op name or a
    # reason taken from the client) would be a leak that shows here first.
    metrics_kib: float = math.nan


class Sampler(threading.Thread):
    """Samples the server every interval from its own thread, so a busy event loop on
    the client side does not stretch the interval."""

    def __init__(self, server: Server, tally: Tally, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.server, self.tally, self.interval_s = server, tally, interval_s
        self.samples: list[Sample] = []
        self.phase = "baseline"
        self.stopped = threading.Event()
        self.http = httpx.Client(base_url=server.url, timeout=5.0)

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.is_set():
            next_at += self.interval_s
            self.samples.append(self.sample())
            self.stopped.wait(max(0.0, next_at - time.monotonic()))
        self.http.close()

    def sample(self) -> Sample:
        rss, fds, threads = read_proc(self.server.proc.pid)
        try:
            text = self.http.get("/metrics").text
            pending, metrics_kib = parse_pending(text), len(text) / 1024.0
        except httpx.HTTPError:
            pending = metrics_kib = math.nan
        window, completed, failures = self.tally.take_window()
        all_ms = [ms for _, ms in window]
        by_t = {t: percentile([ms for tt, ms in window if tt == t], 99) for t in TRANSPORTS}
        return Sample(
            round(time.monotonic() - self.tally.t0, 2), self.phase, rss, fds, threads, pending, completed,
            percentile(all_ms, 50), percentile(all_ms, 99), by_t, failures, metrics_kib,
        )  # fmt: skip
