"""The client's exception tree: one class per server error code, the same on every transport.

Each class mirrors an error of the server (API.md section 4), so code that catches
``OverloadedError`` works unchanged whether the answer came as HTTP 429 or as gRPC
RESOURCE_EXHAUSTED. Every exception carries the server's own message.

    GradserveError
    ├── InvalidInputError      HTTP 400 / 422, gRPC INVALID_ARGUMENT
    ├── NotFoundError          HTTP 404, gRPC NOT_FOUND
    ├── TooLargeError          HTTP 413, gRPC RESOURCE_EXHAUSTED (over a size limit)
    ├── UnauthenticatedError   HTTP 401, gRPC UNAUTHENTICATED (no key, or a wrong one)
    ├── TlsError               the TLS handshake failed (an untrusted server certificate,
    │                          or a refusal alert from the server)
    ├── OverloadedError        HTTP 429, gRPC RESOURCE_EXHAUSTED (queue full)    retried
    ├── UnavailableError       HTTP 503, gRPC UNAVAILABLE, connection failures   retried
    │                          before any answer, gRPC CANCELLED not caused by the client
    ├── TimedOutError          HTTP 504, gRPC DEADLINE_EXCEEDED, client timeouts
    └── ServerError            any other 5xx / gRPC code, or an unreadable answer
                               (a connection that broke during the answer)

``GradservError``, the base's earlier (misspelt) name, still resolves to ``GradserveError``
with a DeprecationWarning, for this release only: the next one removes it.
"""

from __future__ import annotations

import warnings
from typing import Any

# The warning of the deprecated ``GradservError`` alias (here and in the package).
ALIAS_WARNING = "gradserve_client.GradservError is deprecated; use GradserveError (the same class)"

__all__ = [
    "GradserveError",
    "InvalidInputError",
    "NotFoundError",
    "OverloadedError",
    "ServerError",
    "TimedOutError",
    "TlsError",
    "TooLargeError",
    "UnauthenticatedError",
    "UnavailableError",
]


class GradserveError(Exception):
    """Base of every error the clients raise for a failed call.

    Attributes:
        message: the server's message (or the client's, for transport failures).
        status: the HTTP status, when the answer came over HTTP.
        grpc_code: the gRPC status code name (``"NOT_FOUND"``), when it came over gRPC.
        retry_after_s: the server's Retry-After hint, if it sent one.
        attempts: how many attempts the call made before giving up (1 = no retry).
        request_id: the server's id of the request (``X-Request-ID`` / the
            ``x-request-id`` trailer): quote it to find the server's log line.
    """

    #: Whether the retry loop may try the call again after this error.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        grpc_code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.grpc_code = grpc_code
        self.retry_after_s = retry_after_s
        self.attempts = 1
        self.request_id: str | None = None

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else self.grpc_code
        return f"{self.message} ({where})" if where else self.message


class InvalidInputError(GradserveError, ValueError):
    """The request is malformed (400) or its tensors, shapes, dtypes or params are invalid
    (422). Also raised before sending, without ``status``, for a tensor or param the
    client cannot encode (a ragged list, a dtype with no V2 datatype)."""


class NotFoundError(GradserveError):
    """No op (V2 model) of that name."""


class TooLargeError(GradserveError):
    """A body, message or tensor is over a server limit; retrying cannot help."""


class UnauthenticatedError(GradserveError):
    """The server wants an API key (``api_key=``) and got none, or a wrong one. The
    server says which of the two no more than this: retrying cannot help."""


class TlsError(GradserveError, ConnectionError):
    """The TLS handshake failed for want of trust: the server's certificate is not signed
    by a CA this client trusts (``ca_cert``) or does not name the host, or the server
    sent an alert refusing this client's certificate. Configuration, not load: retrying
    cannot help. (A server that refuses a client under mutual TLS often just closes the
    connection mid-handshake, which reads as ``UnavailableError``.)"""


class OverloadedError(GradserveError):
    """The server's queue is full; nothing was started, so the call is safe to retry."""

    retryable = True


class UnavailableError(GradserveError):
    """The server is warming up, draining, or cannot be reached: HTTP 503, gRPC
    UNAVAILABLE, a connection refused or closed before any answer byte (a keep-alive
    connection the server closed as the request went out), or a gRPC CANCELLED this
    client did not cause."""

    retryable = True


class TimedOutError(GradserveError, TimeoutError):
    """The call's timeout passed (client side), or the request expired in the server's queue."""


class ServerError(GradserveError):
    """An internal server error, or an answer the client could not read."""


def __getattr__(name: str) -> Any:
    """``GradservError``, the base's old misspelt name, still resolves for one release."""
    if name == "GradservError":
        warnings.warn(ALIAS_WARNING, DeprecationWarning, stacklevel=2)
        return GradserveError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
