"""A seeded fuzz of a running `gradserve serve` (issue 8, item 1): a few thousand
requests over native REST, V2 REST and gRPC, hostile ones mixed in, with the server's
RSS sampled throughout.

Every answer must be a documented 4xx (INVALID_ARGUMENT, NOT_FOUND or
RESOURCE_EXHAUSTED on gRPC) or a 200 (OK); a 200 of a request built valid is checked
against torch. RSS stays under a bound, the log holds no traceback and no 500, and the
server still answers a plain request at the end. Failures are collected and reported
together, each with the request that caused it.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import orjson
import pytest
import torch
import torch.nn.functional as F

from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.fuzz._support import Deep, RssWatch, guard, to_json

SEED = 20260808
HTTP_CASES = 2000
GRPC_CASES = 1000
WORKERS = 4
RSS_GROWTH_BOUND = 1024 * 2**20  # over the baseline after warm-up (a clean run grows ~200 MiB)
HTTP_DOCUMENTED = {200, 400, 404, 405, 413, 422, 429}
GRPC_DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
HOSTILE: list[Any] = [
    1e300,
    -1e300,
    2**70,
    -(2**70),
    2**63,
    -(2**63) - 1,
    "NaN",
    "Infinity",
    "",
    None,
    True,
    [],
    {},
    [[1.0], [1.0, 2.0]],
    [0, 2**62],
    [2**31, 0],
    [1] * 65,
    [0] * 70,
    [2**62, 2**62],
    Deep(500, 1.0),
    Deep(1000, {"a": 1}),
    "x" * 1000,
    {"dtype": "float32", "shape": [0, 2**62], "data": []},
    {"dtype": "float32", "shape": [2**31, 0], "b64": ""},
    {"dtype": "float32", "shape": [1] * 65, "data": [1.0]},
    {"dtype": "int64", "shape": [2], "data": [2**63, -(2**63) - 1]},
    {"dtype": "float16", "shape": [1], "data": [1e300]},
    {"dtype": "float32", "shape": [3], "b64": "AAAA"},
]


@dataclass
class Case:
    """One request and what its answer must be."""

    transport: str
    label: str
    send: Callable[[Any], tuple[Any, Any]]  # client -> (status, payload)
    check: Callable[[Any], str | None] | None = None  # payload of a 200 -> problem or None
    expect: set[Any] | None = None  # statuses allowed (default: the documented set)


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    hostile: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, case: Case, status: Any, problem: str | None) -> None:
        with self.lock:
            if case.label.startswith("!"):
                self.hostile.append(f"{case.label[1:60]} -> {status}")
            self.statuses[f"{case.transport} {status}"] += 1
            if problem:
                self.failures.append(f"[{case.transport}] {case.label}: {problem}")


# ---------------------------------------------------------------- valid requests and their torch answers


def _rand_tensor(rng: random.Random, shape: list[int], scale: float = 3.0) -> list[Any]:
    t = torch.empty(shape).uniform_(
        -scale, scale, generator=torch.Generator().manual_seed(rng.getrandbits(31))
    )
    return list(t.tolist())


def _flat(rows: list[Any]) -> list[float]:
    return [v for row in rows for v in row]


def _close(got: Any, want: torch.Tensor, what: str) -> str | None:
    g = torch.tensor(got, dtype=torch.float64).reshape(want.shape)
    if not torch.allclose(g, want.double(), rtol=1e-4, atol=1e-5, equal_nan=True):
        return f"{what}: wrong answer: got {g.flatten()[:6].tolist()} want {want.flatten()[:6].tolist()}"
    return None


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "softmax": lambda x: torch.softmax(x, -1),
    "log_softmax": lambda x: torch.log_softmax(x, -1),
}


def valid_native(rng: random.Random) -> tuple[str, dict[str, Any], Callable[[dict[str, Any]], str | None]]:
    kind = rng.choice(["act", "act", "mse", "ce", "zeros"])
    shape = [rng.randint(1, 4), rng.randint(1, 5)]
    if kind == "act":
        op = rng.choice(list(ACTIVATIONS))
        x = _rand_tensor(rng, shape)
        want = ACTIVATIONS[op](torch.tensor(x))
        return f"/v1/activations/{op}", {"x": x}, lambda body: _close(body["y"]["data"], want, op)
    if kind == "mse":
        a, b = _rand_tensor(rng, shape), _rand_tensor(rng, shape)
        want = F.mse_loss(torch.tensor(a), torch.tensor(b))
        return (
            "/v1/losses/mse",
            {"input": a, "target": b},
            lambda body: _close(body["loss"]["data"], want, "mse"),
        )
    if kind == "ce":
        a = _rand_tensor(rng, shape)
        t = [rng.randrange(shape[1]) for _ in range(shape[0])]
        want = F.cross_entropy(torch.tensor(a), torch.tensor(t))
        return (
            "/v1/losses/cross_entropy",
            {"input": a, "target": t},
            lambda body: _close(body["loss"]["data"], want, "cross_entropy"),
        )
    return (
        "/v1/init/zeros",
        {"shape": shape},
        lambda body: _close(body["weight"]["data"], torch.zeros(shape), "zeros"),
    )


def valid_v2(rng: random.Random) -> tuple[str, bytes, dict[str, str], Callable[[httpx.Response], str | None]]:
    op = rng.choice(list(ACTIVATIONS))
    shape = [rng.randint(1, 3), rng.randint(1, 4)]
    x = _rand_tensor(rng, shape)
    want = ACTIVATIONS[op](torch.tensor(x))
    if rng.random() < 0.5:
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": _flat(x)}]}

        def check(r: httpx.Response) -> str | None:
            return _close(r.json()["outputs"][0]["data"], want, f"v2 {op}")

        return f"/v2/models/{op}/infer", orjson.dumps(doc), {}, check
    raw = struct.pack(f"<{len(_flat(x))}f", *_flat(x))
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )

    def check_bin(r: httpx.Response) -> str | None:
        n = int(r.headers["inference-header-content-length"])
        got = torch.frombuffer(bytearray(r.content[n:]), dtype=torch.float32)
        return _close(got.tolist(), want, f"v2 binary {op}")

    return (
        f"/v2/models/{op}/infer",
        head + raw,
        {"Inference-Header-Content-Length": str(len(head))},
        check_bin,
    )


# ---------------------------------------------------------------- mutations


def mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """Replace a random node of a JSON value with a hostile value (or drop/add a key)."""
    if isinstance(value, dict) and value and depth < 4:
        out = dict(value)
        key = rng.choice(list(out))
        roll = rng.random()
        if roll < 0.1:
            del out[key]
        elif roll < 0.2:
            out[rng.choice(["grad", "reduction", "negative_slope", "dim", "ignore_index", "seed", "zz"])] = (
                rng.choice(HOSTILE)
            )
        else:
            out[key] = mutate(rng, out[key], depth + 1)
        return out
    if isinstance(value, list) and value and depth < 4 and rng.random() < 0.6:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        out_list[i] = mutate(rng, out_list[i], depth + 1)
        return out_list
    return rng.choice(HOSTILE)


NATIVE_ROUTES = [
    "/v1/activations/leaky_relu",
    "/v1/activations/elu",
    "/v1/activations/softplus",
    "/v1/activations/prelu",
    "/v1/activations/maxout",
    "/v1/losses/huber",
    "/v1/losses/nll",
    "/v1/losses/hinge",
    "/v1/losses/kl_div",
    "/v1/losses/bce",
    "/v1/losses/full_loss",
    "/v1/losses/regularization",
    "/v1/init/normal",
    "/v1/init/kaiming_uniform",
    "/v1/init/orthogonal",
    "/v1/init/trunc_normal",
    "/v1/init/constant",
]
HOSTILE_NATIVE: list[tuple[str, Any]] = [
    ("/v1/init/zeros", {"shape": [0, 2**62]}),
    ("/v1/init/normal", {"shape": [2**31, 0]}),
    ("/v1/init/zeros", {"shape": [0, 2**63 - 1]}),
    ("/v1/init/constant", {"shape": [1] * 65}),
    ("/v1/init/zeros", {"shape": [0, 1 << 24, 1 << 20]}),
    ("/v1/activations/relu", {"x": {"dtype": "float32", "shape": [0, 2**62], "data": []}}),
    ("/v1/activations/relu", {"x": {"dtype": "float32", "shape": [1] * 65, "data": [1.0]}}),
    ("/v1/activations/relu", {"x": Deep(70, 1.0)}),
    ("/v1/activations/leaky_relu", {"x": [1.0], "negative_slope": 1e300}),
    ("/v1/activations/elu", {"x": [1.0], "alpha": 1e300}),
    ("/v1/activations/softplus", {"x": [1.0], "beta": 1e300}),
    ("/v1/losses/cross_entropy", {"input": [[1.0, 2.0]], "target": [0], "ignore_index": 2**70}),
    ("/v1/losses/cross_entropy", {"input": [[1.0, 2.0]], "target": [0], "ignore_index": 2**63}),
    ("/v1/losses/nll", {"input": [[1.0, 2.0]], "target": [0], "ignore_index": Deep(1000, 1)}),
    ("/v1/activations/leaky_relu", {"x": [1.0], "negative_slope": Deep(1000, 1.0)}),
    ("/v1/init/normal", {"shape": [2, 2], "seed": 2**70}),
    ("/v1/init/normal", {"shape": [2, 2], "std": 1e300}),
    ("/v1/losses/huber", {"input": [1.0], "target": [1.0], "delta": 1e-320}),
    ("/v1/activations/softmax", {"x": [[1.0]], "dim": 2**63}),
    # Zero-element inputs whose output is not: scores [N, C] of x [N, 0] and weight [C, 0]
    # (found by this fuzzer: 1 GiB of scores from a 140-byte request; [64, 0] x [2**24, 0]
    # grows the process past 4 GiB).
    (
        "/v1/losses/full_loss",
        {
            "x": {"shape": [16, 0], "data": []},
            "weight": {"shape": [1 << 24, 0], "data": []},
            "target": [0] * 16,
        },
    ),
]


def hostile_v2_bodies() -> list[tuple[str, bytes, dict[str, str]]]:
    def j(doc: Any) -> bytes:
        return to_json(doc)

    head = j(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}
    )
    zero_out = j(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 3], "data": []}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    return [
        ("/v2/models/relu/infer", head + b"\x00" * 8, {"Inference-Header-Content-Length": "١"}),
        ("/v2/models/relu/infer", head + b"\x00" * 8, {"Inference-Header-Content-Length": "²"}),
        ("/v2/models/relu/infer", head + b"\x00" * 8, {"Inference-Header-Content-Length": "٣٢"}),
        ("/v2/models/relu/infer", head + b"\x00" * 4, {"Inference-Header-Content-Length": str(len(head))}),
        ("/v2/models/relu/infer", head + b"\x00" * 12, {"Inference-Header-Content-Length": str(len(head))}),
        ("/v2/models/relu/infer", zero_out, {}),
        ("/v2/models/zeros/infer", j({"inputs": [], "parameters": {"shape": "0,4611686018427387904"}}), {}),
        ("/v2/models/zeros/infer", j({"inputs": [], "parameters": {"shape": ",".join(["1"] * 65)}}), {}),
        (
            "/v2/models/zeros/infer",
            j({"inputs": [{"name": "shape", "datatype": "INT64", "shape": [2], "data": [0, 2**62]}]}),
            {},
        ),
        (
            "/v2/models/leaky_relu/infer",
            j(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
                    "parameters": {"negative_slope": 1e300},
                }
            ),
            {},
        ),
        (
            "/v2/models/cross_entropy/infer",
            j(
                {
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]},
                        {"name": "target", "datatype": "INT64", "shape": [1], "data": [0]},
                    ],
                    "parameters": {"ignore_index": 2**70},
                }
            ),
            {},
        ),
        (
            "/v2/models/leaky_relu/infer",
            j(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
                    "parameters": {"negative_slope": Deep(1000, 1)},
                }
            ),
            {},
        ),
        (
            "/v2/models/relu/infer",
            j(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [0], "data": []}],
                    "parameters": {"binary_data_output": True},
                }
            ),
            {},
        ),
        (
            "/v2/models/full_loss/infer",
            j(
                {
                    "inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [8, 0], "data": []},
                        {"name": "weight", "datatype": "FP32", "shape": [1 << 24, 0], "data": []},
                        {"name": "target", "datatype": "INT64", "shape": [8], "data": [0] * 8},
                    ],
                    "outputs": [{"name": "loss"}],
                }
            ),
            {},
        ),
    ]


# ---------------------------------------------------------------- case builders


def http_cases(rng: random.Random, n: int) -> list[Case]:
    cases: list[Case] = []

    def post(
        path: str, body: bytes, headers: dict[str, str]
    ) -> Callable[[httpx.Client], tuple[int, httpx.Response]]:
        def send(client: httpx.Client) -> tuple[int, httpx.Response]:
            # Header values as UTF-8 bytes: the fuzz sends non-ASCII digits.
            sent = {
                b"Content-Type": b"application/json",
                **{k.encode(): v.encode() for k, v in headers.items()},
            }
            r = client.post(path, content=body, headers=sent)
            return r.status_code, r

        return send

    for path, doc in HOSTILE_NATIVE:
        body = to_json(doc)
        cases.append(Case("http", f"!POST {path} {body[:160]!r}", post(path, body, {})))
    for path, body, headers in hostile_v2_bodies():
        cases.append(Case("http", f"!POST {path} {headers} {body[:160]!r}", post(path, body, headers)))
    while len(cases) < n:
        roll = rng.random()
        if roll < 0.25:
            path, doc, check = valid_native(rng)
            body = to_json(doc)
            cases.append(
                Case(
                    "http",
                    f"POST {path} {body[:160]!r}",
                    post(path, body, {}),
                    lambda r, c=check: c(r.json()),  # type: ignore[misc]
                    {200},
                )
            )
        elif roll < 0.35:
            path, vbody, headers, vcheck = valid_v2(rng)
            cases.append(
                Case(
                    "http",
                    f"POST {path} {headers} {vbody[:160]!r}",
                    post(path, vbody, headers),
                    vcheck,
                    {200},
                )
            )
        elif roll < 0.7:
            path, doc, _ = valid_native(rng)
            if rng.random() < 0.5:
                path = rng.choice(NATIVE_ROUTES)
            for _ in range(rng.randint(1, 3)):
                doc = mutate(rng, doc)
            body = to_json(doc)
            cases.append(Case("http", f"POST {path} {body[:200]!r}", post(path, body, {})))
        elif roll < 0.9:
            path, vbody, headers, _ = valid_v2(rng)
            if headers:
                raw = bytearray(vbody)
                for _ in range(rng.randint(1, 4)):
                    raw[rng.randrange(len(raw))] = rng.randrange(256)
                if rng.random() < 0.3:
                    headers = {
                        "Inference-Header-Content-Length": rng.choice(
                            ["١", "²", "-1", "0", "99999", str(len(raw) - 1)]
                        )
                    }
                mbody = bytes(raw)
            else:
                mbody = to_json(mutate(rng, orjson.loads(vbody)))
            if rng.random() < 0.2:
                path = path.replace("/infer", "/versions/" + rng.choice(["1", "2", "x", "%00"]) + "/infer")
            cases.append(Case("http", f"POST {path} {headers} {mbody[:200]!r}", post(path, mbody, headers)))
        else:
            path = rng.choice(["/v1/activations/", "/v1/losses/", "/v1/init/", "/v2/models/"]) + rng.choice(
                ["relu", "mse", "zeros", "nope", "a" * 300, "%F0%9F%98%80", ".."]
            )
            if path.startswith("/v2"):
                path += rng.choice(["/infer", "", "/ready", "/config"])
            junk = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
            cases.append(Case("http", f"POST {path} {junk!r}", post(path, junk, {})))
    return cases[:n]


def grpc_cases(rng: random.Random, n: int) -> list[Case]:
    cases: list[Case] = []

    def infer(msg: pb.ModelInferRequest) -> Callable[[pb_grpc.GRPCInferenceServiceStub], tuple[Any, Any]]:
        def send(stub: pb_grpc.GRPCInferenceServiceStub) -> tuple[Any, Any]:
            try:
                return grpc.StatusCode.OK, stub.ModelInfer(msg, timeout=30)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()

        return send

    def raw_call(method: str, data: bytes) -> Callable[[Any], tuple[Any, Any]]:
        def send(stub: Any) -> tuple[Any, Any]:
            call = stub._channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            try:
                return grpc.StatusCode.OK, call(data, timeout=30)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()

        return send

    def msg_for(
        op: str, shape: list[int], values: list[float] | None = None, name: str = "x"
    ) -> pb.ModelInferRequest:
        msg = pb.ModelInferRequest(model_name=op)
        t = msg.inputs.add(name=name, datatype="FP32", shape=shape)
        count = 1
        for d in shape:
            count *= max(d, 0)
        vals = values if values is not None else [0.5] * min(count, 64)
        msg.raw_input_contents.append(struct.pack(f"<{len(vals)}f", *vals))
        del t
        return msg

    # Hostile first.
    zero = msg_for("relu", [0, 3], [])
    cases.append(Case("grpc", "!relu zero-element [0, 3]", infer(zero)))
    huge = pb.ModelInferRequest(model_name="zeros")
    huge.parameters["shape"].string_param = "0,4611686018427387904"
    cases.append(Case("grpc", "!zeros shape 0,2**62", infer(huge)))
    dims = pb.ModelInferRequest(model_name="zeros")
    dims.parameters["shape"].string_param = ",".join(["1"] * 65)
    cases.append(Case("grpc", "!zeros 65 dims", infer(dims)))
    big = msg_for("leaky_relu", [1], [1.0])
    big.parameters["negative_slope"].double_param = 1e300
    cases.append(Case("grpc", "!leaky_relu negative_slope 1e300", infer(big)))
    for method in (
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelMetadata",
        "/grpc.health.v1.Health/Check",
    ):
        for junk in (b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x3a" + b"\xff" * 9 + b"\x01"):
            cases.append(Case("grpc", f"!{method} undecodable {junk!r}", raw_call(method, junk)))
    while len(cases) < n:
        op = rng.choice(list(ACTIVATIONS))
        shape = [rng.randint(1, 3), rng.randint(1, 4)]
        x = _rand_tensor(rng, shape)
        flat = _flat(x)
        msg = msg_for(op, shape, flat)
        roll = rng.random()
        if roll < 0.4:
            want = ACTIVATIONS[op](torch.tensor(x))

            def check(resp: pb.ModelInferResponse, want: torch.Tensor = want, op: str = op) -> str | None:
                got = torch.frombuffer(bytearray(resp.raw_output_contents[0]), dtype=torch.float32)
                return _close(got.tolist(), want, f"grpc {op}")

            cases.append(Case("grpc", f"{op} {shape}", infer(msg), check, {grpc.StatusCode.OK}))
            continue
        label = f"{op} {shape} mutated:"
        if roll < 0.55:
            msg.inputs[0].shape[rng.randrange(2)] = rng.choice([0, -1, 2**31, 2**62, 2**63 - 1])
            label += f" shape {list(msg.inputs[0].shape)}"
        elif roll < 0.65:
            msg.raw_input_contents[0] = msg.raw_input_contents[0][: rng.randrange(len(flat) * 4)]
            label += " truncated raw"
        elif roll < 0.72:
            msg.inputs[0].datatype = rng.choice(["FP64", "INT64", "BOOL", "BYTES", "XX", ""])
            label += f" datatype {msg.inputs[0].datatype}"
        elif roll < 0.8:
            key = rng.choice(["negative_slope", "dim", "alpha", "reduction", "binary_data_output", "shape"])
            p = msg.parameters[key]
            which = rng.choice(["double", "int64", "uint64", "string"])
            if which == "double":
                p.double_param = rng.choice([1e300, -1e300, float("nan"), float("inf"), 3.5e38])
            elif which == "int64":
                p.int64_param = rng.choice([2**63 - 1, -(2**63), 2**31])
            elif which == "uint64":
                p.uint64_param = rng.choice([2**64 - 1, 2**63])
            else:
                p.string_param = rng.choice(["١", "1,2", "", "x" * 1000])
            label += f" param {key}={p}"
        elif roll < 0.87:
            msg.model_name = rng.choice(["", "nope", "zeros", "mse", "x" * 500])
            label += f" model {msg.model_name[:20]}"
        elif roll < 0.93:
            msg.outputs.add(name=rng.choice(["grad_x", "nope", "", "y"]))
            label += f" output {msg.outputs[0].name}"
        else:
            data = bytearray(msg.SerializeToString())
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            cases.append(
                Case(
                    "grpc",
                    f"ModelInfer bytes {bytes(data)!r}",
                    raw_call("/inference.GRPCInferenceService/ModelInfer", bytes(data)),
                )
            )
            continue
        cases.append(Case("grpc", label, infer(msg)))
    return cases[:n]


# ---------------------------------------------------------------- raw-socket faults


def _raw(server: ServerProcess, payload: bytes, *, read: bool = True, timeout_s: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout_s) as s:
        s.sendall(payload)
        if not read:
            return b""
        try:
            return s.recv(4096)
        except TimeoutError:
            return b"<timeout>"


def socket_faults(server: ServerProcess, tally: Tally) -> int:
    """Lying Content-Length both ways, and clients that drop mid-body."""
    body = orjson.dumps({"x": [1.0, -2.0]})
    head = "POST /v1/activations/relu HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    v2head = "POST /v2/models/relu/infer HTTP/1.1\r\nHost: x\r\n"
    n = 0
    faults: list[tuple[str, bytes, bool]] = [
        ("Content-Length shorter than the body", f"{head}Content-Length: 5\r\n\r\n".encode() + body, True),
        ("Content-Length 2**70", f"{head}Content-Length: {2**70}\r\n\r\n".encode() + body, True),
        ("Content-Length -1", f"{head}Content-Length: -1\r\n\r\n".encode() + body, True),
        ("Content-Length ١٠", f"{head}Content-Length: ١٠\r\n\r\n".encode() + body, True),
        ("drop mid-body (native)", f"{head}Content-Length: 100000\r\n\r\n".encode() + body, False),
        ("drop mid-body (v2)", f"{v2head}Content-Length: 100000\r\n\r\n".encode() + b'{"inputs": [', False),
        (
            "drop mid-body (v2 binary)",
            f"{v2head}Inference-Header-Content-Length: 10\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"x" * 5000,
            False,
        ),
        ("drop after headers", f"{head}Content-Length: 10\r\n\r\n".encode(), False),
        (
            "chunked, drop mid-chunk",
            f"{head}Transfer-Encoding: chunked\r\n\r\n1000\r\n".encode() + b"[" * 100,
            False,
        ),
    ]
    for label, payload, read in faults:
        answer = _raw(server, payload, read=read, timeout_s=5.0)
        n += 1
        status = answer[9:12].decode(errors="replace") if answer.startswith(b"HTTP/1.1 ") else "none"
        problem = None
        if status.startswith("5"):
            problem = f"{status}: {answer[:300]!r}"
        tally.record(Case("http-raw", "!" + label, lambda _: (None, None)), status, problem)
    return n


def big_string_blocks(server: ServerProcess) -> tuple[int, float, float]:
    """A 16 MiB string where a tensor should be, while /healthz is polled: returns the
    status of the big request and the worst and median /healthz latency meanwhile."""
    body = b'{"x": "' + b"7" * (16 * 2**20) + b'"}'
    result: dict[str, int] = {}

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            result["status"] = c.post("/v1/activations/relu", content=body).status_code

    sender = threading.Thread(target=send)
    latencies: list[float] = []
    with httpx.Client(base_url=server.url, timeout=60) as c:
        c.get("/healthz")
        sender.start()
        while sender.is_alive() and len(latencies) < 2000:
            t0 = time.monotonic()
            c.get("/healthz")
            latencies.append(time.monotonic() - t0)
            time.sleep(0.005)
    sender.join()
    latencies.sort()
    return (
        result.get("status", 0),
        latencies[-1] if latencies else 0.0,
        latencies[len(latencies) // 2] if latencies else 0.0,
    )


# ---------------------------------------------------------------- the test


def _run_http(server: ServerProcess, cases: list[Case], tally: Tally) -> None:
    local = threading.local()

    def one(case: Case) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server.url, timeout=30)
        try:
            status, response = case.send(local.client)
        except httpx.HTTPError as exc:
            tally.record(case, "transport-error", f"{type(exc).__name__}: {exc}")
            local.client = httpx.Client(base_url=server.url, timeout=30)
            return
        allowed = case.expect or HTTP_DOCUMENTED
        problem = None
        if status not in allowed:
            problem = f"status {status} (allowed {sorted(allowed)}): {response.content[:300]!r}"
        elif status == 200 and case.check is not None:
            try:
                problem = case.check(response)
            except Exception as exc:
                problem = f"unreadable 200: {type(exc).__name__}: {exc}: {response.content[:200]!r}"
        elif status >= 400:
            try:
                err = response.json()["error"]
                if not err:
                    problem = f"{status} without an error message"
            except Exception:
                problem = f"{status} body is not an error document: {response.content[:200]!r}"
        tally.record(case, status, problem)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, cases))


def _run_grpc(server: ServerProcess, cases: list[Case], tally: Tally) -> None:
    options = [
        ("grpc.max_receive_message_length", 128 * 2**20),
        ("grpc.max_send_message_length", 128 * 2**20),
    ]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub._channel = channel  # type: ignore[attr-defined]  # for raw-bytes calls

        def one(case: Case) -> None:
            code, payload = case.send(stub)
            allowed = case.expect or GRPC_DOCUMENTED
            problem = None
            if code not in allowed:
                problem = f"{code.name} (allowed {sorted(c.name for c in allowed)}): {str(payload)[:300]}"
            elif code == grpc.StatusCode.OK and case.check is not None:
                try:
                    problem = case.check(payload)
                except Exception as exc:
                    problem = f"unreadable OK: {type(exc).__name__}: {exc}"
            tally.record(case, code.name, problem)

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(one, cases))


@pytest.mark.timeout(200)
def test_live_fuzz(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    watch: RssWatch = guard(server)
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    hcases = http_cases(rng, HTTP_CASES)
    gcases = grpc_cases(rng, GRPC_CASES)
    tally = Tally()
    t0 = time.monotonic()
    try:
        _run_http(server, hcases, tally)
        t_http = time.monotonic() - t0
        _run_grpc(server, gcases, tally)
        t_grpc = time.monotonic() - t0 - t_http
        raw_count = socket_faults(server, tally)
        big_status, worst, median = big_string_blocks(server)
        if big_status not in HTTP_DOCUMENTED:
            tally.failures.append(f"[http] 16 MiB string as tensor 'x': status {big_status}")
        time.sleep(0.5)  # let the server log what the dropped clients did
        with httpx.Client(base_url=server.url, timeout=10) as c:
            plain = c.post("/v1/activations/relu", json={"x": [-1.0, 2.0]})
            alive = plain.status_code == 200 and plain.json()["y"]["data"] == [0.0, 2.0]
    finally:
        watch.stop()
    log = server.log()
    for marker in ("Traceback", " 500 ", "Internal Server Error", "Exception in ASGI"):
        if marker in log:
            i = log.index(marker)
            tally.failures.append(f"[log] {marker!r} in the server log:\n{log[max(0, i - 800) : i + 1500]}")
            break
    by_transport = Counter(s.split()[0] for s in tally.statuses.elements())
    print(
        f"\nlive fuzz: {by_transport['http']} HTTP + {by_transport['grpc']} gRPC + {raw_count} raw-socket cases; "
        f"HTTP {t_http:.1f} s, gRPC {t_grpc:.1f} s; statuses {dict(sorted(tally.statuses.items()))}"
    )
    print(
        f"live fuzz: 16 MiB string -> {big_status}; /healthz meanwhile worst {worst * 1e3:.0f} ms, median {median * 1e3:.1f} ms"
    )
    print("live fuzz hostile: " + "; ".join(tally.hostile))
    print(f"live fuzz: {watch.summary()}; {len(tally.failures)} failures")
    for failure in tally.failures:
        print("FAIL", failure[:700])
    assert not watch.killed, watch.summary()
    assert watch.peak - watch.baseline < RSS_GROWTH_BOUND, watch.summary()
    assert alive, "the server does not answer a plain request after the fuzz"
    assert not tally.failures, "\n".join(tally.failures[:40])
