"""Losses and their gradients with the asynchronous clients (HTTP and gRPC).

.venv/bin/python examples/loss_async.py [--url http://localhost:8000] [--grpc localhost:8001]
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np

from gradserve_client import AsyncClient, AsyncGrpcClient


async def run(url: str, target: str) -> None:
    logits = np.array([[2.0, -1.0], [-0.5, 0.3]], dtype=np.float32)
    labels = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    async with AsyncClient(url) as http, AsyncGrpcClient(target) as grpc:
        bce, l1, reg = await asyncio.gather(
            http.loss("bce_with_logits", logits, labels, grad=True),
            grpc.loss("l1", logits, labels, grad=True, reduction="mean"),
            grpc.loss("regularization", inputs={"weight": logits}, grad=True, kind="l2", strength=0.5),
        )
        print("bce_with_logits =", float(bce["loss"]), " grad_input =", bce["grad_input"].tolist())
        print("l1              =", float(l1["loss"]), " grad_input =", l1["grad_input"].tolist())
        print("0.5 * sum(w^2)  =", float(reg["penalty"]), " grad_weight =", reg["grad_weight"].tolist())


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
