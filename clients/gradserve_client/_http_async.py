"""The asynchronous HTTP client, ``AsyncClient``: ``Client``'s twin (_http.py), awaited.

Flow position: a method -> ``_HttpCommon`` (_http_common.py) -> **AsyncClient._send**
(the retry loop) -> a sender: ``_pool.AsyncPool`` (keep-alive HTTP/1.1 connections as
asyncio protocols on the caller's loop), or ``_httpx.HttpxAsync`` when ``transport=``
is given (e.g. ``httpx.ASGITransport`` for the app in-process) -> ``_core`` decoding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

from gradserve_client import _core
from gradserve_client._core import (
    Deadline,
    HttpRequest,
    ModelMetadata,
    OpInfo,
    Outputs,
    ParamValue,
    RetryPolicy,
    ServerMetadata,
)
from gradserve_client._families import AsyncFamilies
from gradserve_client._http11 import Answer
from gradserve_client._http_common import (
    DEFAULT_KEEPALIVE_EXPIRY_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    _HttpCommon,
    json_body,
    server_metadata,
)
from gradserve_client._pool import AsyncPool
from gradserve_client._tls import PemPath
from gradserve_client.errors import GradserveError

if TYPE_CHECKING:
    import httpx

    from gradserve_client._httpx import HttpxAsync


class AsyncClient(_HttpCommon, AsyncFamilies):
    """Asynchronous twin of ``Client``: the same constructor (with an
    ``httpx.AsyncBaseTransport``, e.g. ``httpx.ASGITransport(app=app)``) and the same
    methods, awaited. Use ``async with``, or ``await aclose()``. Its connections belong
    to the event loop of its first call: use it from that loop only."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        binary: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        keepalive_expiry_s: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        api_key: str | None = None,
        ca_cert: PemPath | None = None,
        client_cert: PemPath | None = None,
        client_key: PemPath | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        super().__init__(url, timeout_s, retry, binary, keepalive_expiry_s, max_connections)
        merged = self._headers(headers, api_key)
        origin, context = self._origin(merged, ca_cert, client_cert, client_key)
        self._sender: AsyncPool | HttpxAsync | None = None
        if transport is not None:
            from gradserve_client._httpx import HttpxAsync

            self._sender = HttpxAsync(self.url, transport, merged)
        else:
            self._sender = AsyncPool(origin, context, keepalive_expiry_s, max_connections)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Every later call raises ``ServerError``;
        ``live()`` and ``ready()`` return False."""
        self._closed = True
        if isinstance(self._sender, AsyncPool):
            self._sender.close()
        elif self._sender is not None:
            await self._sender.aclose()

    async def _run(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
        grad: bool,
        timeout_s: float | None,
    ) -> Outputs:
        deadline = self._deadline(timeout_s)
        if outputs is None and grad:
            outputs = _core.wanted_outputs(await self._model_metadata(op, deadline), tensors)
        answer = await self._send(self._build(op, tensors, params, outputs), deadline)
        return _core.decode_http_infer(answer.headers, answer.body)

    async def ops(self, *, timeout_s: float | None = None) -> list[OpInfo]:
        """The op catalog (GET /v1/ops)."""
        answer = await self._send(HttpRequest("GET", "/v1/ops"), self._deadline(timeout_s))
        return _core.ops_from_catalog(json_body(answer, "/v1/ops"))

    async def model_metadata(self, op: str, *, timeout_s: float | None = None) -> ModelMetadata:
        """The V2 metadata of one op; cached per client."""
        return await self._model_metadata(op, self._deadline(timeout_s))

    async def _model_metadata(self, op: str, deadline: Deadline) -> ModelMetadata:
        if op not in self._metadata:
            path = _core.model_path(op)
            answer = await self._send(HttpRequest("GET", path), deadline)
            self._metadata[op] = _core.model_metadata_from_json(json_body(answer, path))
        return self._metadata[op]

    async def server_metadata(self, *, timeout_s: float | None = None) -> ServerMetadata:
        """The V2 server metadata (name, version, extensions)."""
        answer = await self._send(HttpRequest("GET", "/v2"), self._deadline(timeout_s))
        return server_metadata(json_body(answer, "/v2"))

    async def live(self) -> bool:
        """Whether the server process answers. Never raises, never retries."""
        return await self._health("/v2/health/live")

    async def ready(self) -> bool:
        """Whether the server takes work."""
        return await self._health("/v2/health/ready")

    async def model_ready(self, op: str) -> bool:
        """Whether one op (V2 model) is ready."""
        return await self._health(f"{_core.model_path(op)}/ready")

    async def _health(self, path: str) -> bool:
        assert self._sender is not None
        if self._closed:
            return False
        try:
            return (await self._sender.send("GET", path, {}, b"", self.timeout_s)).status == 200
        except GradserveError:
            return False

    async def _send(self, request: HttpRequest, deadline: Deadline) -> Answer:
        assert self._sender is not None
        attempt = 0
        while True:
            attempt += 1
            self._check_open(attempt)
            left = deadline.check()  # each attempt gets the time the call has left
            try:
                outcome = self._outcome(
                    await self._sender.send(request.method, request.path, request.headers, request.body, left)
                )
            except GradserveError as exc:  # classified by the sender (_pool.classify)
                outcome = exc
            if isinstance(outcome, Answer):
                return outcome
            await asyncio.sleep(self._after_failure(outcome, attempt, deadline))
