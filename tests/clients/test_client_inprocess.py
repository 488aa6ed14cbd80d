"""The SDK against the real app in-process: AsyncClient over httpx.ASGITransport.

Every op family, binary and JSON encodings: the answers equal the app's own native
REST answers. No sockets, no subprocess: this is the injectable-transport path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import pytest_asyncio

from gradserve_client import AsyncClient, UnavailableError
from gradserve_client._core import RetryPolicy
from tests.clients.conftest import FAMILY_CASES, Case, assert_same, call_async, native_async

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def transport() -> AsyncIterator[httpx.ASGITransport]:
    """One warmed app for the module, reached through an ASGI transport."""
    from gradserve.config import Settings
    from gradserve.rest.app import create_app

    app = create_app(settings=Settings())
    runtime = app.state.runtime
    await runtime.start(wait_ready=True)
    yield httpx.ASGITransport(app=app)
    await runtime.drain()
    runtime.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@FAMILY_CASES
async def test_every_family_equals_native(transport: httpx.ASGITransport, case: Case, binary: bool) -> None:
    async with (
        AsyncClient("http://app", transport=transport, binary=binary) as client,
        httpx.AsyncClient(transport=transport, base_url="http://app") as http,
    ):
        assert_same(await call_async(client, case), await native_async(http, case))


async def test_catalog_health_and_metadata(transport: httpx.ASGITransport) -> None:
    async with AsyncClient("http://app", transport=transport) as client:
        ops = {op.name: op for op in await client.ops()}
        assert ops["prelu"].family == "activations" and "grad_alpha" in ops["prelu"].grad_outputs
        assert ops["kaiming_normal"].params["mode"] == "fan_in"
        assert await client.live() and await client.ready() and await client.model_ready("relu")
        assert "binary_tensor_data" in (await client.server_metadata()).extensions
        meta = await client.model_metadata("full_loss")
        assert meta.grad_outputs == ("grad_weight", "grad_bias", "grad_x")


async def test_generic_infer_named_outputs_and_nonfinite(transport: httpx.ASGITransport) -> None:
    x = np.array([[-np.inf, np.nan, 0.0, 2.0]], np.float32)
    async with AsyncClient("http://app", transport=transport, binary=False) as client:
        # The named outputs come back in the order named; NaN/inf survive JSON both ways.
        out = await client.infer("relu", {"x": x}, outputs=["grad_x", "y"])
        assert list(out) == ["grad_x", "y"]
        np.testing.assert_array_equal(out["y"], [[0.0, np.nan, 0.0, 2.0]])
        np.testing.assert_array_equal(
            out["grad_x"], [[0.0, 1.0, 0.0, 1.0]]
        )  # torch masks on y <= 0: false for NaN
        # Plain lists follow the native defaults: floats -> float32, class indices -> int64.
        loss = await client.loss("cross_entropy", [[3.2, 5.1, -1.7]], [0], reduction="sum")
        assert loss["loss"].dtype == np.float32 and loss["loss"].shape == ()


async def test_torch_tensors_in_and_out(transport: httpx.ASGITransport) -> None:
    torch = pytest.importorskip("torch")
    x = torch.tensor([[-1.0, 0.5, 2.0]], dtype=torch.bfloat16)
    async with AsyncClient("http://app", transport=transport) as client:
        out = await client.activation("gelu", x, grad=True)
        assert out.datatypes == {"y": "BF16", "grad_x": "BF16"}
        as_torch = out.torch()
        assert as_torch["y"].dtype == torch.bfloat16
        expected = torch.nn.functional.gelu(x.float()).to(torch.bfloat16)
        assert torch.equal(as_torch["y"], expected)


async def test_not_ready_app_answers_unavailable_and_is_retried() -> None:
    """An app whose runtime never started answers 503: UnavailableError after the budget."""
    from gradserve.config import Settings
    from gradserve.rest.app import create_app

    app = create_app(settings=Settings())  # no lifespan through ASGITransport: never warm
    retry = RetryPolicy(max_retries=2, initial_backoff_s=0.001, max_backoff_s=0.002)
    async with AsyncClient("http://app", transport=httpx.ASGITransport(app=app), retry=retry) as client:
        assert not await client.ready()
        with pytest.raises(UnavailableError) as info:
            await client.activation("relu", [1.0])
    assert info.value.status == 503 and info.value.attempts == 3
    assert "warming up" in info.value.message
