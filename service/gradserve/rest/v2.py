"""V2 REST transport (Open Inference Protocol) under /v2, so tritonclient.http and
perf_analyzer work unmodified.

Flow position: HTTP request -> **rest/v2** -> codecs/v2_rest (decode) -> codecs/v2
(engine arguments) -> engine -> codecs/v2_rest (encode). Each op is a model named after
it, version "1"; every model route also answers under /versions/{v}. Bodies are parsed
from raw bytes whatever the Content-Type (tritonclient sends none); errors render as
``{"error": msg}`` through rest/errors.py with the statuses of errors.py. Tensors may
live in shared-memory regions of the runtime's registry (shm.py; routes in rest/shm.py):
inputs are read as views of them, outputs written into them after the engine answers.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gradserve.codecs import v2, v2_models, v2_protocol, v2_rest, v2_tensors
from gradserve.codecs.numbers import check_json_answer
from gradserve.engine import Engine
from gradserve.errors import MalformedRequest, RequestTooLarge
from gradserve.ops.registry import OpSpec, Registry
from gradserve.rest.body import off_loop, read_body, until_disconnect
from gradserve.shm import SharedMemory

_JSON = "application/json"
_HEADER_LENGTH = "inference-header-content-length"
# Content-Encoding -> zlib wbits (gzip container, or the zlib stream HTTP calls deflate).
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


class PartsResponse(Response):
    """A binary V2 answer sent as its parts (JSON header, then each tensor's bytes as
    a view of the tensor), so a 16 MiB output is never copied into one joined body."""

    # Below this, the parts are joined: one write beats a copy of a few KiB.
    JOIN_BELOW_BYTES = 64 * 1024

    def __init__(self, parts: list[bytes | memoryview], head_length: int) -> None:
        total = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
        super().__init__(
            None,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(head_length), "Content-Length": str(total)},
        )
        self.parts = parts if total >= self.JOIN_BELOW_BYTES else [b"".join(parts)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self.parts) - 1
        for i, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < last})


def _decompress(body: bytes | memoryview, encoding: str, limit: int) -> bytes:
    """A gzip/deflate body (tritonclient's request_compression_algorithm), within ``limit``
    once inflated: a small compressed body must not expand past the body limit.

    gzip allows several members one after the other (``gzip -d`` joins them), so each
    is inflated in turn; bytes after a deflate stream, or that do not start another
    gzip member, are refused rather than silently dropped.
    """
    name = encoding.strip().lower()
    wbits = _DECODERS.get(name)
    if wbits is None:
        raise MalformedRequest(
            f"unsupported Content-Encoding {encoding[:40]!r}; use gzip or deflate", code="bad_encoding"
        )
    out = bytearray()
    rest = bytes(body)
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise MalformedRequest(f"body is not valid {name}: {exc}", code="bad_encoding") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise RequestTooLarge(f"decompressed request body is over the limit of {limit} bytes")
        if not inflater.eof:
            raise MalformedRequest(f"{name} body is truncated", code="bad_encoding")
        rest = inflater.unused_data
        if not rest:
            return bytes(out)
        if name != "gzip" or not rest.startswith(b"\x1f\x8b"):
            raise MalformedRequest(
                f"{len(rest)} bytes follow the end of the {name} data", code="bad_encoding"
            )


def _model(registry: Registry, request: Request) -> OpSpec:
    """The op named in the path (404 if unknown), with its version checked."""
    spec = registry.get(request.path_params["model"])
    v2_models.check_version(spec, request.path_params.get("version"))
    return spec


def infer_handler(
    engine: Engine, registry: Registry, shm: SharedMemory | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """POST /v2/models/{model}[/versions/{version}]/infer. The app's fast dispatch
    calls it directly (rest/app.py), FastAPI's router only documents it. ``shm``: the
    runtime's shared-memory regions (None: tensors naming one are refused)."""
    settings = engine.settings

    def model(request: Request) -> OpSpec:
        return _model(registry, request)

    async def infer(request: Request) -> Response:
        spec = model(request)  # 404 before reading a byte of the body
        header = request.headers.get(_HEADER_LENGTH)
        binary_limit = settings.max_binary_body_bytes or settings.max_body_bytes
        limit = binary_limit if header is not None else settings.max_body_bytes
        # Binary tensor data starts right after the JSON header: have it land aligned.
        ok = header is not None and header.isascii() and header.strip().isdigit() and len(header) <= 18
        align = int(header) if ok and header is not None else 0
        raw = await read_body(request, limit, align_offset=align)
        encoding = request.headers.get("content-encoding")

        def decode() -> v2_protocol.V2Request:
            body: bytes | memoryview = raw
            if encoding and encoding.strip().lower() != "identity":
                body = _decompress(body, encoding, limit)
            return v2_rest.decode_rest_request(
                body,
                header,
                settings.max_tensor_elements,
                binary_aligned=isinstance(body, memoryview),
                shm=shm,
            )

        # A binary body is sliced, not parsed: only its JSON header and compressed
        # bodies cost time worth a thread.
        compressed = bool(encoding) and encoding is not None and encoding.strip().lower() != "identity"
        json_bytes = len(raw) if header is None or compressed else align
        req = await off_loop(json_bytes, decode)
        tensors, params = v2.engine_inputs(spec, req)
        timeout_s = None if req.timeout_s is None else min(req.timeout_s, settings.request_timeout_s)
        outputs = await until_disconnect(
            request,
            engine.infer(
                spec.name,
                tensors,
                params,
                outputs=req.output_names,
                transport="v2",
                lenient=True,
                timeout_s=timeout_s,
            ),
        )
        slots = req.shm_outputs
        if slots:
            await off_loop(
                v2_tensors.shm_bytes(slots, outputs), lambda: v2_tensors.write_shm_outputs(slots, outputs)
            )
        in_shm = {slot.name for slot in slots}
        flags = req.binary_flags(list(outputs))
        as_json = [t for name, t in outputs.items() if not flags.get(name, False) and name not in in_shm]
        elements = check_json_answer(as_json, settings.max_json_response_elements)
        parts, head_length = await off_loop(
            elements * 8, lambda: v2_rest.encode_rest_response(spec.name, req.id, outputs, flags, in_shm)
        )
        if head_length is None:
            return Response(parts[0], media_type=_JSON)
        return PartsResponse(parts, head_length)

    return infer


def build_router(engine: Engine, registry: Registry, shm: SharedMemory | None = None) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["v2"])
    extensions = shm.extensions if shm is not None else ()

    def model(request: Request) -> OpSpec:
        return _model(registry, request)

    def serving() -> bool:
        return engine.ready and not engine.draining

    def not_ready_reason() -> str:
        return "server is draining" if engine.draining else "server is warming up"

    @router.get("", summary="Server metadata")
    async def server_metadata() -> Response:
        return _json(v2_models.server_metadata(extensions))

    @router.get("/health/live", summary="Server live")
    async def live() -> Response:
        return _json({"live": True})

    @router.get("/health/ready", summary="Server ready (every op warm, not draining)")
    async def ready() -> Response:
        # tritonclient only checks for 200; the JSON body is for people and probes.
        if serving():
            return _json({"ready": True})
        return _json({"ready": False, "error": not_ready_reason()}, 503)

    async def model_metadata(request: Request) -> Response:
        return _json(v2_models.model_metadata(model(request)))

    async def model_ready(request: Request) -> Response:
        spec = model(request)
        if serving():
            return _json({"name": spec.name, "ready": True})
        return _json({"name": spec.name, "ready": False, "error": not_ready_reason()}, 503)

    async def model_config(request: Request) -> Response:
        return _json(v2_models.model_config(model(request)))

    infer = infer_handler(engine, registry, shm)

    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], str, str]] = [
        ("", model_metadata, "GET", "Model metadata"),
        ("/ready", model_ready, "GET", "Model ready"),
        ("/config", model_config, "GET", "Model config (Triton form; perf_analyzer reads it)"),
        ("/infer", infer, "POST", "Inference (JSON or binary tensor data)"),
    ]
    for suffix, handler, method, summary in routes:
        for base in ("/models/{model}", "/models/{model}/versions/{version}"):
            router.add_api_route(base + suffix, handler, methods=[method], summary=summary)
    return router
