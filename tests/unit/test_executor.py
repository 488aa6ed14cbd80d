"""Executor: small CPU batches run inline on the loop, others on the device thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from gradserve.config import Settings
from gradserve.errors import InternalError
from gradserve.executor import Executor, resolve_device
from gradserve.ops import build_registry

REGISTRY = build_registry()


def _recording(executor: Executor) -> list[str]:
    threads: list[str] = []
    real = executor.run_sync

    def run_sync(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    executor.run_sync = run_sync  # type: ignore[method-assign]
    return threads


async def test_small_batches_run_inline_large_ones_on_the_thread() -> None:
    executor = Executor(Settings(device="cpu", inline_below_elements=100))
    threads = _recording(executor)
    relu = REGISTRY.get("relu")
    loop_thread = threading.current_thread().name
    await executor.run(relu, [{"x": torch.ones(10)}], {}, frozenset({"y"}))
    await executor.run(relu, [{"x": torch.ones(10)}] * 20, {}, frozenset({"y"}))  # 200 elements
    await executor.run(relu, [{"x": torch.ones(10)}], {}, frozenset({"y"}), allow_inline=False)
    normal = REGISTRY.get("normal")
    await executor.run(
        normal,
        [{}],
        {"shape": (20, 20), "seed": 0, "mean": 0.0, "std": 1.0, "dtype": "float32"},
        frozenset({"weight"}),
    )
    executor.shutdown()
    assert threads[0] == loop_thread
    assert threads[1] != loop_thread and threads[2] != loop_thread  # too big; not allowed
    assert threads[3] != loop_thread  # an init's weight counts: 400 elements


async def test_inline_off_with_zero() -> None:
    executor = Executor(Settings(device="cpu", inline_below_elements=0))
    threads = _recording(executor)
    await executor.run(REGISTRY.get("relu"), [{"x": torch.ones(2)}], {}, frozenset({"y"}))
    executor.shutdown()
    assert threads[0] != threading.current_thread().name


def test_kernel_failure_is_an_internal_error_without_details() -> None:
    executor = Executor(Settings(device="cpu"))
    spec = REGISTRY.get("relu")
    with pytest.raises(InternalError) as info:
        # A kernel handed a non-tensor fails inside torch: the client sees a generic message.
        executor.run_sync(spec, [{"x": "not a tensor"}], {}, frozenset({"y"}))  # type: ignore[dict-item]
    assert "relu" in info.value.message and "Traceback" not in info.value.message
    executor.shutdown()


def test_device_names() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="expected auto"):
        resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
