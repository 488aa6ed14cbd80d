"""Native REST (/v1) through the real app: every op, every error class, the catalog."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradserve.codecs.native import encode_tensor
from gradserve.ops import build_registry
from gradserve.warmup import example

REGISTRY = build_registry()


def _body(tensors: dict[str, torch.Tensor]) -> dict[str, object]:
    """Send tensors in the object form so their dtypes travel exactly."""
    out: dict[str, object] = {}
    for name, t in tensors.items():
        enc = encode_tensor(t)
        data = enc["data"]
        out[name] = {
            "dtype": enc["dtype"],
            "shape": enc["shape"],
            "data": np.asarray(data).reshape(-1).tolist() if t.dim() else [data],
        }
    return out


def _tensor(value: dict[str, object]) -> torch.Tensor:
    dtype = getattr(torch, str(value["dtype"]))
    return torch.tensor(value["data"], dtype=torch.float64).to(dtype).reshape(value["shape"])  # type: ignore[arg-type]


@pytest.mark.parametrize("op", REGISTRY.names())
async def test_every_op_answers_with_and_without_grad(app_client: httpx.AsyncClient, op: str) -> None:
    spec = REGISTRY.get(op)
    tensors, params = example(spec)
    for grad in (False, True):
        body = {**_body(tensors), **params}
        if spec.grad_outputs:
            body["grad"] = grad
        r = await app_client.post(f"/v1/{spec.family}/{op}", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        expected = set(spec.output_names)
        if grad:
            expected |= {
                g for g in spec.grad_output_names if g.removeprefix("grad_") in tensors or g == "grad_alpha"
            }
        assert set(answer) == expected
        for value in answer.values():
            assert set(value) == {"dtype", "shape", "data"}


async def test_cross_entropy_values_and_grad_match_torch(app_client: httpx.AsyncClient) -> None:
    scores = [[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]]
    body = {
        "input": {"dtype": "float64", "shape": [3, 3], "data": [v for row in scores for v in row]},
        "target": [0, 1, 2],
        "grad": True,
    }
    r = await app_client.post("/v1/losses/cross_entropy", json=body)
    assert r.status_code == 200, r.text
    x = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
    loss = F.cross_entropy(x, torch.tensor([0, 1, 2]))
    (grad,) = torch.autograd.grad(loss, x)
    out = r.json()
    assert out["loss"]["dtype"] == "float64" and out["loss"]["shape"] == []
    assert out["loss"]["data"] == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(out["grad_input"]["data"], grad.numpy(), rtol=1e-12)


async def test_hinge_lecture_example(app_client: httpx.AsyncClient) -> None:
    scores = [[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]]
    r = await app_client.post(
        "/v1/losses/hinge", json={"input": scores, "target": [0, 1, 2], "reduction": "none"}
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["loss"]["data"], [2.9, 0.0, 12.9], atol=1e-5)


@pytest.mark.parametrize(
    "encoding",
    ["nested", "flat", "b64"],
)
async def test_three_request_encodings_agree(app_client: httpx.AsyncClient, encoding: str) -> None:
    values = np.array([[-1.5, 0.0, 2.25], [3.0, -4.0, 0.5]], dtype=np.float32)
    x: object
    if encoding == "nested":
        x = values.tolist()
    elif encoding == "flat":
        x = {"dtype": "float32", "shape": [2, 3], "data": values.reshape(-1).tolist()}
    else:
        x = {"dtype": "float32", "shape": [2, 3], "b64": base64.b64encode(values.tobytes()).decode()}
    r = await app_client.post("/v1/activations/relu", json={"x": x, "grad": True})
    assert r.status_code == 200, r.text
    assert r.json()["y"] == {"dtype": "float32", "shape": [2, 3], "data": np.maximum(values, 0).tolist()}


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
async def test_dtype_in_same_dtype_out(app_client: httpx.AsyncClient, dtype: str) -> None:
    t = torch.tensor([[-1.0, 0.5, 2.0]]).to(getattr(torch, dtype))
    raw = base64.b64encode(t.view(torch.uint8).numpy().tobytes()).decode()
    r = await app_client.post(
        "/v1/activations/sigmoid", json={"x": {"dtype": dtype, "shape": [1, 3], "b64": raw}, "grad": True}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["y"]["dtype"] == dtype and out["grad_x"]["dtype"] == dtype
    expected = torch.sigmoid(t.double())
    tol = {"float32": 1e-6, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1e-2}[dtype]
    np.testing.assert_allclose(out["y"]["data"], expected.numpy(), rtol=tol, atol=tol)


async def test_non_finite_values_round_trip(app_client: httpx.AsyncClient) -> None:
    r = await app_client.post("/v1/activations/tanh", json={"x": ["NaN", "Infinity", "-Infinity", 0.0]})
    assert r.status_code == 200, r.text
    assert r.json()["y"]["data"] == ["NaN", 1.0, -1.0, 0.0]


async def test_extreme_scores_give_finite_loss(app_client: httpx.AsyncClient) -> None:
    r = await app_client.post(
        "/v1/losses/cross_entropy",
        json={"input": [[1e4, -1e4, 0.0], [-3e4, 2e4, 1e4]], "target": [1, 0], "grad": True},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert math.isfinite(out["loss"]["data"])
    assert all(math.isfinite(v) for row in out["grad_input"]["data"] for v in row)


async def test_init_is_seeded(app_client: httpx.AsyncClient) -> None:
    body = {"shape": [64, 32], "seed": 7, "mode": "fan_in"}
    a = (await app_client.post("/v1/init/xavier_normal", json=body)).json()
    b = (await app_client.post("/v1/init/xavier_normal", json=body)).json()
    c = (await app_client.post("/v1/init/xavier_normal", json={**body, "seed": 8})).json()
    assert a == b and a != c
    assert a["std"]["data"] == pytest.approx(1 / math.sqrt(32), rel=1e-6)
    assert a["weight"]["shape"] == [64, 32]


async def test_catalog_lists_every_op_with_params(app_client: httpx.AsyncClient) -> None:
    r = await app_client.get("/v1/ops")
    assert r.status_code == 200
    ops = {o["name"]: o for o in r.json()["ops"]}
    assert set(ops) == set(REGISTRY.names())
    leaky = ops["leaky_relu"]
    assert leaky["family"] == "activations"
    assert {p["name"]: p["default"] for p in leaky["params"]} == {"negative_slope": 0.01}
    alpha = next(i for i in ops["prelu"]["inputs"] if i["name"] == "alpha")
    assert alpha["optional"] and alpha["default"] == 0.25
    ce = ops["cross_entropy"]
    assert {"input", "target", "weight", "grad_loss"} <= {i["name"] for i in ce["inputs"]}
    assert ce["grad_outputs"] == ["grad_input"]


async def test_openapi_has_a_model_per_op(app_client: httpx.AsyncClient) -> None:
    schema = (await app_client.get("/openapi.json")).json()
    assert "/v1/losses/cross_entropy" in schema["paths"]
    model = schema["components"]["schemas"]["CrossEntropyRequest"]
    assert model["properties"]["label_smoothing"]["default"] == 0.0
    assert model["properties"]["reduction"]["default"] == "mean"


async def test_health_and_ready(app_client: httpx.AsyncClient) -> None:
    assert (await app_client.get("/healthz")).status_code == 200
    assert (await app_client.get("/readyz")).status_code == 200


# -- errors ---------------------------------------------------------------------------

ERRORS = [
    # (path, body or raw bytes, status, code, words the message must contain)
    ("/v1/activations/nope", {"x": [1]}, 404, "op_not_found", ["nope"]),
    ("/v1/losses/relu", {"x": [1]}, 404, "op_not_found", ["relu"]),
    ("/v1/activations/relu", b"{not json", 400, "malformed_json", ["JSON"]),
    # What json.dumps writes for float("nan") by default: the message says what to send.
    ("/v1/activations/relu", b'{"x": [1.0, NaN]}', 400, "malformed_json", ['"NaN"', "allow_nan"]),
    ("/v1/activations/relu", b'{"x": [-Infinity]}', 400, "malformed_json", ['"-Infinity"']),
    ("/v1/activations/relu", b"[1, 2]", 400, "malformed_json", ["object"]),
    ("/v1/activations/relu", {"x": [[1, 2], [3]]}, 422, "ragged_tensor", ["'x'", "ragged"]),
    (
        "/v1/activations/relu",
        {"x": {"shape": [2, 2], "data": [1, 2, 3]}},
        422,
        "shape_mismatch",
        ["'x'", "4"],
    ),
    ("/v1/activations/relu", {"x": {"shape": [2], "b64": "!!!"}}, 422, "bad_base64", ["'x'", "base64"]),
    (
        "/v1/activations/relu",
        {"x": {"dtype": "float128", "shape": [1], "data": [1]}},
        422,
        "unknown_dtype",
        ["'x'", "float128"],
    ),
    ("/v1/activations/relu", {"x": {"shape": [-1], "data": []}}, 422, "bad_shape", ["'x'", "negative"]),
    ("/v1/activations/relu", {"x": ["a", "b"]}, 422, "bad_tensor", ["'x'"]),
    ("/v1/activations/relu", {"x": [1], "bogus": 1}, 422, "unknown_field", ["bogus"]),
    ("/v1/activations/relu", {}, 422, "missing_input", ["'x'"]),
    ("/v1/activations/relu", {"x": [1.0], "grad_y": [1.0, 2.0]}, 422, "invalid_input", ["grad_y"]),
    ("/v1/losses/mse", {"input": [[1.0, 2.0]], "target": [[1.0]]}, 422, "invalid_input", ["target"]),
    (
        "/v1/losses/cross_entropy",
        {"input": [[1.0, 2.0]], "target": [5]},
        422,
        "invalid_input",
        ["target", "5"],
    ),
    ("/v1/losses/cross_entropy", {"input": [[1.0, 2.0]], "target": [-3]}, 422, "invalid_input", ["target"]),
    ("/v1/losses/bce", {"input": [0.5, 1.5], "target": [0.0, 1.0]}, 422, "invalid_input", ["input"]),
    # Mixed float dtypes are computed in the first float input's: a value the cast would
    # make inf is out of range, and the op's checks see the values as sent.
    (
        "/v1/losses/l1",
        {
            "input": {"dtype": "float16", "shape": [1], "data": [1.0]},
            "target": {"dtype": "float64", "shape": [1], "data": [70000]},
        },
        422,
        "value_out_of_range",
        ["'target'", "float16", "'input'"],
    ),
    (
        "/v1/losses/bce",
        {"input": [0.5], "target": {"dtype": "float64", "shape": [1], "data": [1.000000001]}},
        422,
        "invalid_input",
        ["target", "[0, 1]"],
    ),
    (
        "/v1/losses/nll",
        {
            "input": [[1.0, 2.0]],
            "target": {"dtype": "int64", "shape": [1], "data": [9.223372036854776e18]},
            "ignore_index": -(2**63),
        },
        422,
        "value_out_of_range",
        ["'target'", "int64"],
    ),
    ("/v1/activations/relu", {"x": ["1e400"]}, 422, "value_out_of_range", ["'x'", "float64"]),
    ("/v1/losses/bce", {"input": [0.5, "NaN"], "target": [0.0, 1.0]}, 422, "invalid_input", ["input"]),
    (
        "/v1/losses/mse",
        {"input": [1.0], "target": [1.0], "reduction": "avg"},
        422,
        "bad_param",
        ["reduction", "avg"],
    ),
    ("/v1/activations/softmax", {"x": [[1.0, 2.0]], "dim": 5}, 422, "invalid_input", ["dim"]),
    (
        "/v1/activations/leaky_relu",
        {"x": [1.0], "negative_slope": "big"},
        422,
        "bad_param",
        ["negative_slope"],
    ),
    (
        "/v1/activations/leaky_relu",
        {"x": [1.0], "negative_slope": "NaN"},
        422,
        "bad_param",
        ["negative_slope"],
    ),
    ("/v1/init/normal", {"shape": [2, 2], "std": -1.0}, 422, "bad_param", ["std"]),
    (
        "/v1/init/kaiming_normal",
        {"shape": [2, 2], "nonlinearity": "swish"},
        422,
        "bad_param",
        ["nonlinearity"],
    ),
    ("/v1/init/xavier_uniform", {"shape": [5]}, 422, "invalid_input", ["shape"]),
    ("/v1/init/normal", {"shape": [2, -2]}, 422, "bad_shape", ["shape"]),
    ("/v1/init/normal", {"shape": [2.5]}, 422, "bad_shape", ["shape"]),
    ("/v1/init/normal", {}, 422, "missing_param", ["shape"]),
    ("/v1/init/zeros", {"shape": [100000, 100000]}, 413, "request_too_large", ["shape"]),
]


@pytest.mark.parametrize(("path", "body", "status", "code", "words"), ERRORS)
async def test_errors(
    app_client: httpx.AsyncClient, path: str, body: object, status: int, code: str, words: list[str]
) -> None:
    if isinstance(body, bytes):
        r = await app_client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = await app_client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], error
    assert "Traceback" not in r.text


async def test_body_limit_is_413_before_reading(app_client: httpx.AsyncClient) -> None:
    from gradserve.config import MiB

    r = await app_client.post(
        "/v1/activations/relu", content=b"[" * 10, headers={"content-length": str(65 * MiB)}
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


async def test_tensor_element_cap_is_413(app_client: httpx.AsyncClient) -> None:
    r = await app_client.post(
        "/v1/activations/relu", json={"x": {"dtype": "float32", "shape": [1 << 30], "b64": ""}}
    )
    assert r.status_code == 413
