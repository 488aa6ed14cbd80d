"""The FastAPI application: routers for /v1, /v2, health, /metrics and the pages (/, /docs,
/redoc: rest/pages.py) over one runtime.

``create_app(runtime)`` serves a runtime the caller owns (``gradserve serve`` shares it
with gRPC); ``create_app(settings=...)`` builds and owns one, for tests and simple use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response

from gradserve import __version__
from gradserve import metrics as metrics_mod
from gradserve.config import Settings
from gradserve.lab.plots import Plots
from gradserve.rest import errors, gate, lab, native, openapi, pages, shm, v2
from gradserve.rest.fastpath import GradservApp
from gradserve.runtime import Runtime


def create_app(runtime: Runtime | None = None, *, settings: Settings | None = None) -> FastAPI:
    owned = runtime is None
    rt = runtime if runtime is not None else Runtime(settings or Settings())
    # The lab's plots belong to the app (their render worker stops with it).
    plots = Plots(rt.engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await rt.start()
        yield
        if owned:
            await rt.drain()
            rt.close()
        await plots.aclose()

    app = GradservApp(
        title="gradserve",
        version=__version__,
        description=pages.API_DESCRIPTION,
        lifespan=lifespan,
        # /docs and /redoc are rest/pages.py's: FastAPI's load their UIs from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = rt
    errors.install(app)
    app.include_router(native.build_router(rt.engine, rt.registry))
    app.include_router(v2.build_router(rt.engine, rt.registry, rt.shm))
    app.include_router(shm.build_router(rt.shm))
    app.include_router(lab.build_router(plots))
    app.include_router(pages.build_router(rt))
    app.set_fast_routes(
        {family: native.infer_handler(rt.engine, rt.registry, family) for family in native.FAMILIES},
        v2.infer_handler(rt.engine, rt.registry, rt.shm),
    )

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> Response:
        return Response(b'{"status":"alive"}', media_type="application/json")

    @app.get("/readyz", tags=["health"], summary="200 once every op is warm; 503 while warming or draining")
    async def readyz() -> Response:
        if rt.engine.ready and not rt.engine.draining:
            return Response(b'{"status":"ready"}', media_type="application/json")
        state = b"draining" if rt.engine.draining else b"warming"
        return Response(b'{"status":"' + state + b'"}', status_code=503, media_type="application/json")

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        rt.metrics.refresh_device(str(rt.executor.device))
        return Response(rt.metrics.render(), media_type=metrics_mod.CONTENT_TYPE)

    app.add_middleware(pages.HeadAsGet)  # HEAD wherever GET is answered
    app.openapi = lambda: _openapi(app, rt)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, rt: Runtime) -> dict[str, Any]:
    """Built once, on first request (rest/openapi.py completes FastAPI's)."""
    if not app.openapi_schema:
        app.openapi_schema = openapi.build(app, rt.registry)
        if rt.keys is not None:  # the routes that need a key say so (and /docs can send one)
            gate.document_keys(app.openapi_schema, rt.settings.api_keys_on_probes)
    return app.openapi_schema
