"""The system shared-memory extension against a real `gradserve serve` process, over
V2 REST and gRPC (gradserve's own stubs): register / status / unregister, inputs read
from and outputs written into regions, a region registered over one transport used
over the other, lying offsets and sizes, regions that disappear, the off switch, and
CUDA shared memory refused clearly where there is no CUDA."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.shm_objects import ShmObject, ShmObjects, shm_objects

__all__ = ["shm_objects"]  # the fixture, imported for pytest

X = np.array([[-2.0, -0.5, 0.0, 1.5], [3.0, -4.0, 5.0, 0.25]], np.float32)


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
async def stub(server: ServerProcess) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def name() -> str:
    return f"region-{uuid.uuid4().hex[:8]}"


def register(http: httpx.Client, obj: ShmObject, offset: int = 0, size: int | None = None) -> str:
    region = name()
    body = {
        "key": obj.key,
        "offset": offset,
        "byte_size": size if size is not None else obj.map.size() - offset,
    }
    r = http.post(f"/v2/systemsharedmemory/region/{region}/register", json=body)
    assert r.status_code == 200, r.text
    return region


def shm_params(region: str, size: int, offset: int = 0) -> dict[str, Any]:
    params: dict[str, Any] = {"shared_memory_region": region, "shared_memory_byte_size": size}
    if offset:
        params["shared_memory_offset"] = offset
    return params


def rest_infer(http: httpx.Client, model: str, doc: dict[str, Any]) -> httpx.Response:
    return http.post(f"/v2/models/{model}/infer", content=json.dumps(doc))


# ---------------------------------------------------------------- REST


def test_rest_register_status_unregister(http: httpx.Client, shm_objects: ShmObjects) -> None:
    obj = shm_objects(4096)
    region = register(http, obj, offset=64, size=1024)
    assert http.get(f"/v2/systemsharedmemory/region/{region}/status").json() == [
        {"name": region, "key": obj.key, "offset": 64, "byte_size": 1024}
    ]
    assert region in {r["name"] for r in http.get("/v2/systemsharedmemory/status").json()}
    again = http.post(
        f"/v2/systemsharedmemory/region/{region}/register", json={"key": obj.key, "byte_size": 16}
    )
    assert again.status_code == 409 and "already registered" in again.json()["error"]
    assert http.post(f"/v2/systemsharedmemory/region/{region}/unregister").status_code == 200
    gone = http.get(f"/v2/systemsharedmemory/region/{region}/status")
    assert gone.status_code == 404 and region in gone.json()["error"]
    assert "system_shared_memory" in http.get("/v2").json()["extensions"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{nope", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (json.dumps({"byte_size": 16}).encode(), 400, "'key'"),
        (json.dumps({"key": "/k", "byte_size": -1}).encode(), 400, "'byte_size'"),
        (json.dumps({"key": "/gradserve-absent", "byte_size": 16}).encode(), 400, "no shared memory object"),
        (json.dumps({"key": "/etc/passwd", "byte_size": 16}).encode(), 400, "not a POSIX shared memory name"),
    ],
)
def test_rest_register_refusals(http: httpx.Client, body: bytes, status: int, needle: str) -> None:
    r = http.post(f"/v2/systemsharedmemory/region/{name()}/register", content=body)
    assert r.status_code == status and needle in r.json()["error"], r.text


def test_rest_inputs_and_outputs_in_shared_memory(http: httpx.Client, shm_objects: ShmObjects) -> None:
    obj = shm_objects(4096)
    obj.write(256, X.tobytes())
    region = register(http, obj)
    doc = {
        "id": "s1",
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 4],
                "parameters": shm_params(region, X.nbytes, 256),
            }
        ],
        "outputs": [
            {"name": "y", "parameters": shm_params(region, 64, 1024)},  # more room than needed is fine
            {"name": "grad_x", "parameters": {"binary_data": False}},
        ],
    }
    r = rest_infer(http, "relu", doc)
    assert r.status_code == 200, r.text
    head = r.json()
    assert head["id"] == "s1"
    y_entry, g_entry = head["outputs"]
    # Triton's form: no data, no parameters (perf_analyzer reads parameters as binary data).
    assert y_entry == {"name": "y", "datatype": "FP32", "shape": [2, 4]}
    assert g_entry["data"] == (X > 0).astype(np.float32).ravel().tolist()
    y = np.frombuffer(obj.read(1024, X.nbytes), np.float32).reshape(X.shape)
    np.testing.assert_array_equal(y, np.maximum(X, 0))
    http.post(f"/v2/systemsharedmemory/region/{region}/unregister")


@pytest.mark.parametrize(
    ("tensor_params", "status", "needle"),
    [
        ({"shared_memory_byte_size": 32, "shared_memory_offset": 4080}, 400, "past the end of region"),
        ({"shared_memory_byte_size": 32, "shared_memory_offset": 2**62}, 400, "past the end of region"),
        ({"shared_memory_byte_size": 28}, 422, "need 32 bytes"),
        ({"shared_memory_byte_size": 2**63}, 422, "need 32 bytes"),
        ({"shared_memory_byte_size": 32, "shared_memory_offset": -4}, 400, "non-negative"),
        ({"shared_memory_byte_size": 32, "region": "nope"}, 404, "'nope'"),
        ({"shared_memory_byte_size": 32, "binary_data_size": 32}, 400, "also carries data"),
    ],
)
def test_rest_lying_offsets_and_sizes(
    http: httpx.Client, shm_objects: ShmObjects, tensor_params: dict[str, Any], status: int, needle: str
) -> None:
    obj = shm_objects(4096)
    region = register(http, obj)
    params = {"shared_memory_region": tensor_params.pop("region", region), **tensor_params}
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": params}]}
    r = rest_infer(http, "relu", doc)
    assert r.status_code == status and needle in r.json()["error"], r.text
    http.post(f"/v2/systemsharedmemory/region/{region}/unregister")
    assert http.get("/v2/health/live").status_code == 200


def test_rest_output_region_too_small(http: httpx.Client, shm_objects: ShmObjects) -> None:
    obj = shm_objects(4096)
    obj.write(0, X.tobytes())
    region = register(http, obj)
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": shm_params(region, 32)}],
        "outputs": [{"name": "y", "parameters": shm_params(region, 16, 64)}],
    }
    r = rest_infer(http, "relu", doc)
    assert r.status_code == 400 and "has 32 bytes" in r.json()["error"], r.text
    doc["outputs"] = [{"name": "y", "parameters": shm_params(region, 32, 4090)}]
    r = rest_infer(http, "relu", doc)
    assert r.status_code == 400 and "past the end of region" in r.json()["error"], r.text
    http.post(f"/v2/systemsharedmemory/region/{region}/unregister")


@pytest.mark.parametrize("how", ["truncated", "unlinked"])
def test_rest_region_that_disappears(http: httpx.Client, shm_objects: ShmObjects, how: str) -> None:
    obj = shm_objects(8192)
    obj.write(0, X.tobytes())
    region = register(http, obj)
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": shm_params(region, 32)}]
    }
    assert rest_infer(http, "relu", doc).status_code == 200
    if how == "truncated":
        os.truncate(obj.path, 16)  # the server's mapping now SIGBUSes past byte 16
    else:
        obj.path.unlink()
    r = rest_infer(http, "relu", doc)
    assert r.status_code == 400 and "is gone" in r.json()["error"], r.text
    assert http.get("/v2/health/live").status_code == 200  # no SIGBUS: still serving
    assert http.post(f"/v2/systemsharedmemory/region/{region}/unregister").status_code == 200


def test_rest_cuda_shared_memory_is_refused_without_cuda(http: httpx.Client) -> None:
    body = {"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64}
    r = http.post(f"/v2/cudasharedmemory/region/{name()}/register", json=body)
    assert r.status_code == 400 and "CUDA shared memory" in r.json()["error"], r.text
    assert http.get("/v2/cudasharedmemory/status").json() == []
    assert http.post("/v2/cudasharedmemory/unregister").status_code == 200
    bad = http.post(
        f"/v2/cudasharedmemory/region/{name()}/register", json={"raw_handle": "x", "byte_size": 1}
    )
    assert bad.status_code == 400 and "raw_handle" in bad.json()["error"]


# ---------------------------------------------------------------- gRPC


def grpc_shm_input(request: pb.ModelInferRequest, region: str, size: int, offset: int = 0) -> None:
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(X.shape))
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = size
    if offset:
        tensor.parameters["shared_memory_offset"].int64_param = offset


async def test_grpc_register_infer_and_mixed_outputs(
    stub: pb_grpc.GRPCInferenceServiceStub, shm_objects: ShmObjects
) -> None:
    obj = shm_objects(4096)
    obj.write(0, X.tobytes())
    region = name()
    await stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name=region, key=obj.key, byte_size=4096)
    )
    status = await stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name=region))
    assert status.regions[region].key == obj.key and status.regions[region].byte_size == 4096
    request = pb.ModelInferRequest(model_name="relu", id="g1")
    grpc_shm_input(request, region, X.nbytes)
    y = request.outputs.add(name="y")
    y.parameters["shared_memory_region"].string_param = region
    y.parameters["shared_memory_byte_size"].int64_param = X.nbytes
    y.parameters["shared_memory_offset"].int64_param = 512
    request.outputs.add(name="grad_x")
    response = await stub.ModelInfer(request)
    assert response.id == "g1" and [o.name for o in response.outputs] == ["y", "grad_x"]
    # One raw entry per output, by position: the one in shared memory is empty.
    assert response.raw_output_contents[0] == b""
    grad = np.frombuffer(response.raw_output_contents[1], np.float32).reshape(X.shape)
    np.testing.assert_array_equal(grad, (X > 0).astype(np.float32))
    np.testing.assert_array_equal(
        np.frombuffer(obj.read(512, X.nbytes), np.float32).reshape(X.shape), np.maximum(X, 0)
    )
    await stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=region))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name=region))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_grpc_raw_entries_belong_to_inputs_not_in_shared_memory(
    stub: pb_grpc.GRPCInferenceServiceStub, shm_objects: ShmObjects
) -> None:
    obj = shm_objects(4096)
    target = np.array([1, 3], np.int64)
    obj.write(128, target.tobytes())
    region = name()
    await stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name=region, key=obj.key, offset=0, byte_size=4096)
    )
    request = pb.ModelInferRequest(model_name="cross_entropy")
    request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    request.raw_input_contents.append(X.tobytes())
    t = request.inputs.add(name="target", datatype="INT64", shape=[2])
    t.parameters["shared_memory_region"].string_param = region
    t.parameters["shared_memory_byte_size"].int64_param = target.nbytes
    t.parameters["shared_memory_offset"].int64_param = 128
    request.outputs.add(name="loss")
    response = await stub.ModelInfer(request)
    import torch

    expected = torch.nn.functional.cross_entropy(torch.from_numpy(X), torch.from_numpy(target))
    assert np.frombuffer(response.raw_output_contents[0], np.float32)[0] == pytest.approx(expected.item())
    request.raw_input_contents.append(b"")  # one entry too many now
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "in shared memory, which take none" in (info.value.details() or "")
    await stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=region))


@pytest.mark.parametrize(
    ("size", "offset", "region", "code", "needle"),
    [
        (32, 4090, None, grpc.StatusCode.INVALID_ARGUMENT, "past the end of region"),
        (32, 2**62, None, grpc.StatusCode.INVALID_ARGUMENT, "past the end of region"),
        (24, 0, None, grpc.StatusCode.INVALID_ARGUMENT, "need 32 bytes"),
        (32, 0, "nope", grpc.StatusCode.NOT_FOUND, "'nope'"),
    ],
)
async def test_grpc_lying_offsets_and_sizes(
    stub: pb_grpc.GRPCInferenceServiceStub,
    shm_objects: ShmObjects,
    size: int,
    offset: int,
    region: str | None,
    code: grpc.StatusCode,
    needle: str,
) -> None:
    obj = shm_objects(4096)
    registered = name()
    await stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name=registered, key=obj.key, byte_size=4096)
    )
    request = pb.ModelInferRequest(model_name="relu")
    grpc_shm_input(request, region or registered, size, offset)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request)
    assert info.value.code() == code and needle in (info.value.details() or "")
    await stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=registered))


async def test_grpc_register_refusals(
    stub: pb_grpc.GRPCInferenceServiceStub, shm_objects: ShmObjects
) -> None:
    obj = shm_objects(64)
    region = name()
    await stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name=region, key=obj.key, byte_size=64)
    )
    cases: list[tuple[Callable[[], Any], grpc.StatusCode]] = [
        (
            lambda: stub.SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(name=region, key=obj.key, byte_size=64)
            ),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (
            lambda: stub.SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(name=name(), key=obj.key, offset=60, byte_size=8)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda: stub.CudaSharedMemoryRegister(
                pb.CudaSharedMemoryRegisterRequest(name=name(), raw_handle=b"\0" * 64, byte_size=64)
            ),
            grpc.StatusCode.UNIMPLEMENTED,
        ),
    ]
    for call, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call()
        assert info.value.code() == code, info.value.details()
    assert not (await stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest())).regions
    await stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest())
    await stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=region))


async def test_one_registry_for_both_transports(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, shm_objects: ShmObjects
) -> None:
    obj = shm_objects(4096)
    obj.write(0, X.tobytes())
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        over_rest = name()
        body = {"key": obj.key, "byte_size": 4096}
        r = await http.post(f"/v2/systemsharedmemory/region/{over_rest}/register", json=body)
        assert r.status_code == 200, r.text
        # Registered over REST, used over gRPC.
        request = pb.ModelInferRequest(model_name="relu")
        grpc_shm_input(request, over_rest, X.nbytes)
        response = await stub.ModelInfer(request)
        np.testing.assert_array_equal(
            np.frombuffer(response.raw_output_contents[0], np.float32), np.maximum(X, 0).ravel()
        )
        status = await stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
        assert status.regions[over_rest].key == obj.key
        # Registered over gRPC, used and unregistered over REST.
        over_grpc = name()
        await stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name=over_grpc, key=obj.key, offset=2048, byte_size=64)
        )
        doc = {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": shm_params(over_rest, 32)}
            ],
            "outputs": [{"name": "y", "parameters": shm_params(over_grpc, 32)}],
        }
        r = await http.post("/v2/models/relu/infer", content=json.dumps(doc))
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(np.frombuffer(obj.read(2048, 32), np.float32), np.maximum(X, 0).ravel())
        for region in (over_rest, over_grpc):
            r = await http.post(f"/v2/systemsharedmemory/region/{region}/unregister")
            assert r.status_code == 200
    status = await stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    assert over_rest not in status.regions and over_grpc not in status.regions


# ---------------------------------------------------------------- turned off


def test_outputs_written_through_the_mapping(
    server_factory: Callable[..., ServerProcess], shm_objects: ShmObjects
) -> None:
    # The trusted-clients setting: the same answer, copied through the server's mapping.
    proc = server_factory("--shared-memory-write-through-mapping", "true")
    obj = shm_objects(4096)
    obj.write(256, X.tobytes())
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        region = register(client, obj)
        doc = {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": shm_params(region, 32, 256)}
            ],
            "outputs": [{"name": "y", "parameters": shm_params(region, 32, 1024)}],
        }
        r = rest_infer(client, "relu", doc)
        assert r.status_code == 200, r.text
    y = np.frombuffer(obj.read(1024, X.nbytes), np.float32).reshape(X.shape)
    np.testing.assert_array_equal(y, np.maximum(X, 0))


def test_shared_memory_turned_off(
    server_factory: Callable[..., ServerProcess], shm_objects: ShmObjects
) -> None:
    proc = server_factory("--no-shared-memory-enabled")
    obj = shm_objects(64)
    with httpx.Client(base_url=proc.url, timeout=30) as client:
        assert "system_shared_memory" not in client.get("/v2").json()["extensions"]
        r = client.post("/v2/systemsharedmemory/region/r/register", json={"key": obj.key, "byte_size": 64})
        assert r.status_code == 400 and "shared_memory_enabled" in r.json()["error"]
        assert client.get("/v2/systemsharedmemory/status").status_code == 400
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": shm_params("r", 8)}]}
        r = rest_infer(client, "relu", doc)
        assert r.status_code == 400 and "shared_memory_enabled" in r.json()["error"]
    with grpc.insecure_channel(proc.grpc_target) as channel:
        sync_stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert "system_shared_memory" not in sync_stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
        with pytest.raises(grpc.RpcError) as info:
            sync_stub.SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(name="r", key=obj.key, byte_size=64)
            )
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
