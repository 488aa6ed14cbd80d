"""Activations and their gradients with the synchronous clients (HTTP and gRPC).

.venv/bin/python examples/activation_sync.py [--url http://localhost:8000] [--grpc localhost:8001]
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

    x = np.array([[-2.0, -0.5, 0.0, 0.5, 2.0]], dtype=np.float32)
    with Client(args.url) as http, GrpcClient(args.grpc) as grpc:
        # ReLU and its gradient (the subgradient at 0 is 0, as in torch).
        relu = http.activation("relu", x, grad=True)
        print("relu      y      =", relu["y"])
        print("relu      grad_x =", relu["grad_x"])
        # Params are keyword arguments; the same call over gRPC gives the same answer.
        leaky = grpc.activation("leaky_relu", x, grad=True, negative_slope=0.1)
        print("leaky     grad_x =", leaky["grad_x"])
        # An upstream gradient and extra tensors go in `inputs`.
        prelu = grpc.activation(
            "prelu", x, grad=True, inputs={"alpha": [0.25], "grad_y": np.full_like(x, 2.0)}
        )
        print("prelu     grad_alpha =", prelu["grad_alpha"])
        softmax = http.activation("softmax", x, dim=-1)
        print("softmax   y      =", softmax["y"], "sum", float(softmax["y"].sum()))


if __name__ == "__main__":
    main()
