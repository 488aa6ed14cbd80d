"""Native REST transport under /v1: decode JSON -> engine -> encode JSON.

One route per op, generated from the registry so /docs shows each op's request
model; all routes of a family share one handler. An op posted under the wrong family
answers 404 naming the route it belongs to (Registry.get); an unknown op answers 404.
GET /v1/ops is the catalog, GET /v1/ops/{op} one op's entry of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from gradserve.codecs.native import decode_tensor, dumps, encode_tensor
from gradserve.codecs.numbers import check_json_answer, nonfinite_literal_hint
from gradserve.engine import Engine
from gradserve.errors import InvalidInput, MalformedRequest
from gradserve.ops.registry import Family, OpSpec, Registry
from gradserve.rest.body import off_loop, read_body, until_disconnect
from gradserve.rest.models import request_example, request_model

FAMILIES: tuple[Family, ...] = ("activations", "losses", "init", "lab")


def parse_json_object(body: bytes | memoryview) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        hint = nonfinite_literal_hint(body, exc.pos)
        raise MalformedRequest(f"body is not valid JSON: {exc}{hint}", code="malformed_json") from None
    if not isinstance(value, dict):
        raise MalformedRequest("body must be a JSON object", code="malformed_json")
    return value


def split_body(
    spec: OpSpec, body: dict[str, Any], max_elements: int
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Body keys -> (tensors, params, grad). Unknown keys are refused, naming them."""
    tensors: dict[str, Any] = {}
    params: dict[str, Any] = {}
    grad = False
    for key, value in body.items():
        if key in spec.input_index:
            if value is not None:
                tensors[key] = decode_tensor(key, value, spec.input_index[key].kind, max_elements)
        elif key in spec.param_index:
            params[key] = value
        elif key == "grad" and spec.grad_outputs:
            if not isinstance(value, bool):
                raise InvalidInput(f"field 'grad': expected true or false, got {value!r}", code="bad_param")
            grad = value
        else:
            known = [*spec.input_index, *spec.param_index, *(["grad"] if spec.grad_outputs else [])]
            raise InvalidInput(
                f"op {spec.name!r}: unknown field {key!r}; its fields are {', '.join(map(repr, known))}",
                code="unknown_field",
            )
    return tensors, params, grad


def infer_handler(
    engine: Engine, registry: Registry, family: Family
) -> Callable[[Request], Awaitable[Response]]:
    """POST /v1/<family>/{op}. The app's fast dispatch calls it directly (rest/app.py)."""
    settings = engine.settings

    async def handle(request: Request) -> Response:
        op = request.path_params["op"]
        spec = registry.get(op, family)
        raw = await read_body(request, settings.max_body_bytes)
        tensors, params, grad = await off_loop(
            len(raw), lambda: split_body(spec, parse_json_object(raw), settings.max_tensor_elements)
        )
        outputs = await until_disconnect(
            request, engine.infer(op, tensors, params, grad=grad, family=family, transport="rest")
        )
        elements = check_json_answer(outputs.values(), settings.max_json_response_elements)
        payload = await off_loop(
            elements * 8, lambda: dumps({name: encode_tensor(t) for name, t in outputs.items()})
        )
        return Response(payload, media_type="application/json")

    return handle


def build_router(engine: Engine, registry: Registry) -> APIRouter:
    """One route per op family. The per-op entries that /docs shows come from
    ``openapi_paths``: per-op routes would make every request scan ~40 path regexes."""
    router = APIRouter(prefix="/v1")

    @router.get("/ops", summary="The op catalog", tags=["catalog"])
    async def ops() -> Response:
        return Response(dumps(catalog(registry)), media_type="application/json")

    @router.get("/ops/{op}", summary="One op's catalog entry", tags=["catalog"])
    async def op_entry(op: str) -> Response:
        return Response(dumps(catalog_entry(registry.get(op))), media_type="application/json")

    for family in FAMILIES:
        router.add_api_route(
            f"/{family}/{{op}}",
            infer_handler(engine, registry, family),
            methods=["POST"],
            include_in_schema=False,
        )
    return router


def openapi_paths(registry: Registry) -> tuple[dict[str, Any], list[type[BaseModel]]]:
    """OpenAPI path items for every op (POST /v1/<family>/<op>) and their request models."""
    paths: dict[str, Any] = {}
    models: list[type[BaseModel]] = []
    for spec in registry:
        model = request_model(spec)
        models.append(model)
        outputs = ", ".join(spec.output_names)
        grads = ", ".join(spec.grad_output_names)
        paths[f"/v1/{spec.family}/{spec.name}"] = {
            "post": {
                "tags": [spec.family],
                "summary": spec.name,
                "description": spec.doc,
                "operationId": f"{spec.family}_{spec.name}",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"},
                            "example": request_example(spec),
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": f"Outputs {outputs}"
                        + (f"; with grad: {grads}" if grads else "")
                        + ', each {"dtype", "shape", "data"}.'
                    },
                    "4XX": {"description": 'Error: {"error": {"code", "message"}} (API.md section 4).'},
                },
            }
        }
    return paths, models


def catalog(registry: Registry) -> dict[str, Any]:
    """GET /v1/ops: every op with its family, kind, inputs, params and outputs."""
    return {"ops": [catalog_entry(s) for s in registry]}


def catalog_entry(s: OpSpec) -> dict[str, Any]:
    """One op's entry of the catalog (GET /v1/ops/{op} answers it alone)."""
    return {
        "name": s.name,
        "family": s.family,
        "kind": s.kind,
        "doc": s.doc,
        "route": f"/v1/{s.family}/{s.name}",
        "inputs": [
            {
                "name": t.name,
                "kind": t.kind,
                "optional": t.optional,
                "default": t.default,
                "doc": t.doc,
            }
            for t in s.inputs
        ],
        "params": [
            {
                "name": p.name,
                "type": p.type,
                "default": p.default,
                "choices": list(p.choices) if p.choices else None,
                "ge": p.ge,
                "gt": p.gt,
                "le": p.le,
                "nullable": p.nullable,
                "doc": p.doc,
            }
            for p in s.params
        ],
        "outputs": list(s.output_names),
        "grad_outputs": list(s.grad_output_names),
        "batching": s.batch_mode,
    }
