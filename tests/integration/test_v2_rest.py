"""V2 REST (/v2) against a real `gradserve serve` process: every endpoint, JSON and
binary tensor data, every op family, and malformed requests -> the exact 4xx."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from gradserve.ops import build_registry
from tests.conftest import ServerProcess

REGISTRY = build_registry()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head))}


def parse_response(r: httpx.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON part and every output as numpy (binary or JSON data)."""
    assert r.status_code == 200, r.text
    length = r.headers.get("inference-header-content-length")
    head = json.loads(r.content[: int(length)] if length else r.content)
    blob = r.content[int(length) :] if length else b""
    arrays, offset = {}, 0
    for out in head["outputs"]:
        dtype = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64}.get(
            out["datatype"]
        )
        size = out.get("parameters", {}).get("binary_data_size")
        if size is not None:
            raw = blob[offset : offset + size]
            offset += size
            if out["datatype"] == "BF16":
                arr = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float().numpy()
            else:
                arr = np.frombuffer(raw, dtype=dtype)
        else:
            assert "parameters" not in out  # perf_analyzer's parser needs this
            arr = np.asarray(out["data"], dtype=dtype)
            assert arr.ndim <= 1, "JSON output data must be flat"
        arrays[out["name"]] = arr.reshape(out["shape"])
    assert offset == len(blob)
    return head, arrays


def fp32(name: str, values: Any, dtype: str = "FP32") -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float32)
    return {"name": name, "datatype": dtype, "shape": list(arr.shape), "data": arr.reshape(-1).tolist()}


# ---------------------------------------------------------------- endpoints


def test_server_metadata_health(http: httpx.Client) -> None:
    meta = http.get("/v2").json()
    assert meta["name"] == "gradserve" and "binary_tensor_data" in meta["extensions"]
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("op", REGISTRY.names())
def test_model_metadata_config_ready_every_op(http: httpx.Client, op: str) -> None:
    spec = REGISTRY.get(op)
    for base in (f"/v2/models/{op}", f"/v2/models/{op}/versions/1"):
        meta = http.get(base).json()
        config = http.get(f"{base}/config").json()
        assert http.get(f"{base}/ready").json() == {"name": op, "ready": True}
        assert meta["name"] == op and meta["versions"] == ["1"]
        names = [t["name"] for t in meta["inputs"]]
        expected = [t.name for t in spec.inputs] + (["shape"] if spec.family == "init" else [])
        assert names == expected
        assert [t["name"] for t in meta["outputs"]] == list(spec.all_output_names)
        for t in meta["inputs"] + meta["outputs"]:
            assert t["datatype"] in ("FP32", "INT64") and all(d == -1 for d in t["shape"])
        # perf_analyzer: every config input exists in the metadata; optional marked.
        assert config["max_batch_size"] == 0
        assert [t["name"] for t in config["input"]] == names
        optional = {t.name for t in spec.inputs if t.optional} | (
            {"shape"} if spec.family == "init" else set()
        )
        assert {t["name"] for t in config["input"] if t["optional"]} == optional


def test_unknown_model_and_version(http: httpx.Client) -> None:
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/relu/versions/2/config"):
        r = http.get(path)
        assert r.status_code == 404 and isinstance(r.json()["error"], str)
    r = http.post("/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404 and "nope" in r.json()["error"]


# ---------------------------------------------------------------- inference


def test_json_activation_with_gradient_in_requested_order(http: httpx.Client) -> None:
    body = {
        "id": "req-1",
        "inputs": [fp32("x", [[-1.0, 0.0, 2.0]])],
        "outputs": [{"name": "grad_x"}, {"name": "y"}],
        "parameters": {"triton_enable_empty_final_response": True, "unknown": 5},
    }
    r = http.post("/v2/models/relu/infer", content=json.dumps(body))  # no Content-Type at all
    head, out = parse_response(r)
    assert head["id"] == "req-1" and head["model_name"] == "relu"
    assert [o["name"] for o in head["outputs"]] == ["grad_x", "y"]
    np.testing.assert_array_equal(out["y"], [[0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(out["grad_x"], [[0.0, 0.0, 1.0]])


def test_no_outputs_named_gives_plain_outputs(http: httpx.Client) -> None:
    r = http.post("/v2/models/sigmoid/infer", json={"inputs": [fp32("x", [0.0])]})
    head, out = parse_response(r)
    assert [o["name"] for o in head["outputs"]] == ["y"] and "id" not in head
    assert out["y"].tolist() == [0.5]


def test_binary_in_and_out_with_params(http: httpx.Client) -> None:
    x = np.array([[3.2, 5.1, -1.7], [0.5, 0.2, 0.1]], dtype=np.float32)
    t = np.array([0, 2], dtype=np.int64)
    header = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [2, 3],
                "parameters": {"binary_data_size": x.nbytes},
            },
            {
                "name": "target",
                "datatype": "INT64",
                "shape": [2],
                "parameters": {"binary_data_size": t.nbytes},
            },
        ],
        "outputs": [
            {"name": "loss", "parameters": {"binary_data": True}},
            {"name": "grad_input", "parameters": {"binary_data": False}},
        ],
        "parameters": {"reduction": "sum", "label_smoothing": "0.1"},
    }
    content, headers = binary_body(header, x.tobytes(), t.tobytes())
    headers["Content-Type"] = "application/octet-stream"
    r = http.post("/v2/models/cross_entropy/infer", content=content, headers=headers)
    head, out = parse_response(r)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(xt, torch.tensor(t), reduction="sum", label_smoothing=0.1)
    ref.backward()
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 4}
    assert "data" in head["outputs"][1]
    np.testing.assert_allclose(out["loss"], ref.item(), rtol=1e-6)
    np.testing.assert_allclose(out["grad_input"], xt.grad.numpy(), rtol=1e-5)


def test_binary_data_output_and_float_dtypes(http: httpx.Client) -> None:
    x = torch.tensor([[-2.0, 0.5, 3.0]])
    for datatype, dtype in (("FP64", torch.float64), ("FP16", torch.float16), ("BF16", torch.bfloat16)):
        raw = x.to(dtype).contiguous().view(torch.uint8).numpy().tobytes()
        header = {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype,
                    "shape": [1, 3],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True, "negative_slope": 0.5},
        }
        content, headers = binary_body(header, raw)
        head, out = parse_response(http.post("/v2/models/leaky_relu/infer", content=content, headers=headers))
        assert head["outputs"][0]["datatype"] == datatype
        np.testing.assert_allclose(out["y"].astype(np.float64), [[-1.0, 0.5, 3.0]])


def test_every_family(http: httpx.Client) -> None:
    # Activation with an extra input and its gradient.
    body = {"inputs": [fp32("x", [[-1.0, 2.0]]), fp32("alpha", [0.1])], "outputs": [{"name": "grad_alpha"}]}
    _, out = parse_response(http.post("/v2/models/prelu/infer", json=body))
    assert out["grad_alpha"].tolist() == pytest.approx([-1.0])
    # Regularization and the full loss.
    body = {
        "inputs": [fp32("weight", [[1.0, -2.0]])],
        "parameters": {"kind": "l2", "strength": 0.5},
        "outputs": [{"name": "penalty"}, {"name": "grad_weight"}],
    }
    _, out = parse_response(http.post("/v2/models/regularization/infer", json=body))
    assert out["penalty"].item() == pytest.approx(2.5) and out["grad_weight"].tolist() == [[1.0, -2.0]]
    body = {
        "inputs": [
            fp32("x", [[1.0, 2.0]]),
            fp32("weight", [[0.1, 0.2], [0.3, 0.4]]),
            {"name": "target", "datatype": "INT64", "shape": [1], "data": [1]},
        ],
        "parameters": {"data_loss": "hinge", "regularization": "l2", "strength": 0.1},
        "outputs": [{"name": "loss"}, {"name": "scores"}, {"name": "grad_weight"}],
    }
    _, out = parse_response(http.post("/v2/models/full_loss/infer", json=body))
    assert out["scores"].shape == (1, 2) and out["grad_weight"].shape == (2, 2)
    # Init: shape as a string param and as an INT64 input give the same seeded bytes.
    a = http.post(
        "/v2/models/kaiming_normal/infer", json={"inputs": [], "parameters": {"shape": "50,40", "seed": 3}}
    )
    shape = {"name": "shape", "datatype": "INT64", "shape": [2], "data": [50, 40]}
    b = http.post("/v2/models/kaiming_normal/infer", json={"inputs": [shape], "parameters": {"seed": "3"}})
    (_, wa), (_, wb) = parse_response(a), parse_response(b)
    assert wa["weight"].shape == (50, 40)
    np.testing.assert_array_equal(wa["weight"], wb["weight"])
    assert wa["std"].item() == pytest.approx((2 / 40) ** 0.5)


def test_gzip_body(http: httpx.Client) -> None:
    content = gzip.compress(json.dumps({"inputs": [fp32("x", [1.0, -1.0])]}).encode())
    r = http.post("/v2/models/relu/infer", content=content, headers={"Content-Encoding": "gzip"})
    assert parse_response(r)[1]["y"].tolist() == [1.0, 0.0]


# ---------------------------------------------------------------- malformed requests

X = np.ones((2, 2), np.float32).tobytes()
GOOD_HEAD = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}]
}


def _with_input(**changes: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0], **changes}]}


def _raw(head: dict[str, Any], blob: bytes, length: int | None = None) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(head).encode()
    return text + blob, {"Inference-Header-Content-Length": str(len(text) if length is None else length)}


MALFORMED: dict[str, tuple[tuple[bytes, dict[str, str]], int, str]] = {
    "not json": ((b"{nope", {}), 400, "not valid JSON"),
    "bare NaN": ((json.dumps(_with_input(data=[1.0, float("nan")])).encode(), {}), 400, '"NaN"'),
    "json array": ((b"[1, 2]", {}), 400, "JSON object"),
    "binary without header": (
        (json.dumps(GOOD_HEAD).encode() + X, {}),
        400,
        "Inference-Header-Content-Length",
    ),
    "header not a number": ((X, {"Inference-Header-Content-Length": "ten"}), 400, "non-negative integer"),
    "header past the end": (_raw(GOOD_HEAD, X, length=10_000), 400, "past the end"),
    "raw binary request": (_raw(GOOD_HEAD, X, length=0), 400, "raw binary request"),
    "truncated body": (_raw(GOOD_HEAD, X[:10]), 400, "past the end of the 10-byte binary section"),
    "size does not match shape": (
        _raw({"inputs": [{**GOOD_HEAD["inputs"][0], "parameters": {"binary_data_size": 12}}]}, X[:12]),
        422,
        "needs 16 bytes",
    ),
    "trailing bytes": (_raw(GOOD_HEAD, X + b"\0\0\0\0"), 400, "add up to 16"),
    "negative binary size": (
        _raw({"inputs": [{**GOOD_HEAD["inputs"][0], "parameters": {"binary_data_size": -16}}]}, X),
        400,
        "non-negative",
    ),
    "unknown datatype": (_raw({"inputs": [{**GOOD_HEAD["inputs"][0], "datatype": "FP33"}]}, X), 422, "FP33"),
    "unsupported V2 datatype": ((json.dumps(_with_input(datatype="BOOL")).encode(), {}), 422, "BOOL"),
    "data count mismatch": ((json.dumps(_with_input(shape=[3])).encode(), {}), 422, "needs 3"),
    "negative dim": ((json.dumps(_with_input(shape=[-2])).encode(), {}), 422, "negative"),
    "shape not a list": ((json.dumps(_with_input(shape="2")).encode(), {}), 422, "shape"),
    "ragged data": ((json.dumps(_with_input(data=[[1.0], [2.0, 3.0]])).encode(), {}), 422, "ragged"),
    "non-numeric data": ((json.dumps(_with_input(data=["a", "b"])).encode(), {}), 422, "numbers"),
    "no data": (
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}).encode(), {}),
        400,
        "needs 'data'",
    ),
    "shape over the element limit": ((json.dumps(_with_input(shape=[1 << 40])).encode(), {}), 413, "limit"),
    "inputs not a list": ((b'{"inputs": {}}', {}), 400, "'inputs' must be a list"),
    # A missing field is a body that cannot be read (docs/v2.md): 400, naming the field.
    "no datatype": (
        (json.dumps({"inputs": [{"name": "x", "shape": [1], "data": [1.0]}]}).encode(), {}),
        400,
        "input 'x': has no 'datatype'",
    ),
    "no shape": (
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "data": [1.0]}]}).encode(), {}),
        400,
        "input 'x': has no 'shape'",
    ),
    # {"input": ...} would read as a request without inputs; other unknown fields are
    # ignored, as Triton does (test_v2_unknown_request_fields_are_ignored).
    "misspelled field": (
        (json.dumps({"input": _with_input()["inputs"]}).encode(), {}),
        400,
        "unknown field 'input'; did you mean 'inputs'?",
    ),
    "field in the wrong case": (
        (json.dumps({**_with_input(), "Outputs": [{"name": "y"}]}).encode(), {}),
        400,
        "did you mean 'outputs'?",
    ),
    "id not a string": ((json.dumps({**_with_input(), "id": 5}).encode(), {}), 400, "'id'"),
    "shared memory": (
        (json.dumps(_with_input(parameters={"shared_memory_region": "r"})).encode(), {}),
        400,
        "shared_memory_region",
    ),
    "unknown output": ((json.dumps({**_with_input(), "outputs": [{"name": "z"}]}).encode(), {}), 422, "'z'"),
    "unknown input": ((json.dumps({"inputs": [fp32("q", [1.0])]}).encode(), {}), 422, "'q'"),
    # A near miss of the op's own param is a typo, not a client's extra: 422, not ignored.
    "misspelled param": (
        (json.dumps({**_with_input(), "parameters": {"negative_slop": 0.2}}).encode(), {}),
        422,
        "did you mean 'negative_slope'",
    ),
    "param in the wrong case": (
        (json.dumps({**_with_input(), "parameters": {"Negative_Slope": 0.2}}).encode(), {}),
        422,
        "did you mean 'negative_slope'",
    ),
    "bad param value": (
        (json.dumps({**_with_input(), "parameters": {"negative_slope": "abc"}}).encode(), {}),
        422,
        "negative_slope",
    ),
    "bad gzip": ((b"not gzip", {"Content-Encoding": "gzip"}), 400, "gzip"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request(http: httpx.Client, case: str) -> None:
    (content, headers), status, needle = MALFORMED[case]
    r = http.post("/v2/models/leaky_relu/infer", content=content, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and needle in error, error


def test_v2_unknown_request_fields_are_ignored(http: httpx.Client) -> None:
    # Clients and proxies add their own fields; only a near miss of V2's is refused.
    body = {**_with_input(), "trace": {"sampled": True}, "priority": 1}
    r = http.post("/v2/models/relu/infer", json=body)
    assert r.status_code == 200, r.text


def test_server_stays_up_after_malformed(http: httpx.Client) -> None:
    for (content, headers), _, _ in MALFORMED.values():
        http.post("/v2/models/relu/infer", content=content, headers=headers)
    assert http.get("/v2/health/live").status_code == 200
    r = http.post("/v2/models/relu/infer", json={"inputs": [fp32("x", [-3.0])]})
    assert parse_response(r)[1]["y"].tolist() == [0.0]


def test_body_limits_follow_the_header(server_factory: Any) -> None:
    """JSON bodies use max_body_bytes; binary (header present) max_binary_body_bytes."""
    proc = server_factory("--max-body-bytes", "2000", "--max-binary-body-bytes", "100000", "--grpc-port", "0")
    x = np.zeros(4000, np.float32)
    content, headers = binary_body(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [4000],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        x.tobytes(),
    )
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        r = client.post("/v2/models/relu/infer", content=content, headers=headers)
        assert parse_response(r)[1]["y"].shape == (4000,)
        r = client.post("/v2/models/relu/infer", json={"inputs": [fp32("x", x)]})
        assert r.status_code == 413 and "limit of 2000" in r.json()["error"]
        bomb = gzip.compress(b" " * 200_000)  # small on the wire, over the limit inflated
        r = client.post("/v2/models/relu/infer", content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413


def test_binary_bodies_follow_max_body_bytes_by_default(server_factory: Any) -> None:
    # Lowering max_body_bytes bounds binary V2 bodies too, unless max_binary_body_bytes
    # is set (API.md section 5: a setting raises the limit for binary traffic).
    proc = server_factory("--max-body-bytes", "2000", "--grpc-port", "0")
    x = np.zeros(4000, np.float32)
    head = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [4000], "parameters": {"binary_data_size": x.nbytes}}
        ]
    }
    content, headers = binary_body(head, x.tobytes())
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        r = client.post("/v2/models/relu/infer", content=content, headers=headers)
        assert r.status_code == 413 and "limit of 2000" in r.json()["error"]
