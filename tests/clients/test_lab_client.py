"""activation_stats through the four clients against a real `gradserve serve` process:
numpy arrays equal to the native route's, and the API's errors as the SDK's exceptions."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch

from gradserve_client import (
    AsyncClient,
    AsyncGrpcClient,
    Client,
    GrpcClient,
    InvalidInputError,
    TooLargeError,
)
from tests.clients.conftest import assert_same, native_outputs
from tests.conftest import ROOT, ServerProcess

PARAMS = {
    "depth": 3,
    "width": 64,
    "batch": 128,
    "activation": "tanh",
    "init": "xavier_normal",
    "mode": "fan_in",
}
DTYPES = {"hist": np.int64}


@pytest.fixture(scope="module")
def native(server: ServerProcess) -> dict[str, np.ndarray]:
    response = httpx.post(f"{server.url}/v1/lab/activation_stats", json=PARAMS, timeout=60)
    assert response.status_code == 200, response.text
    return native_outputs(response.json())


def _check(got: dict[str, np.ndarray], native: dict[str, np.ndarray]) -> None:
    assert_same(got, native)
    for name, array in got.items():
        assert array.dtype == DTYPES.get(name, np.float32), name
    assert got["hist"].shape == (3, 50) and got["edges"].shape == (3, 51)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_client(server: ServerProcess, native: dict[str, np.ndarray], binary: bool) -> None:
    with Client(server.url, binary=binary) as client:
        _check(client.activation_stats(**PARAMS), native)


async def test_async_client(server: ServerProcess, native: dict[str, np.ndarray]) -> None:
    async with AsyncClient(server.url) as client:
        _check(await client.activation_stats(**PARAMS), native)


def test_grpc_client(server: ServerProcess, native: dict[str, np.ndarray]) -> None:
    with GrpcClient(server.grpc_target) as client:
        _check(client.activation_stats(**PARAMS), native)


async def test_async_grpc_client(server: ServerProcess, native: dict[str, np.ndarray]) -> None:
    async with AsyncGrpcClient(server.grpc_target) as client:
        _check(await client.activation_stats(**PARAMS), native)


def test_errors_are_the_sdks_exceptions(server: ServerProcess) -> None:
    with Client(server.url) as http, GrpcClient(server.grpc_target) as grpc_:
        for client in (http, grpc_):
            with pytest.raises(InvalidInputError, match="'std'"):
                client.activation_stats(init="kaiming_normal", std=0.1)
            with pytest.raises(TooLargeError, match="lab_max_work"):
                client.activation_stats(depth=100, width=4096, batch=16384)


def test_presets_example_prints_the_readme_table(server: ServerProcess) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "clients")}
    done = subprocess.run(
        [
            sys.executable,
            "examples/lab_presets.py",
            "--url",
            server.url,
            "--grpc",
            server.grpc_target,
            "--markdown",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("| case | layer 10 std") and len(lines) == 2 + 5
    if torch.cuda.is_available():
        pytest.skip("the README's table is the CPU's; seeded draws differ by device kind")
    # The table in the README is this output, row for row.
    readme = (ROOT / "README.md").read_text()
    for line in lines:
        assert line in readme, line
