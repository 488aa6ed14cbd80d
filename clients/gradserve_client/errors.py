"""The client's exception tree: one class per server error code, the same on every transport.

Each class mirrors an error of the server (API.md section 4), so code that catches
``OverloadedError`` works unchanged whether the answer came as HTTP 429 or as gRPC
RESOURCE_EXHAUSTED. Every exception carries the server's own message.

    GradservError
    ├── InvalidInputError      HTTP 400 / 422, gRPC INVALID_ARGUMENT
    ├── NotFoundError          HTTP 404, gRPC NOT_FOUND
    ├── TooLargeError          HTTP 413, gRPC RESOURCE_EXHAUSTED (over a size limit)
    ├── OverloadedError        HTTP 429, gRPC RESOURCE_EXHAUSTED (queue full)    retried
    ├── UnavailableError       HTTP 503, gRPC UNAVAILABLE, connection failures   retried
    │                          before any answer, gRPC CANCELLED not caused by the client
    ├── TimedOutError          HTTP 504, gRPC DEADLINE_EXCEEDED, client timeouts
    └── ServerError            any other 5xx / gRPC code, or an unreadable answer
                               (a connection that broke during the answer)
"""

from __future__ import annotations

__all__ = [
    "GradservError",
    "InvalidInputError",
    "NotFoundError",
    "OverloadedError",
    "ServerError",
    "TimedOutError",
    "TooLargeError",
    "UnavailableError",
]


class GradservError(Exception):
    """Base of every error the clients raise for a failed call.

    Attributes:
        message: the server's message (or the client's, for transport failures).
        status: the HTTP status, when the answer came over HTTP.
        grpc_code: the gRPC status code name (``"NOT_FOUND"``), when it came over gRPC.
        retry_after_s: the server's Retry-After hint, if it sent one.
        attempts: how many attempts the call made before giving up (1 = no retry).
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

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else self.grpc_code
        return f"{self.message} ({where})" if where else self.message


class InvalidInputError(GradservError, ValueError):
    """The request is malformed (400) or its tensors, shapes, dtypes or params are invalid
    (422). Also raised before sending, without ``status``, for a tensor or param the
    client cannot encode (a ragged list, a dtype with no V2 datatype)."""


class NotFoundError(GradservError):
    """No op (V2 model) of that name."""


class TooLargeError(GradservError):
    """A body, message or tensor is over a server limit; retrying cannot help."""


class OverloadedError(GradservError):
    """The server's queue is full; nothing was started, so the call is safe to retry."""

    retryable = True


class UnavailableError(GradservError):
    """The server is warming up, draining, or cannot be reached: HTTP 503, gRPC
    UNAVAILABLE, a connection refused or closed before any answer byte (a keep-alive
    connection the server closed as the request went out), or a gRPC CANCELLED this
    client did not cause."""

    retryable = True


class TimedOutError(GradservError, TimeoutError):
    """The call's timeout passed (client side), or the request expired in the server's queue."""


class ServerError(GradservError):
    """An internal server error, or an answer the client could not read."""
