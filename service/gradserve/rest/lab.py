"""The lab's HTTP routes: plots under /v1/lab/plots and the page at /lab.

Flow position: uvicorn -> FastAPI's router -> **rest/lab** -> lab/plots.py -> engine.
The op itself (POST /v1/lab/activation_stats) is not here: it is the registry's "lab"
family, served by rest/native.py like every op. These routes only turn a query string
into a mapping and bytes into a response, and serve the page's static files.

The plots' query params are described in each route's OpenAPI description, not
declared as parameters: every distinct query is a new render (~1 s), and schema-driven
fuzzers would spend their whole budget drawing pictures.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from fastapi import APIRouter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gradserve.errors import InvalidInput
from gradserve.lab.plots import Image, Plots, Query

# The page's files, read once: name -> (bytes, media type). Only these are served.
_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}
# Plots are deterministic for a query: browsers may keep them (an hour).
_PLOT_CACHE_CONTROL = "public, max-age=3600"

_SIZE_DOC = (
    "Image: `format` (png, default, or svg), `img_width` and `img_height` in pixels (200-3000), "
    "`dpi` (50-300, default 100). Identical queries are answered from a cache, byte for byte."
)
_PLOT_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "The image (PNG by default, SVG with format=svg).",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/svg+xml": {"schema": {"type": "string"}},
        },
    },
    **{
        status: {
            "description": "Error (API.md section 4): a bad query param names it.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NativeError"}}},
        }
        for status in (404, 413, 422, 429, 503, 504)
    },
}


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files (package data of gradserve.lab, directory static/)."""
    root = resources.files("gradserve.lab") / "static"
    files: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return files


def _query(request: Request) -> Query:
    items = request.query_params.multi_items()
    seen: dict[str, str] = {}
    for name, value in items:
        if name in seen:
            raise InvalidInput(f"query param {name[:40]!r}: given more than once", code="bad_param")
        seen[name] = value
    return seen


def _image(image: Image) -> Response:
    headers = {"Cache-Control": _PLOT_CACHE_CONTROL, "X-Cache": "hit" if image.cached else "miss"}
    return Response(image.body, media_type=image.media_type, headers=headers)


def build_router(plots: Plots) -> APIRouter:
    router = APIRouter(tags=["lab"])

    def plot_route(
        path: str, summary: str, description: str, draw: Callable[[Query], Awaitable[Image]]
    ) -> None:
        async def handler(request: Request) -> Response:
            return _image(await draw(_query(request)))

        router.add_api_route(
            path,
            handler,
            methods=["GET"],
            summary=summary,
            description=f"{description}\n\n{_SIZE_DOC}",
            response_class=Response,
            responses=_PLOT_RESPONSES,
        )

    plot_route(
        "/v1/lab/plots/activation_stats",
        "Histograms and mean/std curves of one activation_stats run",
        "Query params are the op's own (`depth`, `width`, `batch`, `activation`, `init` and the "
        "init's params such as `std` or `mode`, `seed`, `bins`), with the op's defaults and "
        "errors. The figure: activation mean and std per layer, the weight-gradient std per "
        "layer, and each layer's histogram (10 evenly spaced layers past depth 10).",
        plots.activation_stats,
    )
    plot_route(
        "/v1/lab/plots/activation",
        "An activation and its derivative",
        "`op` (tanh by default; sigmoid, tanh, relu, leaky_relu, elu, selu, gelu, silu, "
        "softplus, mish) and its own params (e.g. `negative_slope`), over [`low`, `high`] "
        "(-5, 5) at `points` points (401; 2-4001).",
        plots.activation,
    )
    plot_route(
        "/v1/lab/plots/margin",
        "Hinge vs softmax cross-entropy as the correct-class margin grows",
        "One sample of `classes` classes (3; 2-100) whose correct class scores the margin "
        "and every other class 0: the hinge loss (margin `delta`, 1.0) reaches 0 at margin "
        "delta, cross-entropy keeps improving. Margins over [`low`, `high`] (-3, 5) at "
        "`points` points.",
        plots.margin,
    )

    files = static_files()

    @router.get("/lab", include_in_schema=False)
    async def page() -> Response:
        body, media_type = files["index.html"]
        return Response(body, media_type=media_type)

    @router.get("/lab/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        found = files.get(name)
        if found is None or name == "index.html":
            raise HTTPException(404, f"no lab file {name[:64]!r}")
        return Response(found[0], media_type=found[1])

    return router
