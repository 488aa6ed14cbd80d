"""glibc malloc tuning at start-up: ``gradserve serve`` (cli.py) -> **malloc.tune**.

Under mixed load the server's live memory stays flat, but glibc keeps freed chunks in
its arenas, so RSS after a long load ends above its baseline (a ten-minute soak:
+96 MiB, the memory glibc reports in use flat at 113-118 MiB; docs/soak.md). A fixed
mmap threshold serves every allocation at or above it with its own mmap, returned to
the kernel when freed, which removes most of that (+22 MiB in the same soak). It also
turns off glibc's adaptive threshold, under which a freed 16 MiB tensor raises the
threshold and the next one reuses heap memory: with a fixed 128 KiB threshold each
16 MiB buffer is mapped and faulted in anew, and a 16 MiB relu cost 2.5-3x more CPU
here. So the default leaves glibc adaptive (speed), and the setting trades speed on
large tensors for memory returned after load.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


def tune(mmap_threshold_bytes: int) -> bool:
    """Fix glibc's mmap threshold (0: leave it adaptive); True when applied."""
    if mmap_threshold_bytes <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        log.warning("malloc_mmap_threshold_bytes is set but this libc has no mallopt; ignored")
        return False
    if not mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_bytes)):
        log.warning("mallopt refused an mmap threshold of %d bytes; ignored", mmap_threshold_bytes)
        return False
    log.info("glibc mmap threshold fixed at %d bytes", mmap_threshold_bytes)
    return True
