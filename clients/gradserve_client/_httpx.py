"""httpx as the HTTP clients' sender, for ``transport=`` only (e.g. ``httpx.ASGITransport``
to run against the app in-process, or ``httpx.MockTransport`` in tests).

Flow position: ``_http.py`` (a call's attempt) -> **HttpxSync/HttpxAsync.send** (one
httpx exchange) -> an ``_http11.Answer`` or a classified ``GradserveError``: the same
contract as ``_pool.py``'s network pools, so the retry loop cannot tell them apart.
Network calls never come here: httpx costs about 1 ms of client CPU per small call
(docs/sdk.md, Performance), and the SDK's own pool is a fraction of that.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from gradserve_client import _tls
from gradserve_client._http11 import Answer
from gradserve_client.errors import (
    GradserveError,
    InvalidInputError,
    ServerError,
    TimedOutError,
    TlsError,
    UnavailableError,
)


def transport_error(exc: httpx.TransportError, url: str, *, answer_started: bool) -> GradserveError:
    """An httpx transport failure -> its exception; ``answer_started``: the status line
    and headers had arrived when it failed.

    - A timeout has used up the call's time (each attempt gets what is left): final.
    - A URL or request httpx cannot send (unsupported scheme, a header it rejects)
      would fail the same way again: InvalidInputError, final.
    - A TLS handshake refused for want of trust: TlsError, final.
    - The connection failed before any answer came (refused; closed or reset while the
      request went out or while waiting: what a keep-alive connection closed by the
      server at the moment it is reused gives): UnavailableError, retried.
    - It broke after the answer began: the server ran the request and its answer is
      lost. ServerError, final.
    """
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return TimedOutError(f"no answer from {url} in time ({name})")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return InvalidInputError(f"cannot send to {url}: {name}: {exc}")
    reason = _tls.handshake_failure(exc)
    if reason is not None:
        return TlsError(f"TLS with {url} failed: {reason}")
    if answer_started:
        return ServerError(f"connection to {url} broke during the answer: {name}: {exc}")
    return UnavailableError(f"cannot reach {url}: {name}: {exc}")


def _answer(response: httpx.Response) -> Answer:
    headers = {name.lower(): value for name, value in response.headers.items()}
    return Answer(response.status_code, headers, response.content, True)


class HttpxSync:
    """``httpx.Client`` over the caller's transport (which pools on its own)."""

    def __init__(self, url: str, transport: httpx.BaseTransport, headers: Mapping[str, str]) -> None:
        self.url = url
        self._http = httpx.Client(base_url=url, transport=transport, headers=dict(headers))

    def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> Answer:
        request = self._http.build_request(
            method, path, headers=headers, content=body or None, timeout=timeout_s
        )
        # Streamed, so that a failure before the answer's head (retryable) is told
        # apart from one while its body is read (final).
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise transport_error(exc, self.url, answer_started=False) from exc
        try:
            response.read()
        except httpx.TransportError as exc:
            raise transport_error(exc, self.url, answer_started=True) from exc
        finally:
            response.close()
        return _answer(response)

    def close(self) -> None:
        self._http.close()


class HttpxAsync:
    """``httpx.AsyncClient`` over the caller's transport, e.g. ``httpx.ASGITransport``."""

    def __init__(self, url: str, transport: httpx.AsyncBaseTransport, headers: Mapping[str, str]) -> None:
        self.url = url
        self._http = httpx.AsyncClient(base_url=url, transport=transport, headers=dict(headers))

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> Answer:
        request = self._http.build_request(
            method, path, headers=headers, content=body or None, timeout=timeout_s
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise transport_error(exc, self.url, answer_started=False) from exc
        try:
            await response.aread()
        except httpx.TransportError as exc:
            raise transport_error(exc, self.url, answer_started=True) from exc
        finally:
            await response.aclose()
        return _answer(response)

    async def aclose(self) -> None:
        await self._http.aclose()
