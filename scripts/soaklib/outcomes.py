"""Outcomes: what each kind of request may answer, and the Tally the load's workers
record into (counts, latencies, failures), whose window of each second the sampler takes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

TRANSPORTS = ("native", "v2-json", "v2-binary", "grpc")
FAULT_KINDS = ("disconnect", "timeout", "cancel", "oversize", "fuzz")

# What each kind of request may answer. A valid request must succeed; a fault may get
# the documented refusal, or (for timeouts and cancels) no answer by the client's doing.
# Anything else, and every 5xx / INTERNAL / UNKNOWN, is a failure.
EXPECTED: dict[str, frozenset[str]] = {
    "valid": frozenset({"200", "OK"}),
    "disconnect": frozenset({"closed"}),
    "timeout": frozenset({"200", "client-timeout"}),
    "cancel": frozenset({"OK", "client-cancel", "DEADLINE_EXCEEDED"}),
    "oversize": frozenset({"413", "RESOURCE_EXHAUSTED"}),
    "fuzz": frozenset({"400", "413", "422", "INVALID_ARGUMENT"}),
}


def status_class(code: str) -> str:
    """An outcome code -> its class: "2xx", "4xx", "5xx" (HTTP statuses and gRPC codes
    alike), or "none" when no answer came by the client's doing."""
    if code.isdigit():
        return f"{code[0]}xx"
    if code == "OK":
        return "2xx"
    if code in ("INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"):
        return "4xx"
    if code in ("closed", "client-timeout", "client-cancel"):
        return "none"
    # UNKNOWN, INTERNAL, UNAVAILABLE, CANCELLED by the server, transport errors.
    return "5xx"


def is_failure(kind: str, code: str) -> bool:
    """Whether an outcome is a failure: a 5xx-class code or one not expected for its kind."""
    return status_class(code) == "5xx" or code not in EXPECTED[kind]


@dataclass
class Tally:
    """Everything the workers record; the sampler thread swaps the window under the lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TRANSPORTS})
    window: list[tuple[str, float]] = field(default_factory=list)
    window_completed: int = 0
    failures: list[str] = field(default_factory=list)
    checked: int = 0
    t0: float = field(default_factory=time.monotonic)

    def record(self, transport: str, kind: str, code: str, latency_s: float | None, detail: str = "") -> None:
        with self.lock:
            self.counts[(transport, kind, code)] += 1
            self.window_completed += 1
            if latency_s is not None and kind == "valid" and code in ("200", "OK"):
                ms = latency_s * 1000.0
                self.latencies[transport].append(ms)
                self.window.append((transport, ms))
            if is_failure(kind, code):
                self.fail(f"{transport} {kind} -> {code} {detail}".rstrip())

    def fail(self, message: str) -> None:
        self.failures.append(f"t={time.monotonic() - self.t0:7.1f}s {message}")

    def take_window(self) -> tuple[list[tuple[str, float]], int, int]:
        with self.lock:
            window, completed = self.window, self.window_completed
            self.window, self.window_completed = [], 0
            return window, completed, len(self.failures)
