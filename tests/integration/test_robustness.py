"""Regression tests for every HTTP failure class that fuzzing found (issue 8): each now
answers a clear 4xx naming the input or param, never a 5xx, through the real app."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import httpx
import orjson
import pytest

from gradserve.config import Settings
from gradserve.rest.app import create_app

BIG = 2**63 - 1


def native_error(r: httpx.Response, status: int, *needles: str) -> str:
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    for needle in needles:
        assert needle in message, message
    assert len(r.content) < 2_000, "an error answer must stay short whatever the request held"
    return str(message)


def v2_error(r: httpx.Response, status: int, *needles: str) -> str:
    assert r.status_code == status, r.text
    message = r.json()["error"]
    for needle in needles:
        assert needle in message, message
    return str(message)


def v2_body(name: str, datatype: str, shape: list[int], data: Any, **params: Any) -> bytes:
    doc: dict[str, Any] = {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    if params:
        doc["parameters"] = params
    return json.dumps(doc).encode()


# ---------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize(
    "shape",
    [[10**9, 0], [0, BIG], [0, 2**62, 2**62], [2**40, 0, 1000]],
    ids=["1e9x0", "0x2^63", "0x2^62x2^62", "2^40x0"],
)
async def test_zero_dim_beside_a_huge_one_is_413(app_client: httpx.AsyncClient, shape: list[int]) -> None:
    # Zero elements, but a JSON answer of up to a billion empty lists: refused up front.
    r = await app_client.post("/v1/init/zeros", json={"shape": shape})
    native_error(r, 413, "param 'shape'", "zero dimension")
    r = await app_client.post(
        "/v1/activations/relu", json={"x": {"dtype": "float32", "shape": shape, "data": []}}
    )
    native_error(r, 413, "input 'x'")
    r = await app_client.post("/v2/models/relu/infer", content=v2_body("x", "FP32", shape, []))
    v2_error(r, 413, "input 'x'")
    text = ",".join(map(str, shape))
    r = await app_client.post(
        "/v2/models/normal/infer", content=json.dumps({"inputs": [], "parameters": {"shape": text}})
    )
    v2_error(r, 413, "param 'shape'")


async def test_small_zero_element_shapes_still_work(app_client: httpx.AsyncClient) -> None:
    r = await app_client.post("/v1/init/zeros", json={"shape": [1000, 0]})
    assert r.status_code == 200 and r.json()["weight"]["shape"] == [1000, 0]
    r = await app_client.post(
        "/v1/activations/relu", json={"x": {"dtype": "float32", "shape": [0, 3], "data": []}, "grad": True}
    )
    assert r.status_code == 200, r.text
    assert r.json()["grad_x"] == {"dtype": "float32", "shape": [0, 3], "data": []}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize(
    "op,body",
    [
        ("relu", v2_body("x", "FP32", [0, 3], [])),
        ("zeros", json.dumps({"inputs": [], "parameters": {"shape": "0,5"}}).encode()),
        (
            "mse",
            json.dumps(
                {
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [0], "data": []},
                        {"name": "target", "datatype": "FP32", "shape": [0], "data": []},
                    ],
                    "parameters": {"reduction": "none"},
                }
            ).encode(),
        ),
    ],
)
async def test_v2_zero_element_outputs(
    app_client: httpx.AsyncClient, op: str, body: bytes, binary: bool
) -> None:
    doc = json.loads(body)
    doc.setdefault("parameters", {})["binary_data_output"] = binary
    r = await app_client.post(f"/v2/models/{op}/infer", content=json.dumps(doc))
    assert r.status_code == 200, r.text
    if binary:
        length = int(r.headers["inference-header-content-length"])
        outputs = json.loads(r.content[:length])["outputs"]
        assert len(r.content) == length + sum(o["parameters"]["binary_data_size"] for o in outputs)
    else:
        outputs = r.json()["outputs"]
    empty = [o for o in outputs if 0 in o["shape"]]
    assert empty, outputs
    for o in empty:
        assert o["parameters"]["binary_data_size"] == 0 if binary else o["data"] == []


@pytest.mark.parametrize("dims", [17, 65, 70])
async def test_too_many_dims_is_413(app_client: httpx.AsyncClient, dims: int) -> None:
    shape = [1] * dims
    r = await app_client.post(
        "/v1/activations/relu", json={"x": {"dtype": "float32", "shape": shape, "data": [1.0]}}
    )
    native_error(r, 413, "input 'x'", "dimensions")
    r = await app_client.post("/v2/models/relu/infer", content=v2_body("x", "FP32", shape, [1.0]))
    v2_error(r, 413, "input 'x'", "dimensions")
    r = await app_client.post("/v1/init/zeros", json={"shape": shape})
    native_error(r, 413, "param 'shape'", "dimensions")
    nested: Any = 1.0
    for _ in range(dims):
        nested = [nested]
    r = await app_client.post("/v1/activations/relu", json={"x": nested})
    native_error(r, 413, "input 'x'")


async def test_json_answer_cap_is_a_setting() -> None:
    app = create_app(settings=Settings(max_json_response_elements=10))
    await app.state.runtime.start(wait_ready=True)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            r = await client.post("/v1/activations/relu", json={"x": [[1.0] * 4] * 4})
            native_error(r, 413, "answer", "binary")
            r = await client.post("/v1/init/zeros", json={"shape": [11, 0]})  # 11 empty lists
            native_error(r, 413, "answer")
            body = v2_body("x", "FP32", [4, 4], [1.0] * 16)
            v2_error(await client.post("/v2/models/relu/infer", content=body), 413, "binary")
            binary = v2_body("x", "FP32", [4, 4], [1.0] * 16, binary_data_output=True)
            r = await client.post("/v2/models/relu/infer", content=binary)
            assert r.status_code == 200, r.text  # binary answers are bounded by bytes instead
            r = await client.post("/v1/activations/relu", json={"x": [1.0, -1.0]})
            assert r.status_code == 200
    finally:
        await app.state.runtime.drain()
        app.state.runtime.close()


# ---------------------------------------------------------------- numbers and params


@pytest.mark.parametrize(
    "op,param,value",
    [
        ("leaky_relu", "negative_slope", 1e300),
        ("elu", "alpha", 1e300),
        ("softplus", "beta", 1e300),
        ("elu", "alpha", -1e39),
    ],
)
async def test_float_params_beyond_float32_are_422(
    app_client: httpx.AsyncClient, op: str, param: str, value: float
) -> None:
    r = await app_client.post(f"/v1/activations/{op}", json={"x": [1.0, -2.0], param: value})
    native_error(r, 422, f"param {param!r}", "float32 range")
    r = await app_client.post(
        f"/v2/models/{op}/infer", content=v2_body("x", "FP32", [2], [1.0, -2.0], **{param: value})
    )
    v2_error(r, 422, f"param {param!r}")


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70, 1e19])
async def test_int_params_beyond_int64_are_422(app_client: httpx.AsyncClient, value: int) -> None:
    body = json.dumps({"input": [[1.0, 2.0]], "target": [0], "ignore_index": value})
    r = await app_client.post("/v1/losses/cross_entropy", content=body)
    native_error(r, 422, "param 'ignore_index'", "int")
    doc = json.loads(v2_body("input", "FP32", [1, 2], [1.0, 2.0], ignore_index=str(value)))
    doc["inputs"].append({"name": "target", "datatype": "INT64", "shape": [1], "data": [0]})
    v2_error(
        await app_client.post("/v2/models/cross_entropy/infer", content=json.dumps(doc)), 422, "ignore_index"
    )


@pytest.mark.parametrize(
    "data,needle",
    [
        ([1e300], "beyond the range of float32"),
        ([True, 1.0], "true"),
        ([None, 1.0], "null"),
        ([{"a": 1}], "object"),
        (["1" * 16_000_000], "16000000 characters"),
        ("a" * 100_000, "100000 characters"),
        ([["1" * 100_000] * 100], "100000 characters"),
    ],
    ids=[
        "1e300-as-float32",
        "bool",
        "null",
        "object",
        "16MB-digit-string",
        "bare-string",
        "many-long-strings",
    ],
)
async def test_bad_tensor_values_are_422(app_client: httpx.AsyncClient, data: Any, needle: str) -> None:
    r = await app_client.post("/v1/activations/relu", content=orjson.dumps({"x": data}))
    native_error(r, 422, "input 'x'", needle)
    flat = data if isinstance(data, list) else [data]
    r = await app_client.post("/v2/models/relu/infer", content=v2_body("x", "FP32", [len(flat)], flat))
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("value", [1e300, -1e39])
async def test_scalar_beyond_float32_is_422(app_client: httpx.AsyncClient, value: float) -> None:
    native_error(
        await app_client.post("/v1/activations/relu", json={"x": value}), 422, "input 'x'", "float32"
    )


async def test_scalar_non_finite_strings_decode(app_client: httpx.AsyncClient) -> None:
    r = await app_client.post("/v1/activations/silu", json={"x": "Infinity"})
    assert r.status_code == 200 and r.json()["y"]["data"] == "Infinity"


async def test_full_loss_scores_are_capped_before_computing(app_client: httpx.AsyncClient) -> None:
    # x [N, 0] and weight [C, 0] hold nothing, but scores would be N x C (fuzzing: 4 GB+).
    body = {
        "x": {"dtype": "float32", "shape": [64, 0], "data": []},
        "weight": {"dtype": "float32", "shape": [2**24, 0], "data": []},
        "target": [0] * 64,
    }
    native_error(await app_client.post("/v1/losses/full_loss", json=body), 413, "scores [N, C]")
    doc = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [8, 0], "data": []},
            {"name": "weight", "datatype": "FP32", "shape": [2**24, 0], "data": []},
            {"name": "target", "datatype": "INT64", "shape": [8], "data": [0] * 8},
        ]
    }
    v2_error(await app_client.post("/v2/models/full_loss/infer", content=json.dumps(doc)), 413, "scores")
    body = {
        "x": {"dtype": "float32", "shape": [4, 0], "data": []},
        "weight": [[]] * 3,
        "target": [0, 1, 2, 0],
    }
    r = await app_client.post("/v1/losses/full_loss", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["scores"]["data"] == [[0.0] * 3] * 4


async def test_int64_targets_beyond_range_are_422(app_client: httpx.AsyncClient) -> None:
    body = json.dumps({"input": [[1.0, 2.0]], "target": [2**63]})
    native_error(
        await app_client.post("/v1/losses/cross_entropy", content=body), 422, "input 'target'", "int64"
    )


async def test_non_finite_strings_still_decode(app_client: httpx.AsyncClient) -> None:
    r = await app_client.post("/v1/activations/relu", json={"x": ["NaN", "Infinity", "-Infinity", 1.5]})
    assert r.status_code == 200, r.text
    assert r.json()["y"]["data"] == ["NaN", "Infinity", 0.0, 1.5]


@pytest.mark.parametrize("depth", [100, 1000])
async def test_deeply_nested_param_is_a_short_422(app_client: httpx.AsyncClient, depth: int) -> None:
    body = b'{"x": [1.0], "negative_slope": ' + b"[" * depth + b"]" * depth + b"}"
    message = native_error(
        await app_client.post("/v1/activations/leaky_relu", content=body), 422, "negative_slope"
    )
    assert len(message) < 200


async def test_deep_json_past_the_parsers_limit_is_400(app_client: httpx.AsyncClient) -> None:
    body = b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    native_error(await app_client.post("/v1/activations/relu", content=body), 400, "JSON")


async def test_huge_param_strings_are_short_422s(app_client: httpx.AsyncClient) -> None:
    doc = json.loads(v2_body("x", "FP32", [1], [1.0], negative_slope="9" * 100_000))
    message = v2_error(
        await app_client.post("/v2/models/leaky_relu/infer", content=json.dumps(doc)), 422, "negative_slope"
    )
    assert len(message) < 300
    body = json.dumps({"inputs": [], "parameters": {"shape": "1" * 50_000}})
    v2_error(await app_client.post("/v2/models/zeros/infer", content=body), 422, "param 'shape'")
    r = await app_client.post(f"/v2/models/{'m' * 5000}/infer", content=b"{}")
    assert r.status_code == 404 and len(r.content) < 300


# ---------------------------------------------------------------- V2 framing


@pytest.mark.parametrize("value", [b"\xb2", b"\xd9\xa1", b"1" * 40, b"-5", b" "])
async def test_odd_inference_header_lengths_are_400(app_client: httpx.AsyncClient, value: bytes) -> None:
    r = await app_client.post(
        "/v2/models/relu/infer",
        content=b'{"inputs": []}',
        headers=[(b"Inference-Header-Content-Length", value)],
    )
    v2_error(r, 400, "Inference-Header-Content-Length")


async def test_gzip_members_are_all_read_and_trailing_bytes_refused(app_client: httpx.AsyncClient) -> None:
    doc = v2_body("x", "FP32", [2], [1.0, -2.0])
    half = len(doc) // 2
    two_members = gzip.compress(doc[:half]) + gzip.compress(doc[half:])
    r = await app_client.post(
        "/v2/models/relu/infer", content=two_members, headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [1.0, 0.0]
    trailing = gzip.compress(doc) + b"garbage"
    r = await app_client.post("/v2/models/relu/infer", content=trailing, headers={"Content-Encoding": "gzip"})
    v2_error(r, 400, "follow the end")
    r = await app_client.post(
        "/v2/models/relu/infer", content=zlib.compress(doc) + b"x", headers={"Content-Encoding": "deflate"}
    )
    v2_error(r, 400, "follow the end")


# ---------------------------------------------------------------- a client that leaves mid-body


async def test_client_gone_mid_body_is_not_a_500() -> None:
    app = create_app(settings=Settings())
    runtime = app.state.runtime
    await runtime.start(wait_ready=True)
    sent: list[dict[str, Any]] = []
    messages = [
        {"type": "http.request", "body": b'{"x": [1.0, ', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/v1/activations/relu",
        "raw_path": b"/v1/activations/relu",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "root_path": "",
    }
    try:
        await app(scope, receive, send)  # must not raise
    finally:
        await runtime.drain()
        runtime.close()
    assert sent[0]["status"] == 499
