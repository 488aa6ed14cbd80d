"""gRPC guards: an undecodable request message is INVALID_ARGUMENT, on every method.

Flow position: grpc.aio server -> **guards** (an interceptor, installed first by
grpc/server.py) -> method handler (servicer.py for inference, grpcio's own health and
reflection servicers) -> engine. grpcio calls a method's ``request_deserializer``
outside any handler code, so when a message cannot be decoded (protobuf's
``DecodeError``, or anything ModelInfer's hand-written parser in codecs/v2_grpc.py
raises) it logs a traceback and ends the call UNKNOWN, and no ``mapped_errors`` ever
sees it. The guard wraps every handler's deserializer so that a failure becomes an
``Undecodable`` value instead of an exception, and wraps the handler's behaviour
(unary or streaming, either direction) to abort the call with the
``MalformedRequest`` status and trailer (errors.py's table, as the servicer does) when
such a value arrives. Handlers are wrapped once and cached: ModelInfer is the hot path.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias

import grpc

from gradserve.errors import MalformedRequest
from gradserve.grpc.servicer import ERROR_CODE_KEY

log = logging.getLogger(__name__)

# The decoder's own words go to the client (they say what is wrong: "Error parsing
# message with type ...", "truncated varint"), cut short: they may quote the input.
_MAX_REASON_CHARS = 200
# Handlers are the same objects call after call (grpcio's generic handlers return
# what was registered), so the cache stays this small; the cap only guards against a
# handler source that builds a fresh handler per call.
_MAX_CACHED_HANDLERS = 1024

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Undecodable:
    """What a guarded deserializer returns instead of raising: the reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def guard_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer`` that returns ``Undecodable`` where it would raise."""

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any decoder failure is the client's bytes, not our bug
            reason = str(exc) or type(exc).__name__
            if len(reason) > _MAX_REASON_CHARS:
                reason = reason[:_MAX_REASON_CHARS] + "..."
            return Undecodable(reason)

    return deserialize


async def abort_undecodable(context: Context, value: Undecodable) -> NoReturn:
    """End the call as the servicer ends a MalformedRequest (no traceback: not our bug)."""
    error = MalformedRequest(f"request message cannot be decoded: {value.reason}")
    log.debug("gRPC request refused: %s", error.message)
    # Added to the trailers already set (x-request-id, grpc/calls.py), not replacing them.
    trailers = (*context.trailing_metadata(), (ERROR_CODE_KEY, error.kind.code))
    await context.abort(error.grpc_code, error.message, trailing_metadata=trailers)
    raise AssertionError("unreachable")  # pragma: no cover - abort always raises


class _UndecodableInStream(Exception):
    """Raised by a guarded request stream at its first undecodable message; the
    behaviour's wrapper aborts the call once the handler has ended. Not aborted on the
    spot: the handler may be writing an answer at that moment (ModelStreamInfer answers
    while it reads), grpc-core takes one send at a time on a call, and an abort's status
    started under a write was lost, leaving the client waiting for ever."""

    def __init__(self, value: Undecodable) -> None:
        super().__init__(value.reason)
        self.value = value


async def _checked(requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
    """A request stream that ends the handler at its first undecodable message."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise _UndecodableInStream(request)
        yield request


def _is_async(behavior: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def _guard_behavior(behavior: Callable[..., Any], streaming_request: bool) -> Callable[..., Any]:
    """Wrap a handler behaviour of either kind grpc.aio accepts: a coroutine function
    (unary answer, or a stream written with ``context.write``) or an async generator
    function (a streamed answer). The wrapper must be of the same kind: grpc.aio picks
    how to drive a handler by inspecting it."""
    if inspect.isasyncgenfunction(behavior):

        async def stream_out(request: Any, context: Context) -> AsyncIterator[Any]:
            if streaming_request:
                request = _checked(request)
            elif isinstance(request, Undecodable):
                await abort_undecodable(context, request)
            try:
                async for response in behavior(request, context):
                    yield response
            except _UndecodableInStream as exc:
                await abort_undecodable(context, exc.value)

        return stream_out

    coroutine: Callable[[Any, Context], Awaitable[Any]] = behavior

    async def unary_out(request: Any, context: Context) -> Any:
        if streaming_request:
            request = _checked(request)
        elif isinstance(request, Undecodable):
            await abort_undecodable(context, request)
        try:
            return await coroutine(request, context)
        except _UndecodableInStream as exc:
            await abort_undecodable(context, exc.value)

    return unary_out


def guard_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler with its deserializer and behaviour guarded.

    grpcio's handlers are ``RpcMethodHandler`` namedtuples (``_replace`` gives a copy);
    exactly one of the four behaviour slots is set. A handler without a deserializer
    (raw bytes) or with a synchronous behaviour (run in a thread, where no abort can be
    awaited) is returned as it is: neither exists in gradserve.
    """
    deserializer = handler.request_deserializer
    slots = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    name = next((slot for slot in slots if getattr(handler, slot) is not None), None)
    if deserializer is None or name is None or not _is_async(getattr(handler, name)):
        return handler
    replace: Callable[..., grpc.RpcMethodHandler] = handler._replace
    return replace(
        request_deserializer=guard_deserializer(deserializer),
        **{name: _guard_behavior(getattr(handler, name), streaming_request=name.startswith("stream_"))},
    )


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped here
    """Installs ``guard_handler`` on every method of the server (see the module doc)."""

    def __init__(self) -> None:
        self._guarded: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpcio answers UNIMPLEMENTED
            return handler
        guarded = self._guarded.get(handler)
        if guarded is None:
            if len(self._guarded) >= _MAX_CACHED_HANDLERS:
                self._guarded.clear()
            guarded = self._guarded[handler] = guard_handler(handler)
        return guarded
