"""Direct dispatch of the inference routes, ahead of FastAPI's router.

Flow position: uvicorn -> **GradservApp.__call__** -> the /v1 or /v2 infer handler.
Profiling small requests under load (py-spy, V2 binary cross_entropy at concurrency
64) put about 40% of the event loop's time in FastAPI's route matching and middleware
stack, around a handler that itself needs little. The inference paths have a fixed
shape, so they are matched by splitting the path and their handlers called directly;
every other path (docs, metadata, health, metrics, wrong methods) goes through FastAPI
as usual, and FastAPI still documents the inference routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gradserve.rest.errors import render_error

Handler = Callable[[Request], Awaitable[Response]]


class GradservApp(FastAPI):
    """FastAPI, with the POST inference routes dispatched without its router."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._v1: dict[str, Handler] = {}
        self._v2: Handler | None = None

    def set_fast_routes(self, v1: dict[str, Handler], v2: Handler) -> None:
        """``v1``: family -> handler of POST /v1/<family>/{op}; ``v2``: the handler of
        POST /v2/models/{model}[/versions/{version}]/infer."""
        self._v1 = dict(v1)
        self._v2 = v2

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
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self._match(scope["path"])
            if found is not None:
                handler, path_params = found
                scope["app"] = self
                scope["path_params"] = path_params
                request = Request(scope, receive, send)
                try:
                    response = await handler(request)
                except Exception as exc:  # rendered exactly as FastAPI's handlers would
                    response = await render_error(request, exc)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
