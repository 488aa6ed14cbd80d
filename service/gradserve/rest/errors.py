"""HTTP error rendering: one handler for every ``GradservError``, both body formats.

Native REST (/v1 and the rest) answers ``{"error": {"code", "message"}}``; V2 (/v2)
answers ``{"error": "<message>"}`` as tritonclient expects. Statuses come from the one
table in errors.py. Anything unexpected is logged with a request id and answered 500
with a generic message: never a traceback on the wire.
"""

from __future__ import annotations

import logging
import uuid
from typing import get_args

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gradserve.errors import GradservError, Overloaded
from gradserve.near_miss import closest
from gradserve.ops.registry import Family
from gradserve.tracing import current_request_id

log = logging.getLogger(__name__)


def error_response(request: Request, status: int, code: str, message: str) -> Response:
    if request.url.path.startswith("/v2"):
        body: object = {"error": message}
    else:
        body = {"error": {"code": code, "message": message}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _gradserve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GradservError)
    response = error_response(request, exc.http_status, exc.code, exc.message)
    if isinstance(exc, Overloaded):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    if exc.status_code == 404:
        message += _route_hint(request.url.path)
    return error_response(request, exc.status_code, code, message)


_FAMILIES: tuple[str, ...] = get_args(Family)  # the /v1/<family>/<op> routes


def _route_hint(path: str) -> str:
    """For /v1/<not a family>/<op>: the family meant ("activation", "inits"), or the
    op routes there are."""
    parts = path.split("/")
    if len(parts) != 4 or parts[1] != "v1" or parts[2] in _FAMILIES:
        return ""
    meant = closest(parts[2], _FAMILIES)
    if meant is not None:
        return f"; did you mean /v1/{meant}/{parts[3]}?"
    return "; op routes are " + ", ".join(f"/v1/{family}/{{op}}" for family in _FAMILIES)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(request, 422, "invalid_input", f"{where}: {first.get('msg', 'invalid')}")


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The request's own id (X-Request-ID, rest/gate.py), so the client can find the line.
    request_id = current_request_id() or uuid.uuid4().hex[:12]
    log.error("request %s %s failed", request_id, request.url.path, exc_info=exc)
    return error_response(request, 500, "internal", f"internal error (request id {request_id})")


async def render_error(request: Request, exc: Exception) -> Response:
    """The response for any exception out of a handler (the fast dispatch's handler)."""
    if isinstance(exc, GradservError):
        return await _gradserve_error(request, exc)
    if isinstance(exc, HTTPException):
        return await _http_error(request, exc)
    return await _unexpected(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(GradservError, _gradserve_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
