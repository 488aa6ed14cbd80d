"""The I/O-free half of the streaming mode (``_stream.py``): what travels, and what an
answer's error means.

Flow position: ``AsyncInferStream`` (``_stream.py``) -> **stamp** a built request with
its stream ``id`` -> the rpc -> an answer's ``error_message`` -> **stream_error** -> the
exception the unary call would raise. Like ``_core.py``, nothing here opens a socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from gradserve_client import _core
from gradserve_client._core import ParamValue, TensorLike
from gradserve_client.errors import GradserveError

# ModelInferRequest.id is field 3, a string: tag (3 << 3) | 2 (length-delimited).
_ID_TAG = b"\x1a"
# The server's error code (errors.py's) -> the gRPC status its unary call aborts with.
_CODE_STATUS = {
    "malformed_request": "INVALID_ARGUMENT",
    "invalid_input": "INVALID_ARGUMENT",
    "shared_memory_error": "INVALID_ARGUMENT",
    "op_not_found": "NOT_FOUND",
    "region_not_found": "NOT_FOUND",
    "request_too_large": "RESOURCE_EXHAUSTED",
    "queue_full": "RESOURCE_EXHAUSTED",
    "device_out_of_memory": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE",
    "timeout": "DEADLINE_EXCEEDED",
    "not_supported": "UNIMPLEMENTED",
    "region_exists": "ALREADY_EXISTS",
    "client_disconnected": "CANCELLED",
    "internal": "INTERNAL",
}
# Without the code, the status is read off gradserve's messages (errors.py's raisers);
# anything else answered per message is a bad request.
_MESSAGE_STATUS = (
    ("queue full", "RESOURCE_EXHAUSTED"),
    ("out of memory", "RESOURCE_EXHAUSTED"),
    ("over the limit", "RESOURCE_EXHAUSTED"),
    ("over this server's limit", "RESOURCE_EXHAUSTED"),
    ("server is draining", "UNAVAILABLE"),
    ("server is warming up", "UNAVAILABLE"),
    ("past its deadline", "DEADLINE_EXCEEDED"),
    ("unknown op", "NOT_FOUND"),
    ("has no version", "NOT_FOUND"),
    ("internal error", "INTERNAL"),
)


@dataclass(frozen=True)
class InferCall:
    """One call of ``infer_many``: the arguments of ``infer``. A tuple ``(op, inputs)``
    or ``(op, inputs, params)`` is accepted in its place."""

    op: str
    inputs: Mapping[str, TensorLike] | None = None
    params: Mapping[str, ParamValue] | None = None
    outputs: Sequence[str] | None = None
    grad: bool = False


#: What ``infer_many`` takes.
Calls = Iterable[InferCall | tuple[Any, ...]]


def as_call(call: InferCall | tuple[Any, ...]) -> InferCall:
    return call if isinstance(call, InferCall) else InferCall(*call)


def stream_error(message: str, error_code: str | None = None) -> GradserveError:
    """A stream answer's ``error_message`` -> the exception the unary call would raise.

    The answer carries no gRPC status. gradserve's error code (when the server sends
    it, as the answer's ``gradserve-error-code`` parameter) gives the status the unary
    call would have had; without it the message does. Either goes through
    ``_core.grpc_error``, the unary mapping, so the two cannot drift apart.
    """
    status = _CODE_STATUS.get(error_code or "")
    if status is None:
        lowered = message.lower()
        status = next((s for phrase, s in _MESSAGE_STATUS if phrase in lowered), "INVALID_ARGUMENT")
    return _core.grpc_error(status, message, error_code)


def answer_error(answer: Any) -> GradserveError | None:
    """A ModelStreamInferResponse's error, or None for an answer: its ``error_message``
    with gradserve's error code from the inner answer's parameters, if the server sent it."""
    if not answer.error_message:
        return None
    code = answer.infer_response.parameters.get(_core.ERROR_CODE_KEY)
    return stream_error(answer.error_message, code.string_param if code is not None else None)


def stamp(built: Any, request_id: str) -> bytes:
    """The request's bytes with its stream ``id``: set on a protobuf message, or appended
    to bytes (protobuf fields may come in any order; the last value of a field wins)."""
    if isinstance(built, bytes | bytearray | memoryview):
        raw = request_id.encode()
        return b"".join((built, _ID_TAG, _varint(len(raw)), raw))
    built.id = request_id
    data: bytes = built.SerializeToString()
    return data


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# What grpc.aio reports, instead of the server's status, when a write races the end of
# the rpc (it marks the call INTERNAL with these details and no trailers).
_LOST_STATUS_DETAILS = "Internal error from Core"


def status_lost(exc: grpc.RpcError) -> bool:
    """Whether an rpc's ending is grpc.aio's stand-in for a status it lost, not the
    server's: INTERNAL "Internal error from Core" without trailers (a gradserve status
    always carries the ``x-request-id`` trailer)."""
    rpc: Any = exc
    return bool(
        rpc.code() == grpc.StatusCode.INTERNAL
        and rpc.details() == _LOST_STATUS_DETAILS
        and not rpc.trailing_metadata()
    )
