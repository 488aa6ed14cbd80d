#!/usr/bin/env python3
"""What a fixed glibc mmap threshold (`--malloc-mmap-threshold-bytes`, service/gradserve/malloc.py)
costs a large request: a loop of a 16 MiB body buffer, relu on it, and the answer's copy,
one thread, timed with glibc's adaptive threshold (0) and with a fixed one.

    .venv/bin/python scripts/bench_malloc_threshold.py [THRESHOLD_BYTES ...]   (default: 0 131072)

Each threshold runs in its own process: mallopt cannot be undone within one.
"""

from __future__ import annotations

import subprocess
import sys
import time

STEPS = 100


def child(threshold: int) -> None:
    import torch

    sys.path.insert(0, "service")
    from gradserve import malloc

    torch.set_num_threads(1)
    malloc.tune(threshold)

    def step() -> bytes:
        body = bytearray(16 * 1024 * 1024)
        y = torch.relu(torch.frombuffer(body, dtype=torch.float32))
        return bytes(memoryview(y.numpy()).cast("B"))

    for _ in range(5):
        step()
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    print(f"threshold {threshold}: {(time.perf_counter() - started) / STEPS * 1e3:.2f} ms per 16 MiB step")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]))
        return
    for threshold in [int(a) for a in sys.argv[1:]] or [0, 131072]:
        subprocess.run([sys.executable, __file__, "--child", str(threshold)], check=True)


if __name__ == "__main__":
    main()
