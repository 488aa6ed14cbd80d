"""Unmodified tritonclient.http against a real `gradserve serve` process, binary
(tritonclient's default) and JSON tensors, for every op family."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess

BINARY = [True, False]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    t = httpclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def wanted(*names: str, binary: bool) -> list[httpclient.InferRequestedOutput]:
    return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("relu") and client.is_model_ready("relu", "1")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("softmax")
    assert [t["name"] for t in meta["inputs"]] == ["x", "grad_y"]
    assert [t["name"] for t in meta["outputs"]] == ["y", "grad_x"]
    assert client.get_model_config("softmax")["max_batch_size"] == 0
    assert not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", BINARY)
def test_activation_with_grad_x(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    g = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    result = client.infer(
        "softmax",
        [tensor("x", x, "FP32", binary), tensor("grad_y", g, "FP32", binary)],
        outputs=wanted("y", "grad_x", binary=binary),
        request_id="abc",
    )
    assert result.get_response()["id"] == "abc"
    xt = torch.tensor(x, requires_grad=True)
    y = torch.softmax(xt, -1)
    y.backward(torch.tensor(g))
    np.testing.assert_allclose(result.as_numpy("y"), y.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("grad_x"), xt.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_defaults_send_binary_and_return_plain_outputs(client: httpclient.InferenceServerClient) -> None:
    x = np.array([[-1.0, 2.0]], np.float32)
    result = client.infer("relu", [tensor("x", x, "FP32", True)])  # outputs=None: binary_data_output
    assert result.as_numpy("y").tolist() == [[0.0, 2.0]] and result.as_numpy("grad_x") is None


@pytest.mark.parametrize("datatype", ["FP64", "FP16", "BF16"])
def test_float_datatypes_binary(client: httpclient.InferenceServerClient, datatype: str) -> None:
    from tritonclient.utils import triton_to_np_dtype

    x = np.array([[-1.5, 0.25, 2.0]], np.float32).astype(triton_to_np_dtype(datatype))
    result = client.infer(
        "relu", [tensor("x", x, datatype, True)], outputs=wanted("y", "grad_x", binary=True)
    )
    y = np.asarray(result.as_numpy("y"), dtype=np.float32)
    assert result.get_output("y")["datatype"] == datatype
    assert y.tolist() == [[0.0, 0.25, 2.0]] and result.as_numpy("grad_x").astype(np.float32).tolist() == [
        [0, 1, 1]
    ]


@pytest.mark.parametrize("binary", BINARY)
def test_loss_with_params_and_grad_input(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.array([[3.2, 5.1, -1.7], [1.0, 0.0, 2.0]], np.float32)
    t = np.array([0, 2], np.int64)
    w = np.array([1.0, 2.0, 0.5], np.float32)
    result = client.infer(
        "cross_entropy",
        [
            tensor("input", x, "FP32", binary),
            tensor("target", t, "INT64", binary),
            tensor("weight", w, "FP32", binary),
        ],
        outputs=wanted("loss", "grad_input", binary=binary),
        parameters={"label_smoothing": 0.1, "reduction": "sum"},
    )
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(
        xt, torch.tensor(t), weight=torch.tensor(w), reduction="sum", label_smoothing=0.1
    )
    ref.backward()
    assert result.as_numpy("loss").item() == pytest.approx(ref.item(), rel=1e-6)
    np.testing.assert_allclose(result.as_numpy("grad_input"), xt.grad.numpy(), rtol=1e-5)


@pytest.mark.parametrize("binary", BINARY)
def test_init_with_shape_and_seed(client: httpclient.InferenceServerClient, binary: bool) -> None:
    a = client.infer(
        "kaiming_uniform",
        [],
        parameters={"shape": "64,32", "seed": 5},
        outputs=wanted("weight", "std", binary=binary),
    )
    b = client.infer(
        "kaiming_uniform",
        [tensor("shape", np.array([64, 32], np.int64), "INT64", binary)],
        parameters={"seed": 5},
        outputs=wanted("weight", "std", binary=binary),
    )
    assert a.as_numpy("weight").shape == (64, 32)
    np.testing.assert_array_equal(a.as_numpy("weight"), b.as_numpy("weight"))
    assert a.as_numpy("std").item() == pytest.approx((2 / 32) ** 0.5, rel=1e-6)


def test_compressed_request_and_response(client: httpclient.InferenceServerClient) -> None:
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("relu", [tensor("x", x, "FP32", True)], request_compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("y"), np.maximum(x, 0))


def test_errors(client: httpclient.InferenceServerClient) -> None:
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [tensor("x", x, "FP32", True)])
    assert info.value.status() == "404" and "nope" in info.value.message()
    bad_target = tensor("target", np.array([7], np.int64), "INT64", True)
    with pytest.raises(InferenceServerException) as info:
        client.infer("cross_entropy", [tensor("input", x, "FP32", True), bad_target])
    assert info.value.status() == "422" and "out of range" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("relu", [tensor("x", x, "FP32", True)], outputs=wanted("nope", binary=True))
    assert info.value.status() == "422"
    assert client.is_server_live()
