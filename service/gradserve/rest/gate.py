"""The HTTP gate: key check, request id, transport span and access log for every request.

Flow position: uvicorn -> **GradservApp.__call__ -> HttpGate** -> the fast inference
dispatch or FastAPI (rest/fastpath.py). It is the first thing every HTTP request meets,
the fast inference routes included (they bypass FastAPI's middleware stack, so a
FastAPI middleware would miss them), so there is one check for all routes:

1. One scan of the headers for ``Authorization``, ``X-Request-ID`` (and, with tracing,
   ``traceparent``/``tracestate``).
2. With keys configured and a protected path (auth.py), a missing or wrong key answers
   401 with ``WWW-Authenticate: Bearer`` and the same words whatever was wrong, from
   pre-rendered bytes, the body unread.
3. The ``RequestContext`` becomes ``tracing.CURRENT`` for the request's task (the
   engine reads it); ``send`` is wrapped to add ``X-Request-ID`` to the answer's head
   and note its status.
4. At the end: the transport span ends, and the access line is written (logs.py).

Requests refused below the app (rest/connections.py: 408 for a request not received in
time, 503 past the connection cap) never reach this gate and carry no id.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gradserve import logs
from gradserve.auth import KeyStore, protected_http
from gradserve.config import Settings
from gradserve.tracing import CURRENT, REQUEST_ID_KEY, RequestContext, Tracing, carrier_from, request_id

_REQUEST_ID_HEADER = REQUEST_ID_KEY.encode()
_UNAUTHENTICATED = "a valid API key is required (Authorization: Bearer <key>)"


def _unauthorized(body: object) -> tuple[Message, Message]:
    """The two ASGI messages of a 401, built once at import (the id is added per request)."""
    payload = orjson.dumps(body)
    start: Message = {
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"www-authenticate", b'Bearer realm="gradserve"'),
        ],
    }
    return start, {"type": "http.response.body", "body": payload, "more_body": False}


# The error bodies of rest/errors.py: native {"error": {code, message}}, V2 {"error": msg}.
UNAUTHORIZED_V1 = _unauthorized({"error": {"code": "unauthenticated", "message": _UNAUTHENTICATED}})
UNAUTHORIZED_V2 = _unauthorized({"error": _UNAUTHENTICATED})

Dispatch = Callable[[Scope, Receive, Send], Awaitable[None]]


class HttpGate:
    """Wraps the app's dispatch of one HTTP request (see the module doc)."""

    def __init__(self, settings: Settings, keys: KeyStore | None, tracing: Tracing | None) -> None:
        self.keys = keys
        self.tracing = tracing
        self.probes_protected = settings.api_keys_on_probes
        self.access_log = settings.access_log

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, dispatch: Dispatch | ASGIApp
    ) -> None:
        started = time.perf_counter()
        authorization = given_id = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                # Two Authorization lines (RFC 9110 allows one) are no key at all, not
                # whichever came last: gRPC refuses the same (grpc/calls.py).
                authorization = value if authorization is None else b""
            elif name == _REQUEST_ID_HEADER:
                given_id = value
        ctx = RequestContext(request_id(given_id), "http", started)
        id_header = (_REQUEST_ID_HEADER, ctx.request_id.encode("ascii"))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # A copy: pre-rendered answers (429, 401) are shared module constants.
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        path: str = scope["path"]
        tracing = self.tracing
        if tracing is not None:
            tracing.start_call(ctx, f"HTTP {scope['method']}", _carrier(scope), _http_attributes(scope))
        token = CURRENT.set(ctx)
        try:
            if (
                self.keys is not None
                and protected_http(path, self.probes_protected)
                and not self.keys.check_bearer(authorization)
            ):
                ctx.outcome = "unauthenticated"
                start, body = UNAUTHORIZED_V2 if path.startswith("/v2") else UNAUTHORIZED_V1
                await send_with_id(start)
                await send_with_id(body)
            else:
                await dispatch(scope, receive, send_with_id)
        finally:
            CURRENT.reset(token)
            # No answer started: the app raised before it, and uvicorn answers 500.
            answered = status or 500
            if tracing is not None:
                if ctx.op is not None and ctx.span is not None:
                    ctx.span.update_name(f"{scope['method']} {ctx.op}")
                tracing.end_call(ctx, {"http.response.status_code": answered}, failed=answered >= 500)
            if self.access_log:
                logs.access(ctx, scope["method"], path, answered, _client(scope))


def document_keys(schema: dict[str, Any], probes: bool) -> None:
    """Mark the protected operations of an OpenAPI schema as needing the bearer key
    (with their 401), so /docs shows them locked and its Authorize button sends it."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key of the server (settings api_keys, api_keys_file).",
    }
    for path, item in schema.get("paths", {}).items():
        if not protected_http(path, probes):  # templates ("/v2/models/{model}") match as well
            continue
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["security"] = [{"apiKey": []}]
                operation["responses"].setdefault(
                    "401", {"description": "No API key, or a wrong one (WWW-Authenticate: Bearer)."}
                )


def _carrier(scope: Scope) -> dict[str, str]:
    return carrier_from((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])


def _http_attributes(scope: Scope) -> dict[str, Any]:
    return {"http.request.method": scope["method"], "url.path": scope["path"], "url.scheme": scope["scheme"]}


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None
