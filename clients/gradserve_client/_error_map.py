"""Error mapping: HTTP statuses and gRPC codes -> the exception tree of ``errors.py``.

Flow position: a failed attempt (a non-2xx answer, an ``RpcError``, a stream's error
answer) -> **http_error / grpc_error** -> a ``GradserveError`` subclass, carrying the
server's message and request id -> ``RetryPolicy.next_delay`` (``_retry``) decides
by its class whether to retry. One mapping per protocol, shared by every client and
the stream, so they cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from gradserve_client import _tls
from gradserve_client.errors import (
    GradserveError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    ServerError,
    TimedOutError,
    TlsError,
    TooLargeError,
    UnauthenticatedError,
    UnavailableError,
)

# The trailing-metadata key in which gradserve names the error (its error code).
ERROR_CODE_KEY = "gradserve-error-code"
#: The server's id of a request: an HTTP answer header, a gRPC trailer.
REQUEST_ID_KEY = "x-request-id"


def http_error(status: int, headers: Mapping[str, str], body: bytes) -> GradserveError:
    """A non-2xx answer -> its exception, carrying the server's message.

    Reads both error bodies: V2 ``{"error": "msg"}`` and native ``{"error": {"code", "message"}}``.
    """
    message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        parsed = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message", message))
        elif isinstance(error, str):
            message = error
    except ValueError:
        pass
    retry_after: float | None = None
    if "retry-after" in headers:
        try:
            retry_after = float(headers["retry-after"])
        except ValueError:
            retry_after = None  # an HTTP-date: the backoff schedule applies instead
    cls = _HTTP_STATUS.get(status, ServerError if status >= 500 else GradserveError)
    error = cls(message, status=status, retry_after_s=retry_after)
    error.request_id = headers.get(REQUEST_ID_KEY)
    return error


_HTTP_STATUS: dict[int, type[GradserveError]] = {
    400: InvalidInputError,
    401: UnauthenticatedError,
    404: NotFoundError,
    413: TooLargeError,
    422: InvalidInputError,
    429: OverloadedError,
    503: UnavailableError,
    504: TimedOutError,
}


_EXHAUSTED_BY_CODE: dict[str, type[GradserveError]] = {
    "queue_full": OverloadedError,
    "request_too_large": TooLargeError,
    "device_out_of_memory": ServerError,
}


def grpc_error(
    code: str,
    details: str,
    error_code: str | None = None,
    *,
    client_closed: bool = False,
    deadline_passed: bool = False,
) -> GradserveError:
    """A gRPC status (and gradserve's error code from the trailers) -> its exception.

    RESOURCE_EXHAUSTED means two things on gradserve: a full queue (retry) and a
    request over a size limit (never retry: it would fail the same way). The
    ``gradserve-error-code`` trailer tells them apart; without it (another server, a
    proxy that drops trailers) the message does ("queue full ..."; grpcio's own
    "Concurrent RPC limit exceeded!", sent before the call starts, is an overload
    too), and anything else is treated as too large.

    CANCELLED that the client did not cause is retried (``UnavailableError``): a grpc-core
    server with its default pending-call limits ends calls CANCELLED at random under a
    burst of over 1,000 concurrent calls, and grpcio does so while a server drains, and every op is a pure function, so a retry is safe. The client
    caused it when it closed its own channel (``client_closed``), which is final, or
    when its deadline had passed (``deadline_passed``), which is a timeout. (A call
    the caller cancels through asyncio raises CancelledError, never reaching here.)
    """
    message = details or code
    cls: type[GradserveError]
    if code == "CANCELLED":
        if deadline_passed:
            cls = TimedOutError
        elif client_closed:
            cls = ServerError
        else:
            cls = UnavailableError
    elif code == "RESOURCE_EXHAUSTED" and error_code in _EXHAUSTED_BY_CODE:
        cls = _EXHAUSTED_BY_CODE[error_code]
    elif code == "RESOURCE_EXHAUSTED":
        lowered = message.lower()
        if "queue full" in lowered or "concurrent rpc limit" in lowered:
            cls = OverloadedError
        elif "out of memory" in lowered:
            cls = ServerError
        else:
            cls = TooLargeError
    elif code == "UNAVAILABLE" and _tls.grpc_handshake_failed(message):
        cls = TlsError  # a matter of trust, not of load: not retried
    else:
        cls = _GRPC_CODE.get(code, ServerError)
    return cls(message, grpc_code=code)


_GRPC_CODE: dict[str, type[GradserveError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "NOT_FOUND": NotFoundError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": TimedOutError,
}


#: What a call on (or cut short by) a closed client raises, on every client.
CLOSED_MESSAGE = "the client is closed"


def closed_error(attempts: int = 1, grpc_code: str | None = None) -> ServerError:
    """The error of a call on (or cut short by) a closed client: final, never retried."""
    error = ServerError(CLOSED_MESSAGE, grpc_code=grpc_code)
    error.attempts = attempts
    return error
