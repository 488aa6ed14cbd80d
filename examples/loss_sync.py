"""Losses and their gradients with the synchronous clients (HTTP and gRPC).

.venv/bin/python examples/loss_sync.py [--url http://localhost:8000] [--grpc localhost:8001]
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

    scores = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]], dtype=np.float32)
    labels = np.array([0, 1, 2])
    with Client(args.url) as http, GrpcClient(args.grpc) as grpc:
        ce = http.loss("cross_entropy", scores, labels, grad=True)
        print("softmax cross-entropy =", float(ce["loss"]))
        print("d loss / d scores     =\n", ce["grad_input"])
        hinge = grpc.loss("hinge", scores, labels, grad=True, reduction="none")
        print("multiclass SVM L_i    =", hinge["loss"])
        mse = grpc.loss("mse", [1.0, 2.0, 3.0], [1.5, 2.0, 2.0], reduction="sum")
        print("sum of squared diffs  =", float(mse["loss"]))
        # The full loss: data loss + lambda * R(W), with gradients for W, b and x.
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        w = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32) * 0.01
        full = http.loss(
            "full_loss",
            target=labels,
            inputs={"x": x, "weight": w, "bias": np.zeros(3, np.float32)},
            grad=True,
            data_loss="cross_entropy",
            regularization="l2",
            strength=0.1,
        )
        print(
            "full loss = data + reg =",
            float(full["loss"]),
            "=",
            float(full["data_loss"]),
            "+",
            float(full["reg_loss"]),
        )
        print("grad_weight shape     =", full["grad_weight"].shape)


if __name__ == "__main__":
    main()
