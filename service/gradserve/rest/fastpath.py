"""Direct dispatch of the inference routes, ahead of FastAPI's router.

Flow position: uvicorn -> **GradservApp.__call__** -> rest/gate.py (keys, request id,
span, access log: every request) -> the /v1 or /v2 infer handler, or FastAPI.
Profiling small requests under load (py-spy, V2 binary cross_entropy at concurrency
64) put about 40% of the event loop's time in FastAPI's route matching and middleware
stack, around a handler that itself needs little. The inference paths have a fixed
shape, so they are matched by splitting the path and their handlers called directly;
every other path (docs, metadata, health, metrics, wrong methods) goes through FastAPI
as usual, and FastAPI still documents the inference routes.

Admission control lives here too, because this is the first place that knows a request
is inference work and the last place where refusing it is cheap. Profiled under 10x
overload with clients that retry at once (1,000 connections, a queue of 64), the loop
spent most of its time on requests it then refused: reading and decoding their JSON
(~18%), validating, and rendering the 429 through the error handlers and a Response
(~30%), while the requests it could serve waited. So a request is refused here, before
its body is read, with pre-rendered bytes, when the HTTP requests already accepted
(read, decoded, queued, running or being answered) reach
``http_max_requests_in_flight`` or the batcher's queue is full. The body left unread is
skipped by uvicorn's parser, and the connection stays open for the next request.

Cheap refusals alone did not keep goodput against clients that resend at once: on a
small machine the clients' own resending takes the CPU (300 such clients against 32
admitted: 0.26 of peak). So a request past the limit first waits, in arrival order and
with its body unread, up to ``http_admission_wait_s`` for an admitted one to finish,
which hands its slot straight over; only then is it refused. A waiting request costs a
future and a timer; its client sits idle instead of spinning.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gradserve.rest.errors import render_error
from gradserve.rest.gate import HttpGate

if TYPE_CHECKING:
    from gradserve.runtime import Runtime

Handler = Callable[[Request], Awaitable[Response]]

# Retry-After of an admission refusal, in seconds (the batcher's own queue_full too).
RETRY_AFTER_S = 1


def _refusal(status: int, body: object) -> tuple[Message, Message]:
    """The two ASGI messages of a pre-rendered JSON error, built once at import."""
    payload = orjson.dumps(body)
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
        ],
    }
    return start, {"type": "http.response.body", "body": payload, "more_body": False}


_BUSY = "queue full: too many requests in flight; retry after the Retry-After delay"
# The error bodies of rest/errors.py: native {"error": {code, message}}, V2 {"error": msg}.
BUSY_V1 = _refusal(429, {"error": {"code": "queue_full", "message": _BUSY}})
BUSY_V2 = _refusal(429, {"error": _BUSY})


class GradservApp(FastAPI):
    """FastAPI, with the POST inference routes dispatched without its router."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._v1: dict[str, Handler] = {}
        self._v2: Handler | None = None
        # Admission: inference requests accepted and not yet answered, and the limits.
        self.in_flight = 0
        self._max_in_flight = 1 << 62  # no limit until set_admission
        self._queue_full: Callable[[], bool] = lambda: False
        self._admission_wait_s = 0.0
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._refused: Callable[[str, str], None] = lambda name, transport: None
        # Keys, request ids, spans, access log (rest/gate.py); set with the runtime.
        self.gate: HttpGate | None = None

    def set_fast_routes(self, v1: dict[str, Handler], v2: Handler) -> None:
        """``v1``: family -> handler of POST /v1/<family>/{op}; ``v2``: the handler of
        POST /v2/models/{model}[/versions/{version}]/infer."""
        self._v1 = dict(v1)
        self._v2 = v2
        runtime = getattr(self.state, "runtime", None)  # create_app sets it before this call
        if runtime is not None:
            self.set_admission(runtime)
            self.gate = HttpGate(runtime.settings, runtime.keys, runtime.tracing)

    def set_admission(self, runtime: Runtime) -> None:
        """Refuse inference requests up front, by the runtime's settings and batcher."""
        batcher, metrics, registry = runtime.batcher, runtime.metrics, runtime.registry
        queue_size = runtime.settings.max_queue_size
        self._max_in_flight = runtime.settings.http_max_requests_in_flight
        self._admission_wait_s = runtime.settings.http_admission_wait_s
        self._queue_full = lambda: bool(batcher.pending >= queue_size)

        def refused(name: str, transport: str) -> None:
            # Counted like the batcher's own refusals; only known names become labels.
            if name in registry:
                metrics.answered(name, transport, "queue_full", 0.0)

        self._refused = refused

    def _match(self, path: str) -> tuple[Handler, dict[str, str]] | None:
        parts = path.split("/")
        # "/v1/losses/mse" -> ["", "v1", "losses", "mse"]
        if len(parts) == 4 and parts[1] == "v1" and parts[3] and parts[2] in self._v1:
            return self._v1[parts[2]], {"op": parts[3]}
        if self._v2 is not None and parts[1:3] == ["v2", "models"] and parts[-1] == "infer":
            if len(parts) == 5 and parts[3]:
                return self._v2, {"model": parts[3]}
            if len(parts) == 7 and parts[3] and parts[4] == "versions" and parts[5]:
                return self._v2, {"model": parts[3], "version": parts[5]}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every HTTP request passes the gate first, fast route or not: the one key check
        # (the fast routes skip FastAPI's middleware), its id, span and access line.
        if scope["type"] == "http" and self.gate is not None:
            await self.gate(scope, receive, send, self._dispatch)
        else:
            await self._dispatch(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self._match(scope["path"])
            if found is not None:
                handler, path_params = found
                # A full batcher queue (gRPC shares it) waits like a full house: refusing
                # at once would only have the client resend at once.
                if self.in_flight < self._max_in_flight and not self._queue_full():
                    self.in_flight += 1
                elif not await self._slot():  # a slot handed over keeps its count
                    await self._refuse(path_params, send)
                    return
                try:
                    scope["app"] = self
                    scope["path_params"] = path_params
                    request = Request(scope, receive, send)
                    try:
                        response = await handler(request)
                    except Exception as exc:  # rendered exactly as FastAPI's handlers would
                        response = await render_error(request, exc)
                    await response(scope, receive, send)
                finally:
                    self._release()
                return
        await super().__call__(scope, receive, send)

    async def _slot(self) -> bool:
        """Wait (FIFO) up to ``http_admission_wait_s`` for an admitted request to finish;
        False when none did. The body stays unread meanwhile: a waiting request costs a
        future and a timer, no CPU, and its client sits idle instead of resending
        refused requests as fast as the loop can refuse them."""
        # No cap of its own: uvicorn runs one request per connection at a time, so
        # http_max_connections bounds the waiters.
        if self._admission_wait_s <= 0:
            return False
        waiters = self._waiters
        while waiters and waiters[0].done():  # expired ones, left behind
            waiters.popleft()
        loop = asyncio.get_running_loop()
        slot: asyncio.Future[bool] = loop.create_future()
        waiters.append(slot)
        timer = loop.call_later(self._admission_wait_s, _expire, slot)
        try:
            return await slot
        except asyncio.CancelledError:
            # Cancelled (shutdown) just after a slot was handed over: pass it on.
            if slot.done() and not slot.cancelled() and slot.result():
                self._release()
            raise
        finally:
            timer.cancel()

    def _release(self) -> None:
        """A request is answered: hand its slot to the oldest waiter (the count stays, so
        no arrival can take it in between), or free it."""
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(True)
                return
        self.in_flight -= 1

    async def _refuse(self, path_params: dict[str, str], send: Send) -> None:
        """429 with Retry-After, the body unread: two sends of bytes built at import."""
        v1 = "op" in path_params
        self._refused(path_params["op"] if v1 else path_params["model"], "rest" if v1 else "v2")
        start, body = BUSY_V1 if v1 else BUSY_V2
        await send(start)
        await send(body)


def _expire(slot: asyncio.Future[bool]) -> None:
    if not slot.done():
        slot.set_result(False)
