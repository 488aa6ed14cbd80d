"""All four clients against a real `gradserve serve` process.

Every op family through Client (binary and JSON), AsyncClient, GrpcClient and
AsyncGrpcClient: values and gradients equal the server's native REST answers.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradserve_client import AsyncClient, AsyncGrpcClient, Client, GrpcClient
from tests.clients.conftest import FAMILY_CASES, Case, assert_same, call_async, call_sync, native_sync
from tests.conftest import ServerProcess

_native: dict[str, dict[str, np.ndarray]] = {}


def native(server: ServerProcess, case: Case) -> dict[str, np.ndarray]:
    # One native request per case, shared by the four clients' tests.
    if case.id not in _native:
        _native[case.id] = native_sync(server.url, case)
    return _native[case.id]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@FAMILY_CASES
def test_client(server: ServerProcess, case: Case, binary: bool) -> None:
    with Client(server.url, binary=binary) as client:
        assert_same(call_sync(client, case), native(server, case))


@FAMILY_CASES
async def test_async_client(server: ServerProcess, case: Case) -> None:
    async with AsyncClient(server.url) as client:
        assert_same(await call_async(client, case), native(server, case))


@FAMILY_CASES
def test_grpc_client(server: ServerProcess, case: Case) -> None:
    with GrpcClient(server.grpc_target) as client:
        assert_same(call_sync(client, case), native(server, case))


@FAMILY_CASES
async def test_async_grpc_client(server: ServerProcess, case: Case) -> None:
    async with AsyncGrpcClient(server.grpc_target) as client:
        assert_same(await call_async(client, case), native(server, case))


def test_sync_clients_health_metadata_and_catalog(server: ServerProcess) -> None:
    with Client(server.url) as http, GrpcClient(server.grpc_target, catalog_url=server.url) as grpc_:
        for client in (http, grpc_):
            assert client.live() and client.ready() and client.model_ready("mse")
            assert client.server_metadata().name == "gradserve"
            assert client.model_metadata("relu").plain_outputs == ("y",)
        assert [op.name for op in http.ops()] == [op.name for op in grpc_.ops()]
        # The generic call: named tensors and params, gradients by name.
        out = grpc_.infer(
            "mse", {"input": [[1.0, 2.0]], "target": [[0.0, 0.0]]}, {"reduction": "sum"}, ["grad_input"]
        )
        np.testing.assert_array_equal(out["grad_input"], [[2.0, 4.0]])


async def test_async_clients_health_metadata_and_catalog(server: ServerProcess) -> None:
    async with (
        AsyncClient(server.url) as http,
        AsyncGrpcClient(server.grpc_target, catalog_url=server.url) as grpc_,
    ):
        for client in (http, grpc_):
            assert await client.live() and await client.ready() and await client.model_ready("mse")
            assert (await client.server_metadata()).name == "gradserve"
        assert len(await http.ops()) == len(await grpc_.ops()) > 30


def test_grpc_ops_needs_a_catalog_url(server: ServerProcess) -> None:
    with GrpcClient(server.grpc_target) as client, pytest.raises(ValueError, match="catalog_url"):
        client.ops()
