"""The pages a person opens first: the landing page at /, the API docs at /docs and /redoc.

Flow position: uvicorn -> FastAPI's router -> **rest/pages** -> (the registry and the
engine's readiness, read only). No request here reaches the engine or the batcher.

- ``GET /`` says what the service is and links to everything else: HTML for a browser,
  the same as JSON for ``Accept: application/json`` (``Vary: Accept``).
- ``GET /docs`` (Swagger UI) and ``GET /redoc`` (ReDoc) render the OpenAPI document
  (rest/openapi.py) with each op's request model and a runnable example. FastAPI's own
  pages load both UIs from a CDN and ReDoc's fonts from Google, so on a machine without
  internet they were blank. Here the UIs' released bundles come from a PyPI package,
  ``fastapi-standalone-docs`` (Swagger UI 5 and ReDoc 2 builds; its ReDoc is the one
  patched to load its logo from the page's own path rather than from Redocly's CDN), and
  are served from memory by the service; ReDoc's fonts are off. A Content-Security-Policy
  on these pages allows this origin only, so a future bundle that reaches out elsewhere
  is stopped by the browser instead of leaking a request.
- ``HeadAsGet``: HEAD wherever GET works (FastAPI's routes answered HEAD with 405, and
  probes and uptime checkers send HEAD).
"""

from __future__ import annotations

import html
from collections import Counter
from importlib import resources
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gradserve import __version__
from gradserve.runtime import Runtime

# Two sentences: what it is, and who it is for (the README opens with the same; a test checks).
DESCRIPTION = (
    "gradserve computes neural-network losses, activations, their gradients and weight "
    "initializations with PyTorch, and serves them over REST, the Open Inference Protocol (V2) "
    "and gRPC."
)
AUDIENCE = (
    "It is for people who teach, learn or test deep-learning code: check your own "
    "implementation against a reference, see what an initialization does to a deep net, "
    "or call the ops from any language (Triton's clients work unchanged)."
)

# The OpenAPI document's description: the top of /docs and /redoc.
API_DESCRIPTION = (
    f"{DESCRIPTION} {AUDIENCE}\n\n"
    "Each op is `POST /v1/<family>/<op>` with a JSON object of its tensors (nested lists) and "
    'params, plus `"grad": true` for its gradients; open an op, press **Try it out**, then '
    "**Execute** to run its example. The same ops are V2 models under `/v2` and over gRPC. "
    "[Home](/) lists everything else."
)

# The package that ships the UIs' files, and which of its files each page may load.
_ASSETS_PACKAGE = "fastapi_standalone_docs"
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
_SWAGGER_FILES = {"swagger-ui-bundle.js": "swagger", "swagger-ui.css": "swagger", "favicon.png": "fastapi"}
# ReDoc fetches its logo from <page path>/logo-mini.svg, i.e. /redoc/logo-mini.svg.
_REDOC_FILES = {"redoc.standalone.js": "redoc", "logo-mini.svg": "redoc", "favicon.png": "fastapi"}
# The bundles change only with the package: browsers may keep them a day.
_ASSET_CACHE_CONTROL = "public, max-age=86400"
# Only this origin; inline scripts and styles because both UIs are started by an inline
# script and style themselves inline; data: images for Swagger UI's icons; blob:
# workers for ReDoc's search.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'self'; base-uri 'self'; form-action 'self'"
)
_LANDING_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'"

# The landing page's links: (key, path, what it is), in the order shown.
LINKS: tuple[tuple[str, str, str], ...] = (
    ("docs", "/docs", "Interactive API docs (Swagger UI): every op's request model; Try it out"),
    ("redoc", "/redoc", "The same API reference as one page (ReDoc)"),
    ("lab", "/lab", "The lab: what an initialization does to a deep net's activations and gradients"),
    ("ops", "/v1/ops", "The op catalog (JSON): inputs, params, outputs; /v1/ops/{op} for one"),
    ("openapi", "/openapi.json", "The OpenAPI document"),
    ("metrics", "/metrics", "Prometheus metrics (Triton's names)"),
    ("healthz", "/healthz", "Liveness"),
    ("readyz", "/readyz", "Readiness: 200 once every op is warm, 503 while warming or draining"),
    ("v2", "/v2", "Open Inference Protocol (V2): server metadata"),
    ("v2_live", "/v2/health/live", "V2 liveness"),
    ("v2_ready", "/v2/health/ready", "V2 readiness"),
)
_FAMILY_WORDS = {
    "activations": "activations",
    "losses": "losses",
    "init": "weight initializations",
    "lab": "lab experiment",
}


def _assets(names: dict[str, str]) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, media type), read once from the package's static/<folder>/."""
    root = resources.files(_ASSETS_PACKAGE) / "static"
    files: dict[str, tuple[bytes, str]] = {}
    for name, folder in names.items():
        suffix = "." + name.rsplit(".", 1)[-1]
        files[name] = ((root / folder / name).read_bytes(), _MEDIA_TYPES[suffix])
    return files


def _asset_response(files: dict[str, tuple[bytes, str]], name: str, page: str) -> Response:
    found = files.get(name)
    if found is None:
        raise HTTPException(404, f"no {page} file {name[:64]!r}")
    return Response(found[0], media_type=found[1], headers={"Cache-Control": _ASSET_CACHE_CONTROL})


def _root(request: Request) -> str:
    """The prefix the app is served under (a proxy's root_path), '' when none."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _prefers_json(accept: str) -> bool:
    """Whether an Accept header ranks application/json above text/html (a tie is HTML,
    so browsers and a bare curl, ``*/*``, get the page)."""

    def quality(media: str) -> float:
        best, specificity = 0.0, -1
        kind = media.split("/")[0]
        for part in accept.split(","):
            fields = [f.strip() for f in part.split(";")]
            rank = {media: 2, f"{kind}/*": 1, "*/*": 0}.get(fields[0].lower(), -1)
            if rank <= specificity:
                continue
            q = 1.0
            for f in fields[1:]:
                if f.lower().startswith("q="):
                    try:
                        q = float(f[2:])
                    except ValueError:
                        q = 0.0
            best, specificity = q, rank
        return best

    return quality("application/json") > quality("text/html")


def landing(runtime: Runtime, request: Request) -> dict[str, Any]:
    """What GET / says, as data (the JSON answer; the HTML page renders the same)."""
    root = _root(request)
    engine, settings = runtime.engine, runtime.settings
    grpc_on = settings.grpc_enabled and settings.grpc_port > 0
    return {
        "name": "gradserve",
        "version": __version__,
        "description": DESCRIPTION,
        "audience": AUDIENCE,
        "ready": bool(engine.ready and not engine.draining),
        "device": str(runtime.executor.device),
        "ops": dict(Counter(spec.family for spec in runtime.registry)),
        "grpc_port": settings.grpc_port if grpc_on else None,
        "links": {key: root + path for key, path, _ in LINKS},
    }


def _landing_html(info: dict[str, Any], request: Request) -> str:
    e = html.escape
    about = {key: what for key, _, what in LINKS}
    items = "\n".join(
        f'<li><a href="{e(href)}">{e(href)}</a> {e(about[key])}</li>' for key, href in info["links"].items()
    )
    ops = ", ".join(f"{n} {_FAMILY_WORDS.get(family, family)}" for family, n in info["ops"].items())
    grpc = f"gRPC on port {info['grpc_port']}" if info["grpc_port"] else "gRPC off"
    base = str(request.base_url).rstrip("/")
    example = (
        f"curl -s {base}/v1/losses/cross_entropy \\\n"
        """  -d '{"input": [[3.2, 5.1, -1.7]], "target": [0], "grad": true}'"""
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gradserve {e(info["version"])}</title>
<link rel="icon" href="data:,">
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; margin: 0; color: #1d2430; background: #fafbfc; }}
main {{ max-width: 52rem; margin: 2.5rem auto; padding: 0 1.25rem; }}
h1 small {{ font-size: 0.55em; color: #5b6577; font-weight: normal; }}
.status {{ color: #5b6577; }}
ul {{ padding-left: 1.2rem; }} li {{ margin: 0.3rem 0; }}
a {{ color: #0b62c4; font-family: ui-monospace, monospace; margin-right: 0.4rem; }}
pre {{ background: #eef1f5; padding: 0.8rem 1rem; overflow-x: auto; border-radius: 6px; }}
</style>
</head>
<body>
<main>
<h1>gradserve <small>{e(info["version"])}</small></h1>
<p>{e(info["description"])} {e(info["audience"])}</p>
<p class="status" id="status">{"ready" if info["ready"] else "not ready (warming or draining)"}
 · device {e(info["device"])} · {e(ops)} · {e(grpc)}</p>
<h2>Where to go</h2>
<ul id="links">
{items}
</ul>
<h2>Try it</h2>
<pre>{e(example)}</pre>
</main>
</body>
</html>
"""


def build_router(runtime: Runtime, *, openapi_url: str = "/openapi.json") -> APIRouter:
    router = APIRouter(include_in_schema=False)
    swagger_files, redoc_files = _assets(_SWAGGER_FILES), _assets(_REDOC_FILES)
    docs_headers = {"Content-Security-Policy": DOCS_CSP}

    @router.get("/")
    async def index(request: Request) -> Response:
        info = landing(runtime, request)
        headers = {"Vary": "Accept"}
        if _prefers_json(request.headers.get("accept", "")):
            return Response(orjson.dumps(info), media_type="application/json", headers=headers)
        headers["Content-Security-Policy"] = _LANDING_CSP
        return Response(_landing_html(info, request), media_type="text/html; charset=utf-8", headers=headers)

    @router.get("/docs")
    async def swagger_ui(request: Request) -> Response:
        root = _root(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title="gradserve - Swagger UI",
            swagger_js_url=f"{root}/docs/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/favicon.png",
            # No online validator badge: it would fetch from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None, "displayRequestDuration": True},
        )
        page.headers.update(docs_headers)
        return page

    @router.get("/docs/{name}")
    async def swagger_asset(name: str) -> Response:
        return _asset_response(swagger_files, name, "docs")

    @router.get("/redoc")
    async def redoc(request: Request) -> Response:
        root = _root(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title="gradserve - ReDoc",
            redoc_js_url=f"{root}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}/redoc/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(docs_headers)
        return page

    @router.get("/redoc/{name}")
    async def redoc_asset(name: str) -> Response:
        return _asset_response(redoc_files, name, "redoc")

    return router


class HeadAsGet:
    """ASGI middleware: a HEAD request is answered as the GET of the same path, without
    the body (the headers, Content-Length included, are the GET's), wherever GET is.

    FastAPI's routes take only the methods they name, so HEAD was 405 on /healthz,
    /metrics and every other GET route; probes and uptime checkers send HEAD. One rule
    here covers every GET route, present and future, and keeps the OpenAPI document to
    one operation per route. The inference fast path (POST only) never gets here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            # uvicorn drops a HEAD answer's body itself (its own scope still says HEAD);
            # dropping it here too keeps in-process (ASGI) clients truthful.
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
