"""The lecture's five cases side by side: activation statistics of a 10-layer net.

.venv/bin/python examples/lab_presets.py [--url http://localhost:8000] [--grpc localhost:8001] [--markdown]

Each case runs the lab's ``activation_stats`` op (depth 10, width 500, batch 1000,
seed 0) on the server and prints, per layer, the std of the activations; then, per
case, layer 10's std, saturated and dead fractions. ``--markdown`` prints layer 10's
summary as a Markdown table (the README's).
"""

from __future__ import annotations

import argparse
from typing import Any

from gradserve_client import Client, GrpcClient, Outputs

# name -> (what the lecture calls it, the op's params)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tanh_small": ("tanh, N(0, 0.01^2)", {"activation": "tanh", "init": "normal", "std": 0.01}),
    "tanh_big": ("tanh, N(0, 1)", {"activation": "tanh", "init": "normal", "std": 1.0}),
    "tanh_xavier": ("tanh, Xavier", {"activation": "tanh", "init": "xavier_normal", "mode": "fan_in"}),
    "relu_xavier": ("ReLU, Xavier", {"activation": "relu", "init": "xavier_normal", "mode": "fan_in"}),
    "relu_kaiming": ("ReLU, Kaiming", {"activation": "relu", "init": "kaiming_normal"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://localhost:8000", help="gradserve HTTP base URL")
    parser.add_argument("--grpc", default="localhost:8001", help="gradserve gRPC target host:port")
    parser.add_argument("--markdown", action="store_true", help="print layer 10 as a Markdown table only")
    args = parser.parse_args()

    runs: dict[str, Outputs] = {}
    with Client(args.url, timeout_s=120) as http, GrpcClient(args.grpc, timeout_s=120) as grpc:
        for i, (name, (_, params)) in enumerate(PRESETS.items()):
            # Either transport gives the same seeded numbers; alternate to show both.
            client = http if i % 2 == 0 else grpc
            runs[name] = client.activation_stats(**params)

    if args.markdown:
        print("| case | layer 10 std | saturated (layer 10) | dead (layer 10) |")
        print("|---|---|---|---|")
        for name, (label, _) in PRESETS.items():
            out = runs[name]
            print(f"| {label} | {out['std'][-1]:.3g} | {out['saturated'][-1]:.3f} | {out['dead'][-1]:.3f} |")
        return

    width = 20
    print("std of the activations per layer")
    print(f"{'layer':>5}" + "".join(f"{label:>{width}}" for label, _ in PRESETS.values()))
    for layer in range(len(runs["tanh_small"]["std"])):
        row = "".join(f"{float(runs[name]['std'][layer]):>{width}.4g}" for name in PRESETS)
        print(f"{layer + 1:>5}{row}")
    print()
    print(f"{'layer 10':<{width}}{'std':>10}{'saturated':>12}{'dead':>8}{'grad std':>12}")
    for name, (label, _) in PRESETS.items():
        out = runs[name]
        print(
            f"{label:<{width}}{out['std'][-1]:>10.3g}{out['saturated'][-1]:>12.3f}"
            f"{out['dead'][-1]:>8.3f}{out['grad_std'][-1]:>12.3g}"
        )


if __name__ == "__main__":
    main()
