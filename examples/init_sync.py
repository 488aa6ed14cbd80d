"""Weight initialization with the synchronous clients (HTTP and gRPC).

.venv/bin/python examples/init_sync.py [--url http://localhost:8000] [--grpc localhost:8001]
"""

from __future__ import annotations

import argparse

import numpy as np

from gradserve_client import Client, GrpcClient


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://localhost:8000", help="gradserve HTTP base URL")
    parser.add_argument("--grpc", default="localhost:8001", help="gradserve gRPC target host:port")
    args = parser.parse_args()

    with Client(args.url) as http, GrpcClient(args.grpc) as grpc:
        # Kaiming for ReLU layers: Var = 2 / fan_in.
        he = http.init("kaiming_normal", (500, 500), seed=0)
        print(f"kaiming_normal  var={he['weight'].var():.5f}  target={float(he['std']) ** 2:.5f}")
        # Xavier with mode fan_in: the lecture's Var = 1 / n.
        xavier = grpc.init("xavier_normal", (500, 500), seed=0, mode="fan_in")
        print(f"xavier fan_in   var={xavier['weight'].var():.5f}  target={float(xavier['std']) ** 2:.5f}")
        # The same seed gives the same bytes, over either transport.
        again = http.init("xavier_normal", (500, 500), seed=0, mode="fan_in")
        print("same seed, same weights:", bool(np.array_equal(xavier["weight"], again["weight"])))
        q = grpc.init("orthogonal", (64, 64), seed=1)["weight"]
        print("orthogonal: W W^T == I:", bool(np.allclose(q @ q.T, np.eye(64), atol=1e-5)))


if __name__ == "__main__":
    main()
