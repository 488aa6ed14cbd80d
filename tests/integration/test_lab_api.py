"""activation_stats through the real app (POST /v1/lab/activation_stats): the lecture's
five findings with API.md 6's tolerances, the catalog, seeded bytes, 413 and 422."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from gradserve.config import Settings
from gradserve.rest.app import create_app

ROUTE = "/v1/lab/activation_stats"


async def _stats(client: httpx.AsyncClient, **params: Any) -> dict[str, np.ndarray]:
    r = await client.post(ROUTE, json=params)
    assert r.status_code == 200, r.text
    out = r.json()
    for name, value in out.items():
        assert value["dtype"] == ("int64" if name == "hist" else "float32"), name
    # Non-finite floats travel as "NaN"/"Infinity" strings, which float() reads.
    return {
        name: np.asarray(value["data"], dtype=np.int64 if name == "hist" else np.float64)
        for name, value in out.items()
    }


async def _error(client: httpx.AsyncClient, status: int, **params: Any) -> dict[str, str]:
    r = await client.post(ROUTE, json=params)
    assert r.status_code == status, r.text
    error: dict[str, str] = r.json()["error"]
    return error


# ---------------------------------------------------------------- the lecture's findings
# One request per case on the defaults (depth 10, width 500, batch 1000, seed 0).

# The lecture's five cases, as the page's presets name them.
PRESETS: dict[str, dict[str, Any]] = {
    "tanh_small": {"activation": "tanh", "init": "normal", "std": 0.01},
    "tanh_big": {"activation": "tanh", "init": "normal", "std": 1.0},
    "tanh_xavier": {"activation": "tanh", "init": "xavier_normal", "mode": "fan_in"},
    "relu_xavier": {"activation": "relu", "init": "xavier_normal", "mode": "fan_in"},
    "relu_kaiming": {"activation": "relu", "init": "kaiming_normal"},
}


def assert_lecture_findings(runs: dict[str, dict[str, np.ndarray]]) -> None:
    """API.md 6's findings, with its tolerances, on the five presets' outputs."""
    small = runs["tanh_small"]
    # tanh + N(0, 0.01^2): std shrinks ~0.22x per layer and is below 1e-5 by layer 10.
    ratios = small["std"][1:] / small["std"][:-1]
    assert np.all((ratios > 0.18) & (ratios < 0.26)), ratios
    assert small["std"][9] < 1e-5
    # tanh + N(0, 1): saturated on every layer.
    assert np.all(runs["tanh_big"]["saturated"] >= 0.85), runs["tanh_big"]["saturated"]
    # tanh + Xavier (Var 1/n): alive at layer 10, never saturated.
    xavier = runs["tanh_xavier"]
    assert 0.15 <= xavier["std"][9] <= 0.35, xavier["std"]
    assert np.all(xavier["saturated"] < 0.05), xavier["saturated"]
    # ReLU + Xavier: the variance halves per layer; layer 10's std under 0.1 of layer 1's.
    relu_xavier = runs["relu_xavier"]
    assert relu_xavier["std"][9] < 0.1 * relu_xavier["std"][0], relu_xavier["std"]
    # ReLU + Kaiming (Var 2/n): near constant; half the units dead.
    kaiming = runs["relu_kaiming"]
    assert 0.5 <= kaiming["std"][9] <= 1.0, kaiming["std"]
    assert np.all(np.abs(kaiming["dead"] - 0.5) < 0.05), kaiming["dead"]


async def test_lecture_findings(app_client: httpx.AsyncClient) -> None:
    runs = {name: await _stats(app_client, **params) for name, params in PRESETS.items()}
    assert_lecture_findings(runs)
    small = runs["tanh_small"]
    assert set(small) == {"mean", "std", "saturated", "dead", "hist", "edges", "grad_std"}
    assert small["hist"].shape == (10, 50) and small["edges"].shape == (10, 51)
    assert np.all(small["hist"].sum(axis=1) == 1000 * 500)


# ---------------------------------------------------------------- catalog and seeds


async def test_listed_in_the_catalog_as_lab(app_client: httpx.AsyncClient) -> None:
    ops = {op["name"]: op for op in (await app_client.get("/v1/ops")).json()["ops"]}
    entry = ops["activation_stats"]
    assert (entry["family"], entry["kind"], entry["route"]) == ("lab", "lab", ROUTE)
    assert entry["batching"] == "solo" and entry["inputs"] == []
    params = {p["name"]: p for p in entry["params"]}
    assert params["depth"]["default"] == 10 and params["depth"]["le"] == 100
    assert params["std"]["default"] is None and params["std"]["nullable"]
    assert "std" in entry["outputs"] and "grad_std" in entry["outputs"]
    schema = (await app_client.get("/openapi.json")).json()
    assert ROUTE in schema["paths"]


async def test_seeded_runs_give_the_same_bytes(app_client: httpx.AsyncClient) -> None:
    body = {"depth": 4, "width": 64, "batch": 128, "activation": "gelu", "init": "orthogonal", "seed": 9}
    first = await app_client.post(ROUTE, json=body)
    second = await app_client.post(ROUTE, json=body)
    other = await app_client.post(ROUTE, json={**body, "seed": 10})
    assert first.status_code == second.status_code == other.status_code == 200
    assert first.content == second.content
    assert first.json()["std"] != other.json()["std"]
    # A deeper net with the same seed starts with the same layers.
    deeper = (await app_client.post(ROUTE, json={**body, "depth": 6})).json()
    assert deeper["std"]["data"][:4] == first.json()["std"]["data"]


async def test_every_init_and_activation_runs(app_client: httpx.AsyncClient) -> None:
    from gradserve.ops.lab import ACTIVATIONS, INITS

    for activation in ACTIVATIONS:
        out = await _stats(app_client, activation=activation, depth=2, width=16, batch=32, bins=7)
        assert out["hist"].shape == (2, 7) and np.all(np.isfinite(out["grad_std"]))
    for init in INITS:
        out = await _stats(app_client, init=init, depth=2, width=16, batch=32)
        assert out["std"].shape == (2,) and np.all(out["std"] > 0)


# ---------------------------------------------------------------- 413 and 422


async def test_over_the_work_cap_is_413(app_client: httpx.AsyncClient) -> None:
    error = await _error(app_client, 413, depth=100, width=4096, batch=16384)
    assert error["code"] == "work_too_large"
    assert "depth * width^2 * batch" in error["message"] and "lab_max_work" in error["message"]


@pytest.fixture
async def small_cap_client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings=Settings(lab_max_work=10 * 100**2 * 100))
    await app.state.runtime.start(wait_ready=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        yield client
    await app.state.runtime.drain()
    app.state.runtime.close()


async def test_the_work_cap_is_a_setting(small_cap_client: httpx.AsyncClient) -> None:
    await _stats(small_cap_client, depth=10, width=100, batch=100)  # exactly at the cap
    error = await _error(small_cap_client, 413, depth=10, width=100, batch=101)
    assert "10,100,000" in error["message"] and "10,000,000" in error["message"]
    r = await small_cap_client.post(
        "/v2/models/activation_stats/infer",
        json={"inputs": [], "parameters": {"depth": 11, "width": 100, "batch": 100}},
    )
    assert r.status_code == 413 and "lab_max_work" in r.json()["error"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"init": "kaiming_normal", "std": 0.1}, "'std'"),
        ({"init": "normal", "mode": "fan_in"}, "'mode'"),
        ({"init": "orthogonal", "low": -1.0}, "'low'"),
        ({"init": "xavier_normal", "nonlinearity": "relu"}, "'nonlinearity'"),
        ({"depth": 0}, "'depth'"),
        ({"depth": 101}, "'depth'"),
        ({"width": 4097}, "'width'"),
        ({"width": "wide"}, "'width'"),
        ({"batch": 0}, "'batch'"),
        ({"bins": 1001}, "'bins'"),
        ({"seed": -1}, "'seed'"),
        ({"activation": "softmax"}, "'activation'"),
        ({"activation": "prelu"}, "'activation'"),
        ({"init": "zeros"}, "'init'"),
        ({"init": "normal", "std": -1.0}, "'std'"),
        ({"init": "normal", "std": "NaN"}, "'std'"),
        ({"init": "xavier_normal", "mode": "fan_sideways"}, "'mode'"),
        ({"init": "uniform", "low": 1.0, "high": -1.0}, "low"),
        ({"init": "trunc_normal", "mean": 100.0, "std": 1.0}, "mean"),
        ({"init": "normal", "std": 1e39}, "'std'"),
        ({"nope": 1}, "'nope'"),
        ({"grad": True}, "'grad'"),
    ],
)
async def test_bad_params_are_422_naming_the_param(
    app_client: httpx.AsyncClient, params: dict[str, Any], named: str
) -> None:
    error = await _error(app_client, 422, **params)
    assert named in error["message"], error


async def test_overflowing_nets_answer_ieee_values(app_client: httpx.AsyncClient) -> None:
    # A std whose draws fit float32 (10 std below its largest value: the init check) but
    # whose products overflow: relu passes inf on, and the next layer's matmul makes NaN
    # (inf - inf). That is the experiment's answer, not a 4xx.
    out = await _stats(app_client, std=3e37, activation="relu", depth=3, width=256, batch=8)
    # The histogram counts the finite values only.
    assert np.isnan(out["std"][-1]) and out["hist"].sum() < 3 * 256 * 8
    refused = await app_client.post(ROUTE, json={"std": 3e38, "depth": 2, "width": 16, "batch": 8})
    assert refused.status_code == 422 and "overflow" in refused.json()["error"]["message"]


async def test_wrong_family_and_method(app_client: httpx.AsyncClient) -> None:
    assert (await app_client.post("/v1/init/activation_stats", json={})).status_code == 404
    assert (await app_client.post("/v1/lab/relu", json={"x": [1.0]})).status_code == 404
    assert (await app_client.post("/v1/lab/nope", json={})).status_code == 404
