"""The gRPC gate: key check, request id, transport span and access log for every call.

Flow position: grpc.aio server -> **CallGate** (the first interceptor, grpc/server.py)
-> grpc/guards.py -> method handler (servicer.py, health, reflection) -> engine. The
gRPC twin of rest/gate.py, over the same key store (auth.py) and the same request
context (tracing.py):

- The key is checked in ``intercept_service``, before grpcio decodes the request
  message: a call without a valid ``authorization: Bearer <key>`` gets a handler that
  takes the message as raw bytes, unread, and aborts UNAUTHENTICATED with the same
  words whatever was wrong. Health and ServerLive/Ready are probes (open unless
  ``api_keys_on_probes``); reflection describes the API and stays open (auth.py).
- Every other call runs in a wrapper of its handler's behaviour (same kind: coroutine
  or async generator, as grpcio inspects it) that makes the call's ``RequestContext``
  (``x-request-id`` from the metadata, or generated), sets it as ``tracing.CURRENT``,
  puts the id in the trailing metadata first thing (error paths keep it: servicer.py
  and guards.py add their trailer to what is set), and at the end ends the SERVER span
  and writes the access line with the call's status code.
- Wrapped handlers are cached per handler: the hot path pays a dict lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import grpc

from gradserve import logs
from gradserve.auth import KeyStore, protected_grpc
from gradserve.config import Settings
from gradserve.tracing import CURRENT, REQUEST_ID_KEY, RequestContext, Tracing, carrier_from, request_id

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

UNAUTHENTICATED_MESSAGE = "a valid API key is required (metadata authorization: Bearer <key>)"
# As in grpc/guards.py: handlers are the same objects call after call.
_MAX_CACHED_HANDLERS = 1024
_SLOTS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
# Server span status per OpenTelemetry's gRPC conventions: these are the server's fault.
_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


def _metadata_value(metadata: Sequence[tuple[str, Any]] | None, key: str) -> Any:
    for k, v in metadata or ():
        if k == key:
            return v
    return None


def _authorization(metadata: Sequence[tuple[str, Any]] | None) -> Any:
    """The one authorization value; two or more are no key at all (as over HTTP,
    rest/gate.py), not whichever comes first."""
    values = [v for k, v in metadata or () if k == "authorization"]
    return values[0] if len(values) == 1 else None


def _code_name(code: Any) -> str | None:
    """A status code as its name; grpcio gives a ``grpc.StatusCode`` or its int."""
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return str(code)


class CallGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped here
    """See the module doc."""

    def __init__(self, settings: Settings, keys: KeyStore | None, tracing: Tracing | None) -> None:
        self.keys = keys
        self.tracing = tracing
        self.probes_protected = settings.api_keys_on_probes
        self.access_log = settings.access_log
        self._observed: dict[tuple[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler] = {}
        self._refusals: dict[tuple[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:  # unknown method: grpcio answers UNIMPLEMENTED
            return handler
        method: str = details.method
        if (
            self.keys is not None
            and protected_grpc(method, self.probes_protected)
            and not self.keys.check_bearer(_authorization(details.invocation_metadata))
        ):
            return self._cached(self._refusals, handler, method, self._refusal)
        return self._cached(self._observed, handler, method, self._observe)

    @staticmethod
    def _cached(
        cache: dict[tuple[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler],
        handler: grpc.RpcMethodHandler,
        method: str,
        make: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler],
    ) -> grpc.RpcMethodHandler:
        key = (handler, method)
        found = cache.get(key)
        if found is None:
            if len(cache) >= _MAX_CACHED_HANDLERS:
                cache.clear()
            found = cache[key] = make(handler, method)
        return found

    # -- one call's life ---------------------------------------------------------------

    def _enter(self, context: Context, method: str) -> RequestContext:
        started = time.perf_counter()
        metadata = context.invocation_metadata()
        ctx = RequestContext(request_id(_metadata_value(metadata, REQUEST_ID_KEY)), "grpc", started)
        # First thing, so that every way the call ends carries it (abort sites add
        # their own trailer to what is set here).
        context.set_trailing_metadata(((REQUEST_ID_KEY, ctx.request_id),))
        if self.tracing is not None:
            service, _, name = method[1:].partition("/")
            self.tracing.start_call(
                ctx,
                method[1:],
                carrier_from(metadata or ()),
                {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            )
        return ctx

    def _exit(self, ctx: RequestContext, context: Context, method: str, status: str) -> None:
        if self.tracing is not None:
            code = getattr(grpc.StatusCode, status, None)
            self.tracing.end_call(
                ctx,
                {"rpc.grpc.status_code": code.value[0] if code is not None else -1},
                failed=status in _SERVER_ERRORS,
            )
        if self.access_log:
            logs.access(ctx, None, method, status, context.peer())

    def _observe(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` with its behaviour run inside the call's context."""
        name = next((slot for slot in _SLOTS if getattr(handler, slot) is not None), None)
        if name is None:
            return handler
        behavior = getattr(handler, name)
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            return handler  # a synchronous behaviour runs in a thread: none in gradserve
        enter, leave = self._enter, self._exit

        if inspect.isasyncgenfunction(behavior):

            async def stream_out(request: Any, context: Context) -> AsyncIterator[Any]:
                ctx = enter(context, method)
                token = CURRENT.set(ctx)
                status = "OK"
                try:
                    async for response in behavior(request, context):
                        yield response
                except asyncio.CancelledError:
                    status = "CANCELLED"
                    raise
                except BaseException:
                    status = _code_name(context.code()) or "UNKNOWN"
                    raise
                finally:
                    with contextlib.suppress(ValueError):  # closed from another context
                        CURRENT.reset(token)
                    leave(ctx, context, method, status)

            wrapped: Callable[..., Any] = stream_out
        else:
            coroutine: Callable[[Any, Context], Awaitable[Any]] = behavior

            async def unary_out(request: Any, context: Context) -> Any:
                ctx = enter(context, method)
                token = CURRENT.set(ctx)
                status = "OK"
                try:
                    return await coroutine(request, context)
                except asyncio.CancelledError:
                    status = "CANCELLED"
                    raise
                except BaseException:
                    status = _code_name(context.code()) or "UNKNOWN"
                    raise
                finally:
                    CURRENT.reset(token)
                    leave(ctx, context, method, status)

            wrapped = unary_out
        replace: Callable[..., grpc.RpcMethodHandler] = handler._replace
        return replace(**{name: wrapped})

    def _refusal(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """A handler of the same kind that never decodes the message and aborts
        UNAUTHENTICATED (with the id trailer, a span and an access line like any call)."""
        name = next((slot for slot in _SLOTS if getattr(handler, slot) is not None), "unary_unary")
        enter, leave = self._enter, self._exit

        async def refuse(request: Any, context: Context) -> None:
            ctx = enter(context, method)
            ctx.outcome = "unauthenticated"
            try:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    UNAUTHENTICATED_MESSAGE,
                    trailing_metadata=((REQUEST_ID_KEY, ctx.request_id),),
                )
            finally:
                leave(ctx, context, method, "UNAUTHENTICATED")

        replace: Callable[..., grpc.RpcMethodHandler] = handler._replace
        # No deserializer: the unread message stays bytes (grpcio passes them through).
        behaviors: dict[str, Any] = dict.fromkeys(_SLOTS)
        behaviors[name] = refuse
        return replace(request_deserializer=None, **behaviors)
