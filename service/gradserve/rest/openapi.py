"""The served OpenAPI document: FastAPI's, completed so schema-driven tools reach every route.

Flow position: GET /openapi.json (and /docs) -> **openapi.build** -> FastAPI's generated
schema + the per-op native routes (rest/native.py) + what FastAPI cannot infer.

The inference handlers take the raw ``Request`` (they parse bytes themselves, for speed
and for the V2 binary extension), so FastAPI sees no path parameters, no request body
and no response model on them. This module declares them: path params of every /v2
model route, the V2 inference request body, and for every route its answers (the 200
body and each documented error status with its error body), so that schemathesis and
client generators can test and call every route and check what comes back.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gradserve.codecs.dtypes import BY_NAME, BY_V2
from gradserve.ops.registry import Registry
from gradserve.rest import native

_REF = "#/components/schemas/"
_JSON = "application/json"

# Statuses an answer may carry besides 200, per API.md section 4 (413: limits; 429:
# queue full; 499: the client left, nginx's code, only ever seen in logs).
_INFER_ERRORS = ("400", "404", "413", "422", "429", "499", "503", "504", "507")
_LOOKUP_ERRORS = ("404",)

COMPONENTS: dict[str, Any] = {
    "NativeError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "NativeTensorOut": {
        "type": "object",
        "required": ["dtype", "shape", "data"],
        "properties": {
            "dtype": {"type": "string", "enum": list(BY_NAME)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "data": {
                "description": 'Nested lists of numbers (a number for shape []); "NaN", '
                '"Infinity" and "-Infinity" stand for non-finite values.'
            },
        },
    },
    "NativeAnswer": {
        "type": "object",
        "description": "Each requested output by name.",
        "additionalProperties": {"$ref": _REF + "NativeTensorOut"},
    },
    "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "V2Parameters": {
        "type": "object",
        "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]},
    },
    "V2InputTensor": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": list(BY_V2)},
            "parameters": {"$ref": _REF + "V2Parameters"},
            "data": {"description": "Row-major values, flat or nested.", "type": "array"},
        },
    },
    "V2RequestedOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": {"$ref": _REF + "V2Parameters"}},
    },
    "V2InferenceRequest": {
        "type": "object",
        "description": "Open Inference Protocol request. Binary tensor data follows the JSON "
        "when the Inference-Header-Content-Length header gives the JSON's length.",
        "properties": {
            "id": {"type": "string"},
            "parameters": {"$ref": _REF + "V2Parameters"},
            "inputs": {"type": "array", "items": {"$ref": _REF + "V2InputTensor"}},
            "outputs": {"type": "array", "items": {"$ref": _REF + "V2RequestedOutput"}},
        },
    },
    "V2OutputTensor": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": list(BY_V2)},
            "parameters": {"$ref": _REF + "V2Parameters"},
            "data": {"type": "array"},
        },
    },
    "V2InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": {"$ref": _REF + "V2OutputTensor"}},
        },
    },
    "V2TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "V2ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": _REF + "V2TensorMetadata"}},
            "outputs": {"type": "array", "items": {"$ref": _REF + "V2TensorMetadata"}},
        },
    },
    "V2ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "V2Ready": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}, "error": {"type": "string"}},
    },
    "V2Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "V2ModelConfig": {
        "type": "object",
        "description": "The Triton model-config form (perf_analyzer reads it).",
        "properties": {"name": {"type": "string"}, "max_batch_size": {"type": "integer"}},
    },
    "CatalogEntry": {
        "type": "object",
        "required": ["name", "family", "kind", "route", "inputs", "params", "outputs", "grad_outputs"],
    },
    "Catalog": {
        "type": "object",
        "required": ["ops"],
        "properties": {"ops": {"type": "array", "items": {"$ref": _REF + "CatalogEntry"}}},
    },
    "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
    # The shared-memory extensions (rest/shm.py).
    "V2Empty": {"type": "object", "description": "Done (Triton answers an empty body)."},
    "V2ShmStatus": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "byte_size"],
            "properties": {
                "name": {"type": "string"},
                "key": {"type": "string"},
                "offset": {"type": "integer", "minimum": 0},
                "device_id": {"type": "integer", "minimum": 0},
                "byte_size": {"type": "integer", "minimum": 0},
            },
        },
    },
    "V2SystemShmRegister": {
        "type": "object",
        "required": ["key", "byte_size"],
        "properties": {
            "key": {"type": "string", "description": "The POSIX shared memory object's name (shm_open)."},
            "offset": {"type": "integer", "minimum": 0},
            "byte_size": {"type": "integer", "minimum": 1},
        },
    },
    "V2CudaShmRegister": {
        "type": "object",
        "required": ["raw_handle", "device_id", "byte_size"],
        "properties": {
            "raw_handle": {"type": "object", "properties": {"b64": {"type": "string"}}},
            "device_id": {"type": "integer", "minimum": 0},
            "byte_size": {"type": "integer", "minimum": 1},
        },
    },
}
_SHM_ERRORS = ("400", "404", "409", "413")


def _content(name: str) -> dict[str, Any]:
    return {_JSON: {"schema": {"$ref": _REF + name}}}


def _answers(ok: str, errors: tuple[str, ...], error_schema: str, **extra: str) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": _content(ok)}}
    for status in errors:
        responses[status] = {"description": "Error (API.md section 4)", "content": _content(error_schema)}
    for status, schema in extra.items():
        responses[status] = {"description": "Not ready", "content": _content(schema)}
    return responses


def _path_params(path: str) -> list[dict[str, Any]]:
    return [
        {"name": seg[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for seg in path.split("/")
        if seg.startswith("{") and seg.endswith("}")
    ]


def _v2_operation(path: str, method: str, op: dict[str, Any]) -> None:
    """Fill in one /v2 operation's params, body and answers in place."""
    op["parameters"] = _path_params(path)
    if "sharedmemory/" in path:
        if path.endswith("/register"):
            body = "V2CudaShmRegister" if "/cudasharedmemory/" in path else "V2SystemShmRegister"
            op["requestBody"] = {"required": True, "content": _content(body)}
        elif method == "post":  # unregister: no body (tritonclient sends none), any ignored
            op["requestBody"] = {"required": False, "content": _content("V2Empty")}
        ok = "V2ShmStatus" if path.endswith("/status") else "V2Empty"
        op["responses"] = _answers(ok, _SHM_ERRORS, "V2Error")
    elif path.endswith("/infer"):
        op["requestBody"] = {"required": True, "content": _content("V2InferenceRequest")}
        op["responses"] = _answers("V2InferenceResponse", _INFER_ERRORS, "V2Error")
    elif path.endswith("/ready"):
        not_ready = {"503": "V2Ready"}
        op["responses"] = _answers(
            "V2Ready", _LOOKUP_ERRORS if "{model}" in path else (), "V2Error", **not_ready
        )
    elif path.endswith("/config"):
        op["responses"] = _answers("V2ModelConfig", _LOOKUP_ERRORS, "V2Error")
    elif "{model}" in path:
        op["responses"] = _answers("V2ModelMetadata", _LOOKUP_ERRORS, "V2Error")
    elif path == "/v2":
        op["responses"] = _answers("V2ServerMetadata", (), "V2Error")
    elif path == "/v2/health/live":
        op["responses"] = _answers("V2Live", (), "V2Error")


def build(app: FastAPI, registry: Registry) -> dict[str, Any]:
    """The whole document (cached on the app by the caller)."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    paths: dict[str, Any] = schema.setdefault("paths", {})
    op_paths, models = native.openapi_paths(registry)
    for item in op_paths.values():
        item["post"]["responses"] = _answers("NativeAnswer", _INFER_ERRORS, "NativeError")
    paths.update(op_paths)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        model_schema = model.model_json_schema(ref_template=_REF + "{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    components.update(COMPONENTS)
    for path, item in paths.items():
        for method, op in item.items():
            if path.startswith("/v2"):
                _v2_operation(path, method, op)
    if "/v1/ops" in paths:
        paths["/v1/ops"]["get"]["responses"] = _answers("Catalog", (), "NativeError")
    if "/v1/ops/{op}" in paths:
        paths["/v1/ops/{op}"]["get"]["responses"] = _answers("CatalogEntry", _LOOKUP_ERRORS, "NativeError")
    for probe in ("/healthz", "/readyz"):
        if probe in paths:
            extra = {"503": "Status"} if probe == "/readyz" else {}
            paths[probe]["get"]["responses"] = _answers("Status", (), "NativeError", **extra)
    return schema
