"""API keys on every route and RPC, in-process: the app over ASGI and the gRPC server on
a free port, sharing one runtime as under `gradserve serve`.

The protected routes and methods are enumerated from the app and the proto (not listed
by hand), so a route or RPC added later is covered without touching this file. Real
processes, curl and tritonclient: tests/e2e/test_auth_process.py and test_tls.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gradserve.auth import PROBE_PATHS, protected_http
from gradserve.config import Settings
from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.server import GrpcServer
from gradserve.rest.app import create_app
from gradserve.runtime import Runtime
from gradserve_client import AsyncClient, AsyncGrpcClient, UnauthenticatedError

KEY = "test-key-0123456789abcdef0123456789"
OTHER_KEY = "second-key-abcdefghijklmnopqrstuvwxyz"
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
BAD_AUTHORIZATIONS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"Bearer {KEY}x",
    f"Bearer {KEY[:-1]}",
    f"Basic {KEY}",
    KEY,
    f"Bearer {KEY} {KEY}",
]


@dataclass
class Keyed:
    runtime: Runtime
    http: httpx.AsyncClient
    app: Any
    grpc_target: str


@pytest.fixture
async def keyed_factory() -> AsyncIterator[Callable[..., Awaitable[Keyed]]]:
    started: list[tuple[Runtime, GrpcServer, httpx.AsyncClient]] = []

    async def make(**settings: Any) -> Keyed:
        s = Settings(api_keys=f"{KEY},{OTHER_KEY}", grpc_port=0, host="127.0.0.1", device="cpu", **settings)
        runtime = Runtime(s)
        app = create_app(runtime)
        await runtime.start(wait_ready=True)
        server = GrpcServer(runtime)
        await server.start()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")
        started.append((runtime, server, http))
        return Keyed(runtime, http, app, f"127.0.0.1:{server.port}")

    yield make
    for runtime, server, http in started:
        await http.aclose()
        await server.stop(0)
        await runtime.drain()
        runtime.close()


@pytest.fixture
async def keyed(keyed_factory: Callable[..., Awaitable[Keyed]]) -> Keyed:
    return await keyed_factory()


def _concrete(path: str) -> str:
    """A route template with its params filled ({version} -> 1, anything else -> relu)."""
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "1" if m.group(1) == "version" else "relu", path)


async def _routes(http: httpx.AsyncClient) -> list[tuple[str, str]]:
    """(method, path) of every route the app documents (every op's route included;
    openapi.py declares them), params filled; HEAD beside each GET."""
    schema = (await http.get("/openapi.json")).json()
    found = []
    for path, item in schema["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "delete", "patch"):
                found.append((method.upper(), _concrete(path)))
                if method == "get":
                    found.append(("HEAD", _concrete(path)))
    return found


def _headers(authorization: str | None) -> dict[str, str]:
    return {} if authorization is None else {"Authorization": authorization}


async def test_every_protected_route_refuses_a_missing_or_wrong_key(keyed: Keyed) -> None:
    protected = [(m, p) for m, p in await _routes(keyed.http) if protected_http(p, probes=False)]
    # Both surfaces, the fast inference routes among them.
    assert ("POST", "/v1/activations/relu") in protected and ("POST", "/v2/models/relu/infer") in protected
    assert ("GET", "/v1/ops") in protected and ("GET", "/v2") in protected
    bodies: set[bytes] = set()
    for method, path in protected:
        for authorization in BAD_AUTHORIZATIONS:
            r = await keyed.http.request(method, path, headers=_headers(authorization), content=b"{}")
            assert r.status_code == 401, (method, path, authorization, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.headers["x-request-id"]
            if method != "HEAD":
                bodies.add(r.content)
    # The same words whatever was wrong (one body per error format: /v1 and /v2).
    assert len(bodies) == 2, bodies
    assert all(b"API key" in body for body in bodies)


async def test_every_protected_route_takes_either_key(keyed: Keyed) -> None:
    for method, path in await _routes(keyed.http):
        if protected_http(path, probes=False):
            for key in (KEY, OTHER_KEY):
                r = await keyed.http.request(method, path, headers={"Authorization": f"Bearer {key}"})
                assert r.status_code != 401, (method, path)
    r = await keyed.http.post(
        "/v1/activations/relu", json={"x": [-1.0, 2.0]}, headers={"Authorization": f"bearer {KEY}"}
    )
    assert r.status_code == 200 and r.json()["y"]["data"] == [0.0, 2.0]


async def test_probes_docs_and_the_page_are_open(keyed: Keyed) -> None:
    for path in [*sorted(PROBE_PATHS), "/docs", "/openapi.json", "/lab", "/lab/lab.js"]:
        r = await keyed.http.get(path)
        assert r.status_code == 200, (path, r.text)
    # /docs can send the key: the protected operations say so.
    schema = (await keyed.http.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    infer = schema["paths"]["/v2/models/{model}/infer"]["post"]
    assert infer["security"] == [{"apiKey": []}] and "401" in infer["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


async def test_a_setting_closes_the_probes(keyed_factory: Callable[..., Awaitable[Keyed]]) -> None:
    keyed = await keyed_factory(api_keys_on_probes=True)
    for path in sorted(PROBE_PATHS):
        assert (await keyed.http.get(path)).status_code == 401, path
        assert (await keyed.http.get(path, headers={"Authorization": f"Bearer {KEY}"})).status_code == 200
    async with grpc.aio.insecure_channel(keyed.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await health.Check(
            health_pb2.HealthCheckRequest(), metadata=(("authorization", f"Bearer {KEY}"),)
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _call_raw(channel: grpc.aio.Channel, method: Any, body: bytes, metadata: Any) -> grpc.StatusCode:
    """Call any method with raw request bytes; its final status code."""
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        if method.client_streaming:
            call = channel.stream_stream(path)(iter([body]), metadata=metadata, timeout=10)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path)(body, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_rpc_refuses_a_missing_or_wrong_key(keyed: Keyed) -> None:
    probes = {"ServerLive", "ServerReady"}
    async with grpc.aio.insecure_channel(keyed.grpc_target) as channel:
        for method in SERVICE.methods:
            for authorization in BAD_AUTHORIZATIONS:
                metadata = () if authorization is None else (("authorization", authorization),)
                code = await _call_raw(channel, method, b"", metadata)
                expected = grpc.StatusCode.OK if method.name in probes else grpc.StatusCode.UNAUTHENTICATED
                assert code == expected, (method.name, authorization, code)
            good = await _call_raw(channel, method, b"", (("authorization", f"Bearer {KEY}"),))
            assert good != grpc.StatusCode.UNAUTHENTICATED, method.name


async def test_two_authorization_values_are_no_key_on_either_transport(keyed: Keyed) -> None:
    # RFC 9110 allows one Authorization line: two, in either order, are refused, rather
    # than HTTP taking the last and gRPC the first.
    good, bad = f"Bearer {KEY}", "Bearer wrong"
    for pair in ([good, bad], [bad, good], [good, good]):
        headers = [("Authorization", value) for value in pair]
        r = await keyed.http.post("/v1/activations/relu", json={"x": [1.0]}, headers=headers)
        assert r.status_code == 401, (pair, r.text)
    infer = SERVICE.methods_by_name["ServerMetadata"]
    async with grpc.aio.insecure_channel(keyed.grpc_target) as channel:
        for pair in ([good, bad], [bad, good], [good, good]):
            metadata = tuple(("authorization", value) for value in pair)
            assert await _call_raw(channel, infer, b"", metadata) == grpc.StatusCode.UNAUTHENTICATED, pair
        assert await _call_raw(channel, infer, b"", (("authorization", good),)) == grpc.StatusCode.OK


async def test_a_refused_call_is_never_decoded(keyed: Keyed) -> None:
    """Garbage bytes without a key: UNAUTHENTICATED, not the decoder's INVALID_ARGUMENT
    (the message is refused before grpcio parses it)."""
    infer = SERVICE.methods_by_name["ModelInfer"]
    async with grpc.aio.insecure_channel(keyed.grpc_target) as channel:
        garbage = b"\xff\xff\xff\xff\x0f"
        assert await _call_raw(channel, infer, garbage, ()) == grpc.StatusCode.UNAUTHENTICATED
        keyed_md = (("authorization", f"Bearer {KEY}"),)
        assert await _call_raw(channel, infer, garbage, keyed_md) == grpc.StatusCode.INVALID_ARGUMENT


async def test_refusals_carry_the_request_id_and_no_detail(keyed: Keyed) -> None:
    async with grpc.aio.insecure_channel(keyed.grpc_target) as channel:
        messages = set()
        for authorization in (None, f"Bearer {KEY}x"):
            metadata = (("x-request-id", "refused-1"),)
            if authorization is not None:
                metadata += (("authorization", authorization),)
            call = channel.unary_unary(f"/{SERVICE.full_name}/ModelMetadata")(b"", metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert dict(info.value.trailing_metadata())["x-request-id"] == "refused-1"
            messages.add(info.value.details())
        assert len(messages) == 1


async def test_reflection_stays_open(keyed: Keyed) -> None:
    async with grpc.aio.insecure_channel(keyed.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [
            r
            async for r in stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        ]
        names = {s.name for s in replies[0].list_services_response.service}
        assert SERVICE.full_name in names


async def test_the_async_clients_send_their_key(keyed: Keyed) -> None:
    x = np.array([-1.0, 0.5], np.float32)
    transport = httpx.ASGITransport(app=keyed.app)
    async with AsyncClient("http://app", transport=transport, api_key=KEY) as client:
        assert (await client.activation("relu", x))["y"].tolist() == [0.0, 0.5]
        assert len(await client.ops()) > 10
    async with AsyncClient("http://app", transport=transport, api_key="wrong-key-0123456789") as client:
        with pytest.raises(UnauthenticatedError) as info:
            await client.activation("relu", x)
        assert info.value.status == 401 and info.value.attempts == 1 and info.value.request_id
    async with AsyncGrpcClient(keyed.grpc_target, api_key=OTHER_KEY, catalog_url="http://unused") as client:
        assert (await client.activation("relu", x, grad=True))["grad_x"].tolist() == [0.0, 1.0]
        assert await client.ready()
    async with AsyncGrpcClient(keyed.grpc_target) as client:
        with pytest.raises(UnauthenticatedError) as info:
            await client.activation("relu", x)
        assert info.value.grpc_code == "UNAUTHENTICATED" and info.value.attempts == 1
        assert info.value.request_id
