"""activation_stats as a V2 model, through unmodified tritonclient.http against a real
`gradserve serve` process: params as request parameters, no tensor inputs, the same
numbers as the native route."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess

PARAMS = {"depth": 5, "width": 128, "batch": 256, "activation": "relu", "init": "kaiming_normal", "seed": 4}
OUTPUTS = ("mean", "std", "saturated", "dead", "hist", "edges", "grad_std")


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def test_metadata_and_config(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("activation_stats")
    meta = client.get_model_metadata("activation_stats")
    assert meta["inputs"] == []
    types = {t["name"]: (t["datatype"], t["shape"]) for t in meta["outputs"]}
    assert types["hist"] == ("INT64", [-1, -1]) and types["std"] == ("FP32", [-1])
    assert client.get_model_config("activation_stats")["input"] == []


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_the_native_route(
    client: httpclient.InferenceServerClient, server: ServerProcess, binary: bool
) -> None:
    result = client.infer(
        "activation_stats",
        [],
        parameters=PARAMS,
        outputs=[httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS],
    )
    native = httpx.post(f"{server.url}/v1/lab/activation_stats", json=PARAMS, timeout=60).json()
    for name in OUTPUTS:
        got = result.as_numpy(name)
        assert got.dtype == (np.int64 if name == "hist" else np.float32), name
        # The same seeded run: the same float32 values on both routes.
        np.testing.assert_array_equal(got, np.asarray(native[name]["data"], dtype=got.dtype), err_msg=name)
    assert result.as_numpy("hist").shape == (5, 50)
    assert 0.4 < float(result.as_numpy("dead").mean()) < 0.6


def test_plain_outputs_and_string_params(client: httpclient.InferenceServerClient) -> None:
    # Parameters as strings (grpcurl's and some clients' habit) are read as numbers.
    result = client.infer("activation_stats", [], parameters={"depth": "3", "width": "32", "batch": "64"})
    assert result.as_numpy("std").shape == (3,)
    assert result.as_numpy("grad_std").shape == (3,)


def test_errors(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="std") as bad:
        client.infer("activation_stats", [], parameters={"init": "kaiming_normal", "std": 0.5})
    assert bad.value.status() == "422"
    with pytest.raises(InferenceServerException, match="lab_max_work") as big:
        client.infer("activation_stats", [], parameters={"depth": 100, "width": 4096, "batch": 16384})
    assert big.value.status() == "413"
