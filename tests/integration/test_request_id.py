"""Request ids and the access log: an id on every answer (HTTP header, gRPC trailer),
taken from the client when safe, and one log line per request with its id, op, status
and timings, never its tensors. In-process; a real process in JSON at the end."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from gradserve.config import Settings
from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc
from gradserve.grpc.server import GrpcServer
from gradserve.logs import JsonFormatter
from gradserve.rest.app import create_app
from gradserve.runtime import Runtime
from tests.conftest import ServerProcess

GENERATED = re.compile(r"[0-9a-f]{32}")
# A value no log line may contain: it is only ever inside a tensor.
SECRET_VALUE = 987654.125


@pytest.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, grpc.aio.Channel]]:
    runtime = Runtime(Settings(grpc_port=0, host="127.0.0.1", device="cpu"))
    app = create_app(runtime)
    await runtime.start(wait_ready=True)
    server = GrpcServer(runtime)
    await server.start()
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield http, channel
    await server.stop(0)
    await runtime.drain()
    runtime.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/activations/relu", {"x": [1.0, -1.0]}, 200),
        (
            "POST",
            "/v2/models/relu/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]},
            200,
        ),
        ("POST", "/v1/activations/no_such_op", {"x": [1.0]}, 404),
        ("POST", "/v1/activations/relu", {"x": "nope"}, 422),
        ("GET", "/v2/models/relu", None, 200),
        ("GET", "/healthz", None, 200),
        ("GET", "/docs", None, 200),
        ("GET", "/no/such/path", None, 404),
        ("DELETE", "/v1/ops", None, 405),
    ],
)
async def test_every_http_answer_carries_the_clients_id(
    served: tuple[httpx.AsyncClient, Any], method: str, path: str, body: Any, status: int
) -> None:
    http, _ = served
    r = await http.request(method, path, json=body, headers={"X-Request-ID": "client-id_1.2:3/4+5=6@7~8"})
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"] == "client-id_1.2:3/4+5=6@7~8"
    r = await http.request(method, path, json=body)
    assert GENERATED.fullmatch(r.headers["x-request-id"])


@pytest.mark.parametrize("given", ["a" * 129, "has space", 'quote"', "semi;colon", "<b>", "é", ""])
async def test_an_unsafe_id_is_replaced(served: tuple[httpx.AsyncClient, Any], given: str) -> None:
    http, _ = served
    r = await http.get("/healthz", headers={"X-Request-ID": given.encode("utf-8")})  # raw bytes, as sent
    assert GENERATED.fullmatch(r.headers["x-request-id"]), r.headers["x-request-id"]


async def test_generated_ids_differ(served: tuple[httpx.AsyncClient, Any]) -> None:
    http, _ = served
    ids = {(await http.get("/healthz")).headers["x-request-id"] for _ in range(50)}
    assert len(ids) == 50


async def test_every_grpc_answer_carries_the_id_in_its_trailers(
    served: tuple[Any, grpc.aio.Channel],
) -> None:
    _, channel = served
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    ok = pb.ModelInferRequest(model_name="relu")
    ok.inputs.add(name="x", datatype="FP32", shape=[2])
    ok.raw_input_contents.append(np.array([1.0, -1.0], np.float32).tobytes())
    call = stub.ModelInfer(ok, metadata=(("x-request-id", "g-1"),))
    await call
    assert dict(await call.trailing_metadata())["x-request-id"] == "g-1"

    call = stub.ModelInfer(ok)
    await call
    assert GENERATED.fullmatch(dict(await call.trailing_metadata())["x-request-id"])

    # Errors keep it beside the error code: a mapped error, and an undecodable message.
    for request_bytes, code, error_code in (
        (
            pb.ModelInferRequest(model_name="nope").SerializeToString(),
            grpc.StatusCode.NOT_FOUND,
            "op_not_found",
        ),
        (b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "malformed_request"),
    ):
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(request_bytes, metadata=(("x-request-id", "g-err"),))
        trailers = dict(info.value.trailing_metadata())
        assert info.value.code() == code
        assert trailers["x-request-id"] == "g-err" and trailers["gradserve-error-code"] == error_code

    # A stream's id comes at its end.
    stream = stub.ModelStreamInfer(iter([ok, ok]), metadata=(("x-request-id", "g-stream"),))
    answers = [a async for a in stream]
    assert len(answers) == 2
    assert dict(await stream.trailing_metadata())["x-request-id"] == "g-stream"


def _access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gradserve.access"]


async def test_one_access_line_per_request_with_its_timings_and_never_its_tensors(
    served: tuple[httpx.AsyncClient, grpc.aio.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    http, channel = served
    caplog.set_level(logging.INFO, logger="gradserve.access")
    await http.post(
        "/v1/activations/relu", json={"x": [SECRET_VALUE, -1.0]}, headers={"X-Request-ID": "log-1"}
    )
    await http.post(
        "/v1/losses/mse", json={"input": [SECRET_VALUE], "target": "x"}, headers={"X-Request-ID": "log-2"}
    )
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="gelu")
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.raw_input_contents.append(np.array([SECRET_VALUE], np.float32).tobytes())
    await stub.ModelInfer(request, metadata=(("x-request-id", "log-3"),))

    records = {r.fields["request_id"]: r for r in _access_records(caplog)}  # type: ignore[attr-defined]
    assert {"log-1", "log-2", "log-3"} <= set(records)
    ok = records["log-1"].fields  # type: ignore[attr-defined]
    assert ok["transport"] == "http" and ok["method"] == "POST" and ok["path"] == "/v1/activations/relu"
    assert ok["op"] == "relu" and ok["status"] == 200 and ok["error"] is None and ok["batch_size"] == 1
    assert 0 <= ok["queue_ms"] <= ok["total_ms"] and 0 <= ok["compute_ms"] <= ok["total_ms"]
    bad = records["log-2"].fields  # type: ignore[attr-defined]
    assert bad["status"] == 422 and bad["queue_ms"] is None and bad["compute_ms"] is None
    rpc = records["log-3"].fields  # type: ignore[attr-defined]
    assert rpc["transport"] == "grpc" and rpc["op"] == "gelu" and rpc["status"] == "OK"
    assert rpc["path"] == "/inference.GRPCInferenceService/ModelInfer" and rpc["compute_ms"] >= 0

    json_formatter = JsonFormatter()
    text_formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for record in records.values():
        as_json = json_formatter.format(record)
        parsed = json.loads(as_json)
        assert parsed["logger"] == "gradserve.access" and parsed["level"] == "INFO"
        assert parsed["request_id"] == record.fields["request_id"]  # type: ignore[attr-defined]
        as_text = text_formatter.format(record)
        assert record.fields["request_id"] in as_text  # type: ignore[attr-defined]
        for line in (as_json, as_text):
            assert "987654" not in line and "\n" not in line


async def test_the_access_log_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(settings=Settings(access_log=False, device="cpu"))
    caplog.set_level(logging.INFO, logger="gradserve.access")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http:
        assert (await http.get("/healthz")).headers["x-request-id"]
    app.state.runtime.close()
    assert _access_records(caplog) == []


async def test_a_forged_line_cannot_be_written_through_the_path(
    served: tuple[httpx.AsyncClient, Any], caplog: pytest.LogCaptureFixture
) -> None:
    http, _ = served
    caplog.set_level(logging.INFO, logger="gradserve.access")
    await http.get("/x%0A2026-01-01 INFO gradserve.access: forged", headers={"X-Request-ID": "forge"})
    (record,) = [r for r in _access_records(caplog) if r.fields["request_id"] == "forge"]  # type: ignore[attr-defined]
    assert "\n" not in record.getMessage() and "\\n" in record.getMessage()


def test_a_real_process_logs_text_access_lines(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory()  # log_format text, the default
    httpx.post(f"{proc.url}/v1/activations/relu", json={"x": [1.0]}, headers={"X-Request-ID": "text-1"})
    proc.stop()
    (line,) = [line for line in proc.log().splitlines() if " text-1 " in line]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO gradserve.access: text-1 http POST ", line), (
        line
    )
    assert " 200 op=relu batch_size=1 queue_ms=" in line and " total_ms=" in line


def test_a_real_process_logs_json_lines_with_the_ids(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory("--log-format", "json")
    r = httpx.post(f"{proc.url}/v1/activations/relu", json={"x": [1.0]}, headers={"X-Request-ID": "proc-1"})
    assert r.headers["x-request-id"] == "proc-1"
    with grpc.insecure_channel(proc.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="relu")
        request.inputs.add(name="x", datatype="FP32", shape=[1])
        request.raw_input_contents.append(np.array([1.0], np.float32).tobytes())
        _, call = stub.ModelInfer.with_call(request, metadata=(("x-request-id", "proc-2"),))
        assert dict(call.trailing_metadata())["x-request-id"] == "proc-2"
    proc.stop()
    lines = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    loggers = {line["logger"] for line in lines}
    assert {"gradserve.access", "gradserve", "uvicorn.error"} <= loggers, loggers  # uvicorn's lines too
    access = {line["request_id"]: line for line in lines if line["logger"] == "gradserve.access"}
    assert access["proc-1"]["op"] == "relu" and access["proc-1"]["status"] == 200
    assert access["proc-2"]["op"] == "relu" and access["proc-2"]["transport"] == "grpc"
    assert access["proc-2"]["compute_ms"] is not None
