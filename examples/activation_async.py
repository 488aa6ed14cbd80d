"""Activations and their gradients with the asynchronous clients (HTTP and gRPC), concurrently.

.venv/bin/python examples/activation_async.py [--url http://localhost:8000] [--grpc localhost:8001]
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np

from gradserve_client import AsyncClient, AsyncGrpcClient


async def run(url: str, target: str) -> None:
    x = np.linspace(-3, 3, 7, dtype=np.float32)
    async with AsyncClient(url) as http, AsyncGrpcClient(target) as grpc:
        # Many ops at once: the server batches compatible requests together.
        names = ["sigmoid", "tanh", "gelu", "silu", "mish", "softplus"]
        answers = await asyncio.gather(
            *(http.activation(op, x, grad=True) for op in names[:3]),
            *(grpc.activation(op, x, grad=True) for op in names[3:]),
        )
        for op, out in zip(names, answers, strict=True):
            print(f"{op:9s} y={np.round(out['y'], 3)}  grad_x={np.round(out['grad_x'], 3)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://localhost:8000", help="gradserve HTTP base URL")
    parser.add_argument("--grpc", default="localhost:8001", help="gradserve gRPC target host:port")
    args = parser.parse_args()
    asyncio.run(run(args.url, args.grpc))


if __name__ == "__main__":
    main()
