"""Weight initialization with the asynchronous clients (HTTP and gRPC): small vs big
normal init, the lecture's two failure modes, side by side.

    .venv/bin/python examples/init_async.py [--url http://localhost:8000] [--grpc localhost:8001]
"""

from __future__ import annotations

import argparse
import asyncio

from gradserve_client import AsyncClient, AsyncGrpcClient


async def run(url: str, target: str) -> None:
    async with AsyncClient(url) as http, AsyncGrpcClient(target) as grpc:
        small, big, uniform = await asyncio.gather(
            http.init("normal", (256, 256), seed=0, std=0.01),
            grpc.init("normal", (256, 256), seed=0, std=1.0),
            grpc.init("kaiming_uniform", (256, 128, 3, 3), seed=0, dtype="float64"),
        )
        print(f"normal std=0.01   -> std {small['weight'].std():.4f}")
        print(f"normal std=1.0    -> std {big['weight'].std():.4f}")
        w = uniform["weight"]
        print(
            f"kaiming_uniform   -> {w.dtype} {w.shape}, std {w.std():.4f} (target {float(uniform['std']):.4f})"
        )


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
