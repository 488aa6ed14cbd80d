"""What a call that releases the GIL costs on a thread that shares it with a busy one.

gradserve's event loop shares the GIL with the compute worker thread and grpc.aio's
poller thread. A torch (or numpy) call releases the GIL while it runs and must get it
back after; when another thread is running Python at that moment, the caller waits.
This times a few calls of the request path alone and then beside a thread that runs
Python with a small torch op between stretches (a stand-in for a batch runner); the
figures in docs/benchmarks.md ("gRPC: decode plans and inline stream batches") come
from it:

    .venv/bin/python scripts/gil_contention.py
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

RAW = bytes(320)  # an 8x10 float32 tensor's bytes
TARGET = torch.zeros(8, dtype=torch.int64)
CALLS: dict[str, Callable[[], Any]] = {
    "bytearray copy (pure C, keeps the GIL)": lambda: bytearray(RAW),
    "torch.frombuffer": lambda: torch.frombuffer(bytearray(RAW), dtype=torch.float32, count=80),
    "np.frombuffer": lambda: np.frombuffer(bytearray(RAW), dtype=np.float32, count=80),
    "tensor.reshape": lambda: TARGET.reshape((2, 4)),
    "torch.aminmax + int()": lambda: [int(v) for v in torch.aminmax(TARGET)],
    "tensor.numpy()": lambda: TARGET.numpy(),
    "pure Python (sum of 40)": lambda: sum(range(40)),
}


def time_us(call: Callable[[], Any], n: int = 3000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    alone = {name: time_us(call) for name, call in CALLS.items()}
    stop = threading.Event()

    def busy() -> None:
        x = 0
        while not stop.is_set():
            for i in range(200):
                x += i
            torch.ones(4).sum()

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        beside = {name: time_us(call) for name, call in CALLS.items()}
    finally:
        stop.set()
        thread.join()
    print(f"{'call':42s} {'alone us':>9s} {'beside a busy thread us':>24s}")
    for name in CALLS:
        print(f"{name:42s} {alone[name]:9.1f} {beside[name]:24.1f}")


if __name__ == "__main__":
    main()
