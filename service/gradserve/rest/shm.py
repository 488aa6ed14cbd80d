"""V2 REST routes of the shared-memory extensions (Triton's wire, so
tritonclient.http and perf_analyzer work unchanged).

Flow position: HTTP request -> **rest/shm** -> the runtime's region registry (shm.py),
the same one gRPC's SystemSharedMemory* rpcs use; inference requests then name the
regions in their tensor parameters (rest/v2.py, codecs/v2_tensors.py).

    GET  /v2/systemsharedmemory[/region/{name}]/status      -> [{name, key, offset, byte_size}]
    POST /v2/systemsharedmemory/region/{name}/register      {key, offset, byte_size}
    POST /v2/systemsharedmemory[/region/{name}]/unregister  (no name: every region)
    and the same under /v2/cudasharedmemory, whose register body is
    {raw_handle: {b64}, device_id, byte_size} and whose status lists {name, device_id, byte_size}.

Register and unregister answer 200 with ``{}`` (Triton: an empty body); errors render
``{"error": msg}`` (rest/errors.py) with the statuses of errors.py.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gradserve.errors import MalformedRequest
from gradserve.rest.body import read_body
from gradserve.rest.native import parse_json_object
from gradserve.shm import SharedMemory, decode_cuda_handle

# A register body is a few small fields; anything near this is not one.
_MAX_BODY_BYTES = 64 * 1024


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _ok() -> Response:
    # Triton answers an empty body; an empty JSON object reads the same to its clients
    # (they look at the status only) and keeps the answer's Content-Type JSON.
    return Response(b"{}", media_type="application/json")


async def _register_body(request: Request) -> dict[str, Any]:
    return parse_json_object(await read_body(request, _MAX_BODY_BYTES))


def _uint(doc: dict[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedRequest(f"{key!r} must be a non-negative integer, got {value!r}"[:300])
    return value


def build_router(shm: SharedMemory) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["v2 shared memory"])

    # ------------------------------------------------------------ system shared memory

    @router.get("/systemsharedmemory/status", summary="Every registered system shared-memory region")
    async def system_status_all() -> Response:
        return _json(shm.system_status(""))

    @router.get("/systemsharedmemory/region/{name:path}/status", summary="One system shared-memory region")
    async def system_status(name: str) -> Response:
        return _json(shm.system_status(name))

    @router.post(
        "/systemsharedmemory/region/{name:path}/register",
        summary="Register a region of a POSIX shared memory object: {key, offset, byte_size}",
    )
    async def system_register(name: str, request: Request) -> Response:
        doc = await _register_body(request)
        key = doc.get("key")
        if not isinstance(key, str):
            raise MalformedRequest("'key' (the shared memory object's name) must be a string")
        shm.register_system(name, key, _uint(doc, "offset", 0), _uint(doc, "byte_size"))
        return _ok()

    @router.post("/systemsharedmemory/unregister", summary="Unregister every system shared-memory region")
    async def system_unregister_all() -> Response:
        shm.unregister_system("")
        return _ok()

    @router.post("/systemsharedmemory/region/{name:path}/unregister", summary="Unregister one region")
    async def system_unregister(name: str) -> Response:
        shm.unregister_system(name)
        return _ok()

    # ------------------------------------------------------------ CUDA shared memory

    @router.get("/cudasharedmemory/status", summary="Every registered CUDA shared-memory region")
    async def cuda_status_all() -> Response:
        return _json(shm.cuda_status(""))

    @router.get("/cudasharedmemory/region/{name:path}/status", summary="One CUDA shared-memory region")
    async def cuda_status(name: str) -> Response:
        return _json(shm.cuda_status(name))

    @router.post(
        "/cudasharedmemory/region/{name:path}/register",
        summary="Register a cudaIPC handle: {raw_handle: {b64}, device_id, byte_size}",
    )
    async def cuda_register(name: str, request: Request) -> Response:
        doc = await _register_body(request)
        handle = decode_cuda_handle(doc.get("raw_handle"))
        shm.register_cuda(name, handle, _uint(doc, "device_id", 0), _uint(doc, "byte_size"))
        return _ok()

    @router.post("/cudasharedmemory/unregister", summary="Unregister every CUDA shared-memory region")
    async def cuda_unregister_all() -> Response:
        shm.unregister_cuda("")
        return _ok()

    @router.post("/cudasharedmemory/region/{name:path}/unregister", summary="Unregister one CUDA region")
    async def cuda_unregister(name: str) -> Response:
        shm.unregister_cuda(name)
        return _ok()

    return router
