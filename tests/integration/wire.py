"""Request builders shared by the integration tests: one logical request (op, tensors,
params, grad) sent over native REST, V2 REST (binary tensor data) or gRPC (raw
contents), each answer returned as the exact bytes to compare."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

from gradserve.codecs.dtypes import of_tensor
from gradserve.ops import build_registry
from gradserve.validation import resolve_outputs

REGISTRY = build_registry()


@dataclass
class Case:
    op: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    grad: bool = False

    @property
    def family(self) -> str:
        return REGISTRY.get(self.op).family

    @property
    def outputs(self) -> tuple[str, ...]:
        return resolve_outputs(REGISTRY.get(self.op), self.tensors, None, self.grad)


def native_body(case: Case) -> dict[str, Any]:
    body: dict[str, Any] = {
        name: {"dtype": of_tensor(t).name, "shape": list(t.shape), "b64": base64.b64encode(_raw(t)).decode()}
        for name, t in case.tensors.items()
    }
    body.update(case.params)
    if case.grad:
        body["grad"] = True
    return body


async def send_native(client: httpx.AsyncClient, case: Case) -> tuple[int, bytes]:
    response = await client.post(f"/v1/{case.family}/{case.op}", json=native_body(case))
    return response.status_code, response.content


def _raw(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _v2_params(case: Case) -> dict[str, Any]:
    params = dict(case.params)
    if "shape" in params:
        params["shape"] = ",".join(str(d) for d in params["shape"])
    return params


def v2_request(case: Case) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor-data V2 request: JSON header, then the raw inputs."""
    import orjson

    header = {
        "inputs": [
            {
                "name": name,
                "shape": list(t.shape),
                "datatype": of_tensor(t).v2,
                "parameters": {"binary_data_size": len(_raw(t))},
            }
            for name, t in case.tensors.items()
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in case.outputs],
        "parameters": _v2_params(case),
    }
    head = orjson.dumps(header)
    body = head + b"".join(_raw(t) for t in case.tensors.values())
    return body, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


async def send_v2(client: httpx.AsyncClient, case: Case) -> tuple[int, bytes]:
    body, headers = v2_request(case)
    response = await client.post(f"/v2/models/{case.op}/infer", content=body, headers=headers)
    return response.status_code, response.content


def grpc_request(case: Case) -> Any:
    from gradserve.grpc.generated import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=case.op)
    for name, t in case.tensors.items():
        request.inputs.add(name=name, datatype=of_tensor(t).v2, shape=list(t.shape))
        request.raw_input_contents.append(_raw(t))
    for name in case.outputs:
        request.outputs.add(name=name)
    for key, value in _v2_params(case).items():
        param = request.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)
    return request


async def send_grpc(stub: Any, case: Case) -> tuple[int, bytes]:
    import grpc

    try:
        response = await stub.ModelInfer(grpc_request(case), timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc.code().value[0], (exc.details() or "").encode()
    return 0, response.SerializeToString(deterministic=True)


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics text -> {(sample name, sorted labels): value}, under the names served
    (the parser renames counter samples to <name>_total; gradserve serves Triton's
    names, without the suffix)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total") if family.type == "counter" else sample.name
            out[(name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of a sample over every label set that includes ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return metric_samples(response.text)
