"""What ``Client`` (_http.py) and ``AsyncClient`` (_http_async.py) share: their options,
the choice of sender, and the pure steps of a call.

Flow position: a client method -> **_HttpCommon** (deadline, ``_core`` request,
retry decision) -> a sender's ``send`` (``_pool`` over the network, ``_httpx`` with
``transport=``) -> ``Answer`` -> ``_core`` decoding. The sync and async clients differ
only in how they wait (``time.sleep`` vs ``asyncio.sleep``, blocking vs awaited I/O).
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from gradserve_client import _core, _tls
from gradserve_client._core import Deadline, HttpRequest, InferRequest, ModelMetadata, ParamValue, RetryPolicy
from gradserve_client._error_map import closed_error
from gradserve_client._http11 import Answer, Origin, check_header
from gradserve_client._tls import PemPath
from gradserve_client.errors import GradserveError, ServerError

log = logging.getLogger("gradserve_client")

DEFAULT_URL = "http://localhost:8000"
DEFAULT_TIMEOUT_S = 30.0
#: How long an idle pooled connection may be reused. A request sent on a keep-alive
#: connection just as the server closes it is lost, so the client must close first:
#: 4 s is below uvicorn's default keep-alive timeout (5 s, which httpx's own default
#: expiry equals: the race of issue 8) and far below gradserve's (75 s). Reconnecting
#: after 4 s idle costs one TCP handshake.
DEFAULT_KEEPALIVE_EXPIRY_S = 4.0
#: Most connections one client opens at once; a call past it waits for one. Every
#: idle connection is kept (until its expiry): closing some after each burst, as
#: httpx's 20 keep-alive connections did, made calls 21 and up reconnect every time.
DEFAULT_MAX_CONNECTIONS = 100


class _HttpCommon:
    """State and pure helpers the sync and async clients share."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        retry: RetryPolicy | None,
        binary: bool,
        keepalive_expiry_s: float,
        max_connections: int,
    ) -> None:
        Deadline(timeout_s)  # validates
        if not keepalive_expiry_s >= 0:
            raise ValueError(f"keepalive_expiry_s must be >= 0, got {keepalive_expiry_s}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.binary = binary
        self._metadata: dict[str, ModelMetadata] = {}
        self._closed = False  # set by close(): every later call fails in _check_open

    @staticmethod
    def _headers(headers: Mapping[str, str] | None, api_key: str | None) -> dict[str, str]:
        """The constant headers, refused here (``InvalidInputError``) if one has a line
        break or an illegal name: it would split the request's header block."""
        merged = dict(headers or {})
        authorization = _tls.bearer(api_key)
        if authorization is not None:
            merged["Authorization"] = authorization
        for name, value in merged.items():
            check_header(name, str(value))
        return merged

    def _check_open(self, attempt: int) -> None:
        if self._closed:
            raise closed_error(attempt)

    def _origin(
        self,
        headers: dict[str, str],
        ca_cert: PemPath | None,
        client_cert: PemPath | None,
        client_key: PemPath | None,
    ) -> tuple[Origin, ssl.SSLContext | None]:
        """The network pool's origin and TLS context (_tls.py; None: the system's roots)."""
        return Origin(self.url, headers), _tls.ssl_context(ca_cert, client_cert, client_key)

    def _deadline(self, timeout_s: float | None) -> Deadline:
        return Deadline(self.timeout_s if timeout_s is None else timeout_s)

    def _build(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue] | None,
        outputs: Sequence[str] | None,
    ) -> HttpRequest:
        request = InferRequest(
            op, tensors, _core.encode_params(params), None if outputs is None else tuple(outputs)
        )
        return _core.http_infer_request(request, binary=self.binary)

    @staticmethod
    def _outcome(answer: Answer) -> Answer | GradserveError:
        """A 2xx answer, or the error a non-2xx one stands for."""
        if answer.status < 300:
            return answer
        return _core.http_error(answer.status, answer.headers, answer.body)

    def _after_failure(self, error: GradserveError, attempt: int, deadline: Deadline) -> float:
        delay = self.retry.next_delay(error, attempt, deadline.remaining_s())
        if delay is None:
            raise _core.give_up(error, attempt)
        log.info("retry %d/%d in %.3f s after %s", attempt, self.retry.max_retries, delay, error)
        return delay


def json_body(answer: Answer, path: str) -> Any:
    try:
        return json.loads(answer.body)
    except ValueError as exc:
        raise ServerError(f"{path}: answer is not JSON ({exc})") from None


def server_metadata(body: Mapping[str, Any]) -> _core.ServerMetadata:
    return _core.ServerMetadata(str(body["name"]), str(body["version"]), tuple(body.get("extensions", ())))
