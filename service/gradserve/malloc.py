"""glibc malloc: tuning at start-up and returning freed memory when load ends.

Flow position: ``gradserve serve`` (cli.py) -> **malloc.tune** before the runtime
allocates, then **malloc.trim_when_idle** as a task beside the servers for the life of
the process. Measurements and commands: docs/memory.md.

Why memory stays after a load: glibc keeps freed chunks in its arenas (the main heap
and one arena per thread that allocates: grpcio's threads, the compute thread, the
default executor's). Its adaptive mmap threshold rises to the size of the largest
mmapped block freed (up to 32 MiB), so after the first 16 MiB tensor every later one
comes from the arenas too. A 16 MiB gRPC load at concurrency 8 grew RSS from 356 MiB
to 1.27 GB, and 1031 MiB stayed after it, of which glibc counted 144 MiB in use and
643 MiB free in its arenas.

- **trim_when_idle** (setting ``malloc_trim_idle_s``, on by default): once the process
  has been quiet for that long after its anonymous memory grew, ``malloc_trim(0)``
  (off the event loop) gives every whole free page of every arena back to the kernel:
  1031 -> 504 MiB after such a load, in ~50 ms of one thread, once per load. Under
  load nothing changes, so large tensors keep reusing heap memory at full speed.
- **tune** (setting ``malloc_mmap_threshold_bytes``, off by default): a fixed mmap
  threshold serves every allocation at or above it with its own mmap, returned when
  freed, and turns the adaptive rise off. It bounds what a load holds at its peak, but
  each large buffer is then mapped and faulted in anew: 16 MiB relu over gRPC ran at
  21 req/s instead of 48 with a 4 MiB threshold, and smaller blocks still fragment the
  arenas (662 MiB held after the load). For long mixed loads of small and mid-sized
  requests it helps more (docs/soak.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import math
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
MiB = 1024 * 1024
# A trim is worth its ~50 ms only when the process grew by more than what a few large
# requests leave behind; below this the trim is skipped.
TRIM_MIN_RISE_BYTES = 32 * MiB
# "Quiet": under this fraction of one CPU over a tick. An idle server spends well under
# 1% (grpcio's pollers, the loop); one 16 MiB request costs ~20 ms of CPU.
QUIET_CPU_FRACTION = 0.05


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the libc has no mallopt/malloc_trim (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - raise AttributeError here if absent
    except (OSError, AttributeError):
        return None
    return libc


def tune(mmap_threshold_bytes: int) -> bool:
    """Fix glibc's mmap threshold (0: leave it adaptive); True when applied."""
    if mmap_threshold_bytes <= 0:
        return False
    libc = _libc()
    if libc is None:  # not glibc: nothing to tune
        log.warning("malloc_mmap_threshold_bytes is set but this libc has no mallopt; ignored")
        return False
    if not libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_bytes)):
        log.warning("mallopt refused an mmap threshold of %d bytes; ignored", mmap_threshold_bytes)
        return False
    log.info("glibc mmap threshold fixed at %d bytes", mmap_threshold_bytes)
    return True


def trim() -> bool:
    """``malloc_trim(0)``: give every whole free page of every arena back to the kernel
    (the main heap's top is cut, pages inside free chunks are madvised away). Blocks
    allocations in the arena being trimmed while it runs, so call it off the event loop.
    True when glibc released something; False also where there is no glibc."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))


def anon_bytes() -> int | None:
    """The process's resident anonymous memory (RSS less file-backed and shared pages),
    from /proc/self/statm; None where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
    except OSError:
        return None
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")


class IdleTrim:
    """When to trim, from one observation per tick: the CPU seconds the process spent
    over the tick and its anonymous memory. Trim once the process has been quiet for
    ``idle_ticks`` ticks in a row and its memory is ``min_rise_bytes`` above its lowest
    level since the last trim; then the level after the trim is the new reference, so a
    trim that gave little back is not repeated until memory grows again.

    ``low`` is the reference to start from: the level read when the server starts, idle.
    Without it the first observation is the reference, and if that tick falls inside a
    load (a load that begins within a tick of start-up) it is a level the load already
    raised, often above where the load ends: the growth is never seen and no trim runs."""

    def __init__(
        self,
        idle_ticks: int,
        quiet_cpu_s: float,
        min_rise_bytes: int = TRIM_MIN_RISE_BYTES,
        low: int | None = None,
    ) -> None:
        self.idle_ticks = idle_ticks
        self.quiet_cpu_s = quiet_cpu_s
        self.min_rise_bytes = min_rise_bytes
        self.quiet = 0
        self.low = low

    def observe(self, cpu_s: float, anon: int) -> bool:
        """True: trim now."""
        self.quiet = self.quiet + 1 if cpu_s <= self.quiet_cpu_s else 0
        self.low = anon if self.low is None else min(self.low, anon)
        return self.quiet >= self.idle_ticks and anon - self.low >= self.min_rise_bytes

    def trimmed(self, anon: int) -> None:
        self.low = anon
        self.quiet = 0


async def trim_when_idle(
    idle_s: float,
    *,
    read_anon: Callable[[], int | None] = anon_bytes,
    cpu_time: Callable[[], float] = time.process_time,
    do_trim: Callable[[], bool] = trim,
) -> None:
    """Run for the life of the server (cancel to stop): trim glibc's arenas once the
    process has been quiet for ``idle_s`` after its memory grew. Start it before the
    server takes requests: the memory it reads at start is the reference that growth is
    measured from. Each tick costs the loop one statm read and a CPU-time call; the trim
    runs in a worker thread."""
    start_anon = read_anon()
    if idle_s <= 0 or _libc() is None or start_anon is None:
        return
    tick_s = min(1.0, idle_s)
    policy = IdleTrim(math.ceil(idle_s / tick_s), QUIET_CPU_FRACTION * tick_s, low=start_anon)
    cpu = cpu_time()
    while True:
        await asyncio.sleep(tick_s)
        now_cpu, anon = cpu_time(), read_anon() or 0
        busy_s, cpu = now_cpu - cpu, now_cpu
        if not policy.observe(busy_s, anon):
            continue
        started = time.perf_counter()
        await asyncio.to_thread(do_trim)
        after = read_anon() or 0
        policy.trimmed(after)
        # One line per load that ended: what the arenas gave back.
        log.info(
            "malloc_trim: %.0f MiB of freed heap returned to the OS after %.0f s idle (%.0f ms)",
            (anon - after) / MiB,
            idle_s,
            (time.perf_counter() - started) * 1e3,
        )
