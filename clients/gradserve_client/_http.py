"""The synchronous HTTP client, ``Client``, over the V2 REST API (and GET /v1/ops).

Flow position: a method (``loss``, ``infer``...: ``_families.py``) -> ``_HttpCommon`` (_http_common.py:
the request from ``_core``, the retry decision) -> **Client._send** (the retry loop:
attempt, sleep, deadline) -> a sender: ``_pool.SyncPool`` (keep-alive HTTP/1.1
sockets shared by the caller's threads), or ``_httpx.HttpxSync`` when ``transport=``
is given -> ``_core`` decoding. ``AsyncClient`` (_http_async.py, re-exported here)
mirrors it method for method.
"""

from __future__ import annotations

import time
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
from gradserve_client._families import SyncFamilies
from gradserve_client._http11 import Answer
from gradserve_client._http_async import AsyncClient as AsyncClient
from gradserve_client._http_common import (
    DEFAULT_KEEPALIVE_EXPIRY_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    _HttpCommon,
    json_body,
    server_metadata,
)
from gradserve_client._pool import SyncPool
from gradserve_client._tls import PemPath
from gradserve_client.errors import GradserveError

if TYPE_CHECKING:
    import httpx

    from gradserve_client._httpx import HttpxSync

__all__ = ["DEFAULT_KEEPALIVE_EXPIRY_S", "DEFAULT_URL", "AsyncClient", "Client"]


class Client(_HttpCommon, SyncFamilies):
    """Synchronous HTTP client (V2 REST; binary tensor data unless ``binary=False``).

    Args:
        url: the server's HTTP base URL.
        timeout_s: default timeout of each call, retries and backoff included.
        retry: the retry policy (default: up to 5 retries on overload/unavailability).
        binary: send tensors with the V2 binary tensor extension (default) or as JSON.
        transport: an httpx transport to use instead of the network (e.g.
            ``httpx.MockTransport``); the calls then go through httpx.
        headers: extra headers sent with every request.
        keepalive_expiry_s: how long an idle pooled connection is kept for reuse;
            keep it below the server's keep-alive timeout (gradserve: 75 s,
            ``--http-keep-alive-s``). Ignored with ``transport=``, which pools on its own.
        max_connections: most connections open at once (default 100); a call past
            it waits for one. Idle ones are all kept until ``keepalive_expiry_s``.
        api_key: the server's API key, sent as ``Authorization: Bearer <key>``
            (a wrong or missing one raises ``UnauthenticatedError``).
        ca_cert: PEM file of the CA that signed the server's certificate, for an
            ``https://`` URL whose server the system's roots do not vouch for.
        client_cert, client_key: PEM files of this client's certificate and key,
            for a server that requires mutual TLS. Both TLS options are ignored with
            ``transport=``, which makes its own connections.

    Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        binary: bool = True,
        transport: httpx.BaseTransport | None = None,
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
        self._sender: SyncPool | HttpxSync
        if transport is not None:
            from gradserve_client._httpx import HttpxSync

            self._sender = HttpxSync(self.url, transport, merged)
        else:
            self._sender = SyncPool(origin, context, keepalive_expiry_s, max_connections)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool. Every later call raises ``ServerError``;
        ``live()`` and ``ready()`` return False."""
        self._closed = True
        self._sender.close()

    # -- ops (the methods are SyncFamilies') ---------------------------------------

    def _run(
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
            outputs = _core.wanted_outputs(self._model_metadata(op, deadline), tensors)
        answer = self._send(self._build(op, tensors, params, outputs), deadline)
        return _core.decode_http_infer(answer.headers, answer.body)

    # -- catalog and metadata ----------------------------------------------------

    def ops(self, *, timeout_s: float | None = None) -> list[OpInfo]:
        """The op catalog (GET /v1/ops): every op's family, inputs, params and outputs."""
        answer = self._send(HttpRequest("GET", "/v1/ops"), self._deadline(timeout_s))
        return _core.ops_from_catalog(json_body(answer, "/v1/ops"))

    def model_metadata(self, op: str, *, timeout_s: float | None = None) -> ModelMetadata:
        """The V2 metadata of one op (its input and output tensors); cached per client."""
        return self._model_metadata(op, self._deadline(timeout_s))

    def _model_metadata(self, op: str, deadline: Deadline) -> ModelMetadata:
        if op not in self._metadata:
            path = _core.model_path(op)
            answer = self._send(HttpRequest("GET", path), deadline)
            self._metadata[op] = _core.model_metadata_from_json(json_body(answer, path))
        return self._metadata[op]

    def server_metadata(self, *, timeout_s: float | None = None) -> ServerMetadata:
        """The V2 server metadata (name, version, extensions)."""
        return server_metadata(
            json_body(self._send(HttpRequest("GET", "/v2"), self._deadline(timeout_s)), "/v2")
        )

    # -- health ------------------------------------------------------------------

    def live(self) -> bool:
        """Whether the server process answers (V2 health/live). Never raises, never retries."""
        return self._health("/v2/health/live")

    def ready(self) -> bool:
        """Whether the server takes work (V2 health/ready: warm and not draining)."""
        return self._health("/v2/health/ready")

    def model_ready(self, op: str) -> bool:
        """Whether one op (V2 model) is ready."""
        return self._health(f"{_core.model_path(op)}/ready")

    def _health(self, path: str) -> bool:
        if self._closed:
            return False
        try:
            return self._sender.send("GET", path, {}, b"", self.timeout_s).status == 200
        except GradserveError:
            return False

    # -- the one place that does I/O ------------------------------------------------

    def _send(self, request: HttpRequest, deadline: Deadline) -> Answer:
        attempt = 0
        while True:
            attempt += 1
            self._check_open(attempt)
            left = deadline.check()  # each attempt gets the time the call has left
            try:
                outcome = self._outcome(
                    self._sender.send(request.method, request.path, request.headers, request.body, left)
                )
            except GradserveError as exc:  # classified by the sender (_pool.classify)
                outcome = exc
            if isinstance(outcome, Answer):
                return outcome
            time.sleep(self._after_failure(outcome, attempt, deadline))
