"""The one error hierarchy of gradserve and the one table that maps it to the wire.

Every layer raises a ``GradservError`` subclass; each transport renders it with
``http_status`` / ``grpc_code`` from the table below, so the REST and gRPC mappings
can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class ErrorKind:
    """How one error class appears on each transport."""

    code: str
    http_status: int
    grpc_code: grpc.StatusCode


class GradservError(Exception):
    """Base of every error a client may see; ``message`` is safe to send."""

    kind = ErrorKind("internal", 500, grpc.StatusCode.INTERNAL)

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # A finer code than the class default (e.g. "ragged_tensor"), same status.
        self.code = code or self.kind.code

    @property
    def http_status(self) -> int:
        return self.kind.http_status

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self.kind.grpc_code


class MalformedRequest(GradservError):
    """The body cannot be parsed at all (bad JSON, bad binary framing)."""

    kind = ErrorKind("malformed_request", 400, grpc.StatusCode.INVALID_ARGUMENT)


class OpNotFound(GradservError):
    """No op of that name (or not in that family)."""

    kind = ErrorKind("op_not_found", 404, grpc.StatusCode.NOT_FOUND)


class RequestTooLarge(GradservError):
    """Body bytes or tensor elements over a configured limit."""

    kind = ErrorKind("request_too_large", 413, grpc.StatusCode.RESOURCE_EXHAUSTED)


class InvalidInput(GradservError):
    """Well-formed request whose tensors, shapes, dtypes, params or values are wrong."""

    kind = ErrorKind("invalid_input", 422, grpc.StatusCode.INVALID_ARGUMENT)


class SharedMemoryError(GradservError):
    """A shared-memory region named by a request cannot serve it: an offset or size
    outside the region, a region whose object was removed or truncated, an output
    region too small for the answer, a key that names no shared memory object."""

    kind = ErrorKind("shared_memory_error", 400, grpc.StatusCode.INVALID_ARGUMENT)


class RegionNotFound(GradservError):
    """No shared-memory region is registered under that name."""

    kind = ErrorKind("region_not_found", 404, grpc.StatusCode.NOT_FOUND)


class RegionExists(GradservError):
    """A shared-memory region of that name is already registered (Triton's
    ALREADY_EXISTS): unregister it first."""

    kind = ErrorKind("region_exists", 409, grpc.StatusCode.ALREADY_EXISTS)


class NotSupported(GradservError):
    """A protocol extension this server does not offer: turned off by a setting, or
    not possible here (CUDA shared memory without CUDA). A 4xx, not Triton's 501:
    retrying cannot help, and the client asked for it."""

    kind = ErrorKind("not_supported", 400, grpc.StatusCode.UNIMPLEMENTED)


class Overloaded(GradservError):
    """The queue is full: refused up front, nothing was started."""

    kind = ErrorKind("queue_full", 429, grpc.StatusCode.RESOURCE_EXHAUSTED)

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(GradservError):
    """Not ready yet, or draining."""

    kind = ErrorKind("unavailable", 503, grpc.StatusCode.UNAVAILABLE)


class DeadlineExceeded(GradservError):
    """The request's deadline passed while it waited in the queue; it never ran."""

    kind = ErrorKind("timeout", 504, grpc.StatusCode.DEADLINE_EXCEEDED)


class DeviceOutOfMemory(GradservError):
    """The device ran out of memory for this batch only; the server stays up."""

    kind = ErrorKind("device_out_of_memory", 507, grpc.StatusCode.RESOURCE_EXHAUSTED)


class ClientDisconnected(GradservError):
    """The client left before its answer was ready (nginx's 499); nobody reads the
    answer, but raising it (not CancelledError) keeps uvicorn from logging a traceback."""

    kind = ErrorKind("client_disconnected", 499, grpc.StatusCode.CANCELLED)


class InternalError(GradservError):
    """An unexpected failure; the message is generic and the details are in the log."""

    kind = ErrorKind("internal", 500, grpc.StatusCode.INTERNAL)
