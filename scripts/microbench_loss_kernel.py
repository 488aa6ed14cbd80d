"""What one batch of a loss kernel costs on the compute thread: ``Executor.run_sync``
(assemble, the op's reduction runner, split per request) on the bench's small request
(cross_entropy, input 8x10 float32 and 8 int64 targets, loss and grad_input wanted),
batches of 1 to 32 such requests, one torch thread. mse on 8x3 shows the same runner
when a request's element count is not a power of two (its per-request sums go through
a padded buffer). The figures in docs/benchmarks.md ("The loss kernel's fixed cost")
come from it:

    PYTHONPATH=service .venv/bin/python scripts/microbench_loss_kernel.py
"""

from __future__ import annotations

import time

import torch

from gradserve.config import Settings
from gradserve.executor import Executor
from gradserve.ops import build_registry
from gradserve.validation import Limits, validate_params

REPEATS = 2_000
BATCHES = (1, 4, 15, 32)


def request(op: str) -> dict[str, torch.Tensor]:
    if op == "cross_entropy":
        return {"input": torch.randn(8, 10), "target": torch.randint(0, 10, (8,))}
    return {"input": torch.randn(8, 3), "target": torch.randn(8, 3)}


def main() -> None:
    torch.manual_seed(0)
    executor = Executor(Settings(torch_threads=1))
    registry = build_registry()
    want = frozenset({"loss", "grad_input"})
    print(f"torch {torch.__version__}, {REPEATS} batches per row, median of 3 rounds")
    for op in ("cross_entropy", "mse"):
        spec = registry.get(op)
        params = validate_params(spec, {}, lenient=True, ignore_unknown=True, limits=Limits(1 << 30, 16))
        for n in BATCHES:
            batch = [request(op) for _ in range(n)]
            for _ in range(200):  # warm: allocator, autograd's first graph
                executor.run_sync(spec, batch, params, want)
            rounds = []
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(REPEATS):
                    executor.run_sync(spec, batch, params, want)
                rounds.append((time.perf_counter() - start) / REPEATS)
            per_batch = sorted(rounds)[1] * 1e6
            print(
                f"{op:14s} batch {n:3d}: {per_batch:6.0f} us per batch, {per_batch / n:6.1f} us per request"
            )
    executor.shutdown()


if __name__ == "__main__":
    main()
