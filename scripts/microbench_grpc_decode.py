"""What decoding one small ModelInfer request costs: the full decoder against a decode
plan (codecs/v2_grpc_plans.py), on the bench's small request (cross_entropy, input
8x10 float32 and target 8 int64 in raw contents, outputs loss and grad_input, an id).
The figures of docs/architecture.md ("gRPC raw contents") come from it:

    PYTHONPATH=service .venv/bin/python scripts/microbench_grpc_decode.py
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from typing import Any

import numpy as np

from gradserve.codecs import v2_grpc
from gradserve.codecs.v2_grpc_plans import HeaderCache
from gradserve.grpc.generated import inference_pb2 as pb

LIMIT = 1 << 24
N = 20_000


def small_request() -> bytes:
    req = pb.ModelInferRequest(model_name="cross_entropy", id="123")
    req.inputs.add(name="input", datatype="FP32", shape=[8, 10])
    req.inputs.add(name="target", datatype="INT64", shape=[8])
    for name in ("loss", "grad_input"):
        req.outputs.add(name=name)
    req.raw_input_contents.append(np.zeros((8, 10), np.float32).tobytes())
    req.raw_input_contents.append(np.zeros(8, np.int64).tobytes())
    return req.SerializeToString()


def best_us(fn: Callable[[], Any]) -> float:
    return min(timeit.repeat(fn, number=N, repeat=5)) / N * 1e6


def main() -> None:
    data = small_request()
    # The codec's module-level cache, swapped: first one that caches nothing (every
    # request decoded in full), then a fresh one.
    vars(v2_grpc)["HEADERS"] = HeaderCache(max_header_bytes=0)
    full = best_us(lambda: v2_grpc.decode_wire(v2_grpc.parse_infer_request(data), LIMIT))
    vars(v2_grpc)["HEADERS"] = HeaderCache()
    v2_grpc.decode_wire(v2_grpc.parse_infer_request(data), LIMIT)  # the first one makes the plan
    planned = best_us(lambda: v2_grpc.decode_wire(v2_grpc.parse_infer_request(data), LIMIT))
    print(f"parse + decode, full decoder: {full:6.1f} us")
    print(f"parse + decode, through a plan: {planned:6.1f} us")


if __name__ == "__main__":
    main()
