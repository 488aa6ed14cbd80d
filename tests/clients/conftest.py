"""Shared cases for the client SDK tests: one request per op family (and then some),
how each client kind calls it, and the server's native REST answer to compare against.

The native /v1 answer is the reference: the same op through V2 (binary or JSON) or
gRPC, via any of the four clients, must give the same values and gradients.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from gradserve_client import AsyncClient, AsyncGrpcClient, Client, GrpcClient, Outputs

_rng = np.random.default_rng(0)


# The four clients, by the names the tests parametrize over.
KINDS = ["http", "async_http", "grpc", "async_grpc"]
ALL_KINDS = pytest.mark.parametrize("kind", KINDS)
GRPC_KINDS = ("grpc", "async_grpc")


def _f32(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


@dataclass
class Case:
    """One op call: its family, tensors (by input name) and params."""

    id: str
    family: str  # activations | losses | init
    op: str
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    grad: bool = False


_logits = _f32(4, 3)
CASES = [
    Case("relu", "activations", "relu", {"x": _f32(4, 5)}, grad=True),
    Case("leaky_relu", "activations", "leaky_relu", {"x": _f32(6)}, {"negative_slope": 0.2}, grad=True),
    Case(
        "gelu_f64", "activations", "gelu", {"x": _f32(3, 4).astype(np.float64)}, {"approximate": "tanh"}, True
    ),
    Case("sigmoid_f16", "activations", "sigmoid", {"x": _f32(5).astype(np.float16)}, grad=True),
    Case("softplus", "activations", "softplus", {"x": _f32(2, 3)}, {"beta": 2.0, "threshold": 10.0}),
    Case(
        "softmax_upstream",
        "activations",
        "softmax",
        {"x": _f32(3, 4), "grad_y": _f32(3, 4)},
        {"dim": 0},
        True,
    ),
    Case("prelu", "activations", "prelu", {"x": _f32(3, 4), "alpha": np.full(4, 0.1, np.float32)}, grad=True),
    Case(
        "maxout",
        "activations",
        "maxout",
        {"x": _f32(3, 4), "weight": _f32(2, 5, 4), "bias": _f32(2, 5)},
        grad=True,
    ),
    Case(
        "cross_entropy",
        "losses",
        "cross_entropy",
        {"input": _logits, "target": np.array([0, 2, 1, 0], np.int64)},
        {"label_smoothing": 0.1},
        True,
    ),
    Case(
        "cross_entropy_probs",
        "losses",
        "cross_entropy",
        {"input": _logits, "target": np.full((4, 3), 1 / 3, np.float32)},
        grad=True,
    ),
    Case("mse_sum", "losses", "mse", {"input": _f32(4, 2), "target": _f32(4, 2)}, {"reduction": "sum"}, True),
    Case(
        "bce_with_logits",
        "losses",
        "bce_with_logits",
        {"input": _f32(4, 3), "target": (_f32(4, 3) > 0).astype(np.float32), "pos_weight": _f32(3) ** 2},
        grad=True,
    ),
    Case(
        "hinge_none",
        "losses",
        "hinge",
        {"input": _logits, "target": np.array([1, 0, 2, 2], np.int64)},
        {"reduction": "none", "margin": 1.0},
        True,
    ),
    Case(
        "kl_div",
        "losses",
        "kl_div",
        {"input": np.log(np.full((2, 3), 1 / 3, np.float32)), "target": np.full((2, 3), 1 / 3, np.float32)},
        {"reduction": "batchmean"},
        True,
    ),
    Case(
        "regularization",
        "losses",
        "regularization",
        {"weight": _f32(3, 4)},
        {"kind": "l1", "strength": 0.5},
        True,
    ),
    Case(
        "full_loss",
        "losses",
        "full_loss",
        {"x": _f32(4, 5), "weight": _f32(3, 5), "bias": _f32(3), "target": np.array([0, 1, 2, 1], np.int64)},
        {"data_loss": "hinge", "regularization": "l2", "strength": 0.1},
        True,
    ),
    Case(
        "kaiming_normal", "init", "kaiming_normal", params={"shape": (64, 32), "seed": 1, "mode": "fan_out"}
    ),
    Case("xavier_uniform", "init", "xavier_uniform", params={"shape": (16, 8, 3, 3), "seed": 2}),
    Case("orthogonal", "init", "orthogonal", params={"shape": (20, 10), "seed": 3}),
    Case("constant_f64", "init", "constant", params={"shape": (3, 4), "value": 0.5, "dtype": "float64"}),
    Case("trunc_normal", "init", "trunc_normal", params={"shape": (50,), "std": 0.02, "seed": 4}),
]
FAMILY_CASES = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


def _split(case: Case) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """The family method's positional tensors and the rest (its ``inputs=``)."""
    rest = dict(case.tensors)
    if case.family == "activations":
        return rest.pop("x"), None, rest
    return rest.pop("input", None), rest.pop("target", None), rest


def call_sync(client: Client | GrpcClient, case: Case) -> Outputs:
    """The case through a sync client's family method (activation / loss / init)."""
    if case.family == "init":
        params = dict(case.params)
        return client.init(case.op, params.pop("shape"), **params)
    first, target, rest = _split(case)
    if case.family == "activations":
        return client.activation(case.op, first, grad=case.grad, inputs=rest, **case.params)
    return client.loss(case.op, first, target, grad=case.grad, inputs=rest, **case.params)


async def call_async(client: AsyncClient | AsyncGrpcClient, case: Case) -> Outputs:
    """The case through an async client's family method."""
    if case.family == "init":
        params = dict(case.params)
        return await client.init(case.op, params.pop("shape"), **params)
    first, target, rest = _split(case)
    if case.family == "activations":
        return await client.activation(case.op, first, grad=case.grad, inputs=rest, **case.params)
    return await client.loss(case.op, first, target, grad=case.grad, inputs=rest, **case.params)


def native_request(case: Case) -> tuple[str, dict[str, Any]]:
    """The /v1 route and JSON body of the case (tensors as exact base64 bytes)."""
    body: dict[str, Any] = {
        name: {"dtype": str(a.dtype), "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}
        for name, a in case.tensors.items()
    }
    body.update({k: list(v) if isinstance(v, tuple) else v for k, v in case.params.items()})
    if case.grad:
        body["grad"] = True
    return f"/v1/{case.family}/{case.op}", body


def native_outputs(body: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(t["data"], dtype=t["dtype"]).reshape(t["shape"]) for name, t in body.items()}


def native_sync(url: str, case: Case) -> dict[str, np.ndarray]:
    path, body = native_request(case)
    response = httpx.post(url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return native_outputs(response.json())


async def native_async(http: httpx.AsyncClient, case: Case) -> dict[str, np.ndarray]:
    path, body = native_request(case)
    response = await http.post(path, json=body)
    assert response.status_code == 200, response.text
    return native_outputs(response.json())


def assert_same(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
    """Same output names, dtypes, shapes and values (bitwise, NaN equal to NaN)."""
    assert list(got) == list(want)
    for name, expected in want.items():
        actual = got[name]
        assert actual.dtype == expected.dtype, name
        assert actual.shape == expected.shape, name
        np.testing.assert_array_equal(actual, expected, err_msg=name)
