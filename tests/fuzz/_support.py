"""Helpers the fuzzers share: a guarded server process and its RSS sampler.

A fuzzer may find an input that makes the server allocate without bound (issue 8: a
64-byte request grew a process past 23 GB). So every fuzzed server gets an address-space
limit (``prlimit``) and a watchdog thread that samples its RSS and SIGKILLs it past a
hard bound: the test fails with a clear message instead of taking the machine down.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import ServerProcess, start_server

GiB = 1024**3
# Above the address space a started server already maps (torch reserves a lot of it).
ADDRESS_SPACE_HEADROOM = 6 * GiB
# The watchdog kills the server past this RSS; tests assert a tighter soft bound.
RSS_KILL_BYTES = 4 * GiB


def _status_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss_bytes(pid: int) -> int | None:
    kib = _status_kib(pid, "VmRSS")
    return None if kib is None else kib * 1024


class RssWatch:
    """Samples a process's RSS every ``interval_s``; SIGKILLs it past ``kill_bytes``."""

    def __init__(self, pid: int, *, interval_s: float = 0.05, kill_bytes: int = RSS_KILL_BYTES) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.kill_bytes = kill_bytes
        self.baseline = rss_bytes(pid) or 0
        self.peak = self.baseline
        self.samples = 0
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-watch-{pid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = rss_bytes(self.pid)
            if rss is None:
                return
            self.samples += 1
            self.peak = max(self.peak, rss)
            if rss > self.kill_bytes and not self.killed:
                self.killed = True
                os.kill(self.pid, signal.SIGKILL)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def summary(self) -> str:
        return (
            f"RSS baseline {self.baseline / 2**20:.0f} MiB, peak {self.peak / 2**20:.0f} MiB "
            f"over {self.samples} samples{' (KILLED past the bound)' if self.killed else ''}"
        )


def guard(server: ServerProcess) -> RssWatch:
    """Cap the server's address space and start watching its RSS."""
    vm_kib = _status_kib(server.proc.pid, "VmSize") or 0
    limit = vm_kib * 1024 + ADDRESS_SPACE_HEADROOM
    resource.prlimit(server.proc.pid, resource.RLIMIT_AS, (limit, limit))
    return RssWatch(server.proc.pid)


def start_guarded(tmp_path: Path, *args: str) -> tuple[ServerProcess, RssWatch]:
    server = start_server(tmp_path, *args)
    return server, guard(server)


def log_excerpt(server: ServerProcess, needle: str = "Traceback", lines: int = 30) -> str:
    """The first traceback in a server's log (for failure messages)."""
    text = server.log().splitlines()
    for i, line in enumerate(text):
        if needle in line:
            return "\n".join(text[max(0, i - 2) : i + lines])
    return ""


# ---------------------------------------------------------------- JSON as a hostile client writes it


@dataclass(frozen=True)
class Deep:
    """A value nested ``depth`` lists deep (beyond numpy's 64 dims; up to the JSON
    parser's 1024). Kept as a marker so that hypothesis can print it, built by
    ``materialize`` and ``to_json``."""

    depth: int
    leaf: Any


def materialize(value: Any, max_depth: int = 1024) -> Any:
    """Markers -> real nested lists, as orjson would parse them (it refuses > 1024)."""
    if isinstance(value, Deep):
        out = materialize(value.leaf)
        for _ in range(min(value.depth, max_depth)):
            out = [out]
        return out
    if isinstance(value, list):
        return [materialize(v) for v in value]
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def to_json(value: Any) -> bytes:
    """JSON text as a client may send it: integers of any size (orjson refuses > 64
    bits), nesting of any depth (json.dumps recurses)."""
    marks: list[Deep] = []

    def mark(v: Any) -> Any:
        if isinstance(v, Deep):
            marks.append(v)
            return f"\x00deep{len(marks) - 1}\x00"
        if isinstance(v, list):
            return [mark(x) for x in v]
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        return v

    text = json.dumps(_finite(mark(value)), separators=(",", ":"))
    for i, d in enumerate(marks):
        inner = to_json(d.leaf).decode()
        text = text.replace(json.dumps(f"\x00deep{i}\x00"), "[" * d.depth + inner + "]" * d.depth)
    return text.encode()
