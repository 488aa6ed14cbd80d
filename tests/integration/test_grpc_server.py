"""gRPC against a real `gradserve serve` process, with gradserve's own generated stubs:
inference (raw in/out, typed in), metadata, config, health, reflection, error codes,
messages over grpcio's 4 MiB default, clean shutdown, and the stubs themselves (no
drift from proto/, wire-identical to Triton's protos, two copies in one process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc
from tests.conftest import ROOT, ServerProcess

SERVICE = "inference.GRPCInferenceService"
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture
async def channel(server: ServerProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.grpc_target, options=OPTIONS) as ch:
        yield ch


def raw_input(request: pb.ModelInferRequest, name: str, array: np.ndarray, datatype: str) -> None:
    request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
    request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())


def outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "FP16": np.float16}
    assert len(response.raw_output_contents) == len(response.outputs)
    return {
        o.name: np.frombuffer(raw, dtype=dtypes[o.datatype]).reshape(list(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


async def test_health_metadata_and_config(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="relu", version="1"))).ready
    meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "gradserve" and "binary_tensor_data" in meta.extensions
    model = await stub.ModelMetadata(pb.ModelMetadataRequest(name="cross_entropy"))
    assert [t.name for t in model.inputs] == ["input", "target", "weight", "grad_loss"]
    assert [(t.datatype, list(t.shape)) for t in model.inputs[:2]] == [("FP32", [-1, -1]), ("INT64", [-1])]
    config = (await stub.ModelConfig(pb.ModelConfigRequest(name="cross_entropy"))).config
    assert config.max_batch_size == 0 and config.input[1].data_type == pb.TYPE_INT64
    assert [i.optional for i in config.input] == [False, False, True, True]
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_and_describes(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    replies = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto  # grpcurl builds requests from this


async def test_infer_raw_activation_with_gradient(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="leaky_relu", id="r1")
    raw_input(request, "x", np.array([[-2.0, 0.0, 3.0]], np.float32), "FP32")
    request.outputs.add(name="grad_x")
    request.outputs.add(name="y")
    request.parameters["negative_slope"].double_param = 0.5
    request.parameters["triton_enable_empty_final_response"].bool_param = True  # ignored
    response = await stub.ModelInfer(request)
    assert response.id == "r1" and [o.name for o in response.outputs] == ["grad_x", "y"]
    out = outputs(response)
    np.testing.assert_array_equal(out["y"], [[-1.0, 0.0, 3.0]])
    np.testing.assert_array_equal(out["grad_x"], [[0.5, 0.5, 1.0]])


async def test_infer_loss_params_and_typed_contents(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    x = np.array([[3.2, 5.1, -1.7]], np.float32)
    request = pb.ModelInferRequest(model_name="cross_entropy", model_version="1")
    # Typed contents (no raw at all) are accepted on input.
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend(x.ravel())
    request.inputs.add(name="target", datatype="INT64", shape=[1]).contents.int64_contents.append(0)
    request.outputs.add(name="loss")
    request.outputs.add(name="grad_input")
    request.parameters["reduction"].string_param = "sum"
    request.parameters["label_smoothing"].string_param = "0.1"
    out = outputs(await stub.ModelInfer(request))
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(xt, torch.tensor([0]), reduction="sum", label_smoothing=0.1)
    ref.backward()
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-6)
    np.testing.assert_allclose(out["grad_input"], xt.grad.numpy(), rtol=1e-5)


async def test_typed_contents_in_the_wrong_field_are_named(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="relu")
    request.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp64_contents.extend([1.0, 2.0])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP32 data goes in contents.fp32_contents, not fp64_contents" in str(info.value.details())


async def test_infer_init_shape_param_and_input(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    a = pb.ModelInferRequest(model_name="xavier_uniform")
    a.parameters["shape"].string_param = "30,20"
    a.parameters["seed"].int64_param = 11
    b = pb.ModelInferRequest(model_name="xavier_uniform")
    raw_input(b, "shape", np.array([30, 20], np.int64), "INT64")
    b.parameters["seed"].uint64_param = 11
    wa, wb = outputs(await stub.ModelInfer(a)), outputs(await stub.ModelInfer(b))
    assert wa["weight"].shape == (30, 20)
    np.testing.assert_array_equal(wa["weight"], wb["weight"])


async def test_large_messages_both_ways(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    x = np.random.default_rng(0).standard_normal((2048, 1024), dtype=np.float32)  # 8 MiB each way
    request = pb.ModelInferRequest(model_name="relu")
    raw_input(request, "x", x, "FP32")
    out = outputs(await stub.ModelInfer(request))
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))


@pytest.mark.parametrize(
    ("build", "code", "needle"),
    [
        (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda r: setattr(r, "model_version", "7"), grpc.StatusCode.NOT_FOUND, "version"),
        (
            lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 7),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs 12",
        ),
        (lambda r: r.raw_input_contents.append(b""), grpc.StatusCode.INVALID_ARGUMENT, "2 entries for 1"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP33"), grpc.StatusCode.INVALID_ARGUMENT, "FP33"),
        (
            lambda r: setattr(r.inputs[0], "datatype", ""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "'x': has no datatype",
        ),
        (lambda r: setattr(r, "model_name", "relu_"), grpc.StatusCode.NOT_FOUND, "did you mean 'relu'?"),
        (lambda r: r.inputs[0].shape.__setitem__(0, -1), grpc.StatusCode.INVALID_ARGUMENT, "negative"),
        (lambda r: r.outputs.add(name="zz"), grpc.StatusCode.INVALID_ARGUMENT, "zz"),
        (lambda r: setattr(r.inputs[0], "name", "q"), grpc.StatusCode.INVALID_ARGUMENT, "'q'"),
        (lambda r: r.inputs[0].shape.__setitem__(0, 1 << 40), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "bad-size",
        "raw-count",
        "datatype",
        "no-datatype",
        "near-miss-model",
        "neg-dim",
        "output",
        "input",
        "too-large",
    ],
)
async def test_error_codes(
    channel: grpc.aio.Channel,
    build: Callable[[pb.ModelInferRequest], object],
    code: grpc.StatusCode,
    needle: str,
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="relu")
    raw_input(request, "x", np.ones((1, 3), np.float32), "FP32")
    build(request)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request)
    assert info.value.code() == code and needle in (info.value.details() or "")
    # The error's code rides in the trailers, so clients need not parse messages.
    trailers = dict(info.value.trailing_metadata() or ())
    expected = {
        grpc.StatusCode.NOT_FOUND: "op_not_found",
        grpc.StatusCode.RESOURCE_EXHAUSTED: "request_too_large",
    }
    if code in expected:
        assert trailers.get("gradserve-error-code") == expected[code]
    else:
        assert trailers.get("gradserve-error-code") in {"malformed_request", "invalid_input"}
    # The server is still up and answering.
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live


async def test_metadata_errors(channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    for call in (
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")),
        stub.ModelConfig(pb.ModelConfigRequest(name="nope")),
        stub.ModelReady(pb.ModelReadyRequest(name="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


# SIGHUP drains as SIGTERM does (its default action ended the process at once).
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_stops_http_and_grpc(
    server_factory: Callable[..., ServerProcess], sig: signal.Signals
) -> None:
    proc = server_factory()
    with grpc.insecure_channel(proc.grpc_target) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert proc.stop(sig) == 0
    log = proc.log()
    assert "gRPC stopped" in log or "stopped" in log
    with grpc.insecure_channel(proc.grpc_target) as ch, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)


# ---------------------------------------------------------------- the stubs


def test_generated_stubs_match_proto() -> None:
    r = subprocess.run(
        ["bash", "scripts/gen_proto.sh", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_service_and_client_stubs_load_in_one_process() -> None:
    code = (
        "from gradserve.grpc.generated import inference_pb2 as a, inference_pb2_grpc\n"
        "from gradserve_client.generated import inference_pb2 as b, inference_pb2_grpc as bg\n"
        "assert a.ModelInferRequest is b.ModelInferRequest\n"
        "assert bg.GRPCInferenceServiceStub\n"
    )
    env = {"PYTHONPATH": f"{ROOT / 'service'}:{ROOT / 'clients'}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr


_DUMP = """
import json, sys
def dump(files):
    out = {}
    def walk(m):
        out[m.full_name] = {f.name: [f.number, f.type, f.is_repeated,
                                     f.message_type.full_name if f.message_type else None] for f in m.fields}
        for n in m.nested_types:
            walk(n)
    for fd in files:
        for m in fd.message_types_by_name.values():
            walk(m)
        for e in fd.enum_types_by_name.values():
            out[e.full_name] = {v.name: v.number for v in e.values}
        for s in fd.services_by_name.values():
            out[s.full_name] = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in s.methods}
    return out
if sys.argv[1] == "triton":
    from tritonclient.grpc import model_config_pb2, service_pb2
    files = [service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR]
else:
    from gradserve.grpc.generated import inference_pb2
    files = [inference_pb2.DESCRIPTOR]
print(json.dumps(dump(files)))
"""


def test_proto_is_wire_compatible_with_triton() -> None:
    """Every message, field number, type, enum value and rpc of ours is Triton's.
    (Separate processes: both define inference.* in protobuf's default pool.)"""
    env = {"PYTHONPATH": str(ROOT / "service"), "PATH": "/usr/bin:/bin"}

    def dump(which: str) -> dict[str, dict[str, object]]:
        r = subprocess.run(
            [sys.executable, "-c", _DUMP, which],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    ours, triton = dump("ours"), dump("triton")
    for name, fields in ours.items():
        assert name in triton, name
        for field, desc in fields.items():
            assert triton[name].get(field) == desc, (
                f"{name}.{field}: ours {desc}, Triton {triton[name].get(field)}"
            )


def test_regeneration_command_is_documented() -> None:
    assert "scripts/gen_proto.sh" in Path(ROOT / "README.md").read_text()
