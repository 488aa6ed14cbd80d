"""gRPC robustness against a real `gradserve serve` process (issue 8).

- An undecodable message on any method of any service (inference, health Check and
  Watch, both reflection versions) is INVALID_ARGUMENT with the
  ``gradserve-error-code: malformed_request`` trailer and leaves no traceback in the log
  (grpc/guards.py); before, grpcio answered UNKNOWN and logged one.
- Zero-element outputs (an activation and its gradient, a loss's gradient over an
  empty batch, an init) come back as empty raw_output_contents entries, not INTERNAL.
- ModelInfer's hand-framed raw contents: sizes that disagree with shapes and broken
  framing (every truncation of a valid request, lengths past the end, 10-byte
  varints, wrong wire types) are INVALID_ARGUMENT, never UNKNOWN or INTERNAL.
- The concurrency caps: calls over ``grpc_max_concurrent_rpcs`` are refused at once
  with RESOURCE_EXHAUSTED (no hang), and ``grpc_max_concurrent_streams`` holds a
  connection's extra call back until a stream frees, while another connection is served.
Long-lived Health.Watch streams hold the slots, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from gradserve.codecs.v2_grpc import _encode_varint
from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.servicer import ERROR_CODE_KEY
from gradserve_client._core import grpc_error
from gradserve_client.errors import OverloadedError
from tests.conftest import ServerProcess

OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
INFER = "/inference.GRPCInferenceService/ModelInfer"

# Bytes no message type accepts: a truncated tag varint, a length past the end, field
# number 0, a group that never ends, and an 11-byte varint.
GARBAGE = [b"\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x00\x00", b"\x0b", b"\x08" + b"\xff" * 10 + b"\x01"]


def _identity(data: bytes) -> bytes:
    return data


def _all_methods() -> Iterator[tuple[str, bool, bool]]:
    """(path, client streaming, server streaming) of every method the server serves,
    from the descriptors of the services' own files."""
    for file in (pb, health_pb2, reflection_pb2):
        for service in file.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                yield f"/{service.full_name}/{m.name}", m.client_streaming, m.server_streaming


METHODS = list(_all_methods())


@pytest.fixture
async def channel(server: ServerProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.grpc_target, options=OPTIONS) as ch:
        yield ch


async def _raw_call(
    channel: grpc.aio.Channel, path: str, client_stream: bool, server_stream: bool, data: bytes
) -> Any:
    """Send ``data`` as the (first) message of ``path``; return the finished call's
    (code, details, trailers)."""
    kw: dict[str, Any] = {"request_serializer": _identity, "response_deserializer": _identity}
    call: Any
    if client_stream and server_stream:
        call = channel.stream_stream(path, **kw)(iter([data]), timeout=30)
    elif client_stream:
        call = channel.stream_unary(path, **kw)(iter([data]), timeout=30)
    elif server_stream:
        call = channel.unary_stream(path, **kw)(data, timeout=30)
    else:
        call = channel.unary_unary(path, **kw)(data, timeout=30)
    try:
        if server_stream:
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError:
        pass
    return await call.code(), await call.details(), await call.trailing_metadata()


def _error_code(trailers: Any) -> str | None:
    return dict(trailers or ()).get(ERROR_CODE_KEY)


def test_every_service_is_covered() -> None:
    paths = {p for p, _, _ in METHODS}
    assert {INFER, "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"} <= paths
    assert "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" in paths
    # The seven of the first version, ModelStreamInfer and six shared-memory rpcs.
    assert len([p for p in paths if p.startswith("/inference.")]) == 14


@pytest.mark.parametrize(("path", "client_stream", "server_stream"), METHODS, ids=[m[0] for m in METHODS])
async def test_undecodable_message_is_invalid_argument(
    server: ServerProcess, channel: grpc.aio.Channel, path: str, client_stream: bool, server_stream: bool
) -> None:
    log_start = len(server.log())
    for data in GARBAGE:
        code, details, trailers = await _raw_call(channel, path, client_stream, server_stream, data)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, data, code, details)
        assert details.startswith("request message cannot be decoded: "), details
        assert _error_code(trailers) == "malformed_request"
    # The server still serves, and said nothing alarming about the garbage. (The plain
    # call runs on the same event loop after the refusals, so their logging is done.)
    live = pb.ServerLiveRequest().SerializeToString()
    code, _, _ = await _raw_call(channel, "/inference.GRPCInferenceService/ServerLive", False, False, live)
    assert code == grpc.StatusCode.OK
    log = server.log()[log_start:]
    assert "Traceback" not in log and "Unexpected" not in log, log


async def test_undecodable_message_mid_stream_ends_the_stream(channel: grpc.aio.Channel) -> None:
    """A reflection stream whose second message is garbage ends INVALID_ARGUMENT there."""
    good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    call = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=_identity,
        response_deserializer=_identity,
    )(iter([good, b"\xff"]), timeout=30)
    answers = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for answer in call:
            answers.append(answer)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _error_code(await call.trailing_metadata()) == "malformed_request"
    # The first was answered, but grpcio may drop an answer the client had not read
    # when the error status arrives.
    assert len(answers) <= 1


# ---------------------------------------------------------------- zero-element outputs


def _request(model: str, **params: Any) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    for key, value in params.items():
        if isinstance(value, str):
            req.parameters[key].string_param = value
        else:
            req.parameters[key].int64_param = value
    return req


def _add_raw(req: pb.ModelInferRequest, name: str, array: np.ndarray, datatype: str) -> None:
    req.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
    req.raw_input_contents.append(np.ascontiguousarray(array).tobytes())


async def _infer(channel: grpc.aio.Channel, req: pb.ModelInferRequest | bytes) -> pb.ModelInferResponse:
    data = req if isinstance(req, bytes) else req.SerializeToString()
    answer = await channel.unary_unary(INFER, request_serializer=_identity, response_deserializer=_identity)(
        data, timeout=30
    )
    return pb.ModelInferResponse.FromString(answer)


def _outputs(response: pb.ModelInferResponse) -> dict[str, tuple[str, list[int], bytes]]:
    assert len(response.raw_output_contents) == len(response.outputs)
    return {
        o.name: (o.datatype, list(o.shape), raw)
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


async def test_zero_element_activation_and_its_gradient(channel: grpc.aio.Channel) -> None:
    req = _request("relu")
    _add_raw(req, "x", np.zeros((0, 3), np.float32), "FP32")
    req.outputs.add(name="y")
    req.outputs.add(name="grad_x")
    assert _outputs(await _infer(channel, req)) == {
        "y": ("FP32", [0, 3], b""),
        "grad_x": ("FP32", [0, 3], b""),
    }


async def test_zero_element_loss_gradient_over_an_empty_batch(channel: grpc.aio.Channel) -> None:
    req = _request("cross_entropy", reduction="sum")
    _add_raw(req, "input", np.zeros((0, 5), np.float64), "FP64")
    _add_raw(req, "target", np.zeros((0,), np.int64), "INT64")
    req.outputs.add(name="loss")
    req.outputs.add(name="grad_input")
    out = _outputs(await _infer(channel, req))
    assert out["grad_input"] == ("FP64", [0, 5], b"")
    datatype, shape, raw = out["loss"]
    assert (datatype, shape) == ("FP64", []) and np.frombuffer(raw, np.float64).tolist() == [0.0]


async def test_zero_element_init(channel: grpc.aio.Channel) -> None:
    req = _request("uniform", shape="0,5", seed=1)
    assert _outputs(await _infer(channel, req))["weight"] == ("FP32", [0, 5], b"")


# ---------------------------------------------------------------- raw contents that lie


def _relu_request(rows: int = 2) -> pb.ModelInferRequest:
    req = _request("relu")
    _add_raw(req, "x", np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) - 2, "FP32")
    return req


async def _status(channel: grpc.aio.Channel, data: bytes) -> tuple[grpc.StatusCode, str, str | None]:
    code, details, trailers = await _raw_call(channel, INFER, False, False, data)
    return code, details, _error_code(trailers)


@pytest.mark.parametrize("nbytes", [0, 4, 23, 25, 1 << 16])
async def test_raw_contents_whose_size_disagrees_with_the_shape(
    channel: grpc.aio.Channel, nbytes: int
) -> None:
    req = _request("relu")
    req.inputs.add(name="x", datatype="FP32", shape=[2, 3])  # needs 24 bytes
    req.raw_input_contents.append(b"\x01" * nbytes)
    code, details, error_code = await _status(channel, req.SerializeToString())
    # The data disagrees with its own shape: invalid_input, as over REST (422).
    assert (code, error_code) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_input")
    assert "needs 24" in details


async def test_a_misspelled_param_is_invalid_argument_and_an_unknown_one_ignored(
    channel: grpc.aio.Channel,
) -> None:
    typo = _request("hinge", margn=2)
    _add_raw(typo, "input", np.zeros((2, 3), np.float32), "FP32")
    _add_raw(typo, "target", np.zeros(2, np.int64), "INT64")
    code, details, error_code = await _status(channel, typo.SerializeToString())
    assert (code, error_code) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_input"), details
    assert "did you mean 'margin'" in details
    extra = _request("hinge", client_tag="abc")
    _add_raw(extra, "input", np.zeros((2, 3), np.float32), "FP32")
    _add_raw(extra, "target", np.zeros(2, np.int64), "INT64")
    assert _outputs(await _infer(channel, extra))["loss"][0] == "FP32"


async def test_more_or_fewer_raw_entries_than_inputs(channel: grpc.aio.Channel) -> None:
    for extra in ([b""], [b"", b""]):
        req = _relu_request()
        req.raw_input_contents.extend(extra)
        code, details, error_code = await _status(channel, req.SerializeToString())
        assert (code, error_code) == (grpc.StatusCode.INVALID_ARGUMENT, "malformed_request")
        assert "raw_input_contents has" in details


async def test_every_truncation_of_a_valid_request(channel: grpc.aio.Channel) -> None:
    """A prefix may end on a field boundary and be a valid (smaller) request: then any
    documented status will do; what never may happen is UNKNOWN or INTERNAL."""
    data = _relu_request().SerializeToString()
    assert (await _infer(channel, data)).outputs[0].name == "y"
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    seen = set()
    for end in range(len(data)):
        code, details, error_code = await _status(channel, data[:end])
        assert code in allowed, (end, code, details)
        assert code == grpc.StatusCode.OK or error_code is not None, (end, code, details)
        seen.add(code)
    assert grpc.StatusCode.INVALID_ARGUMENT in seen


RAW_TAG = b"\x3a"  # field 7 (raw_input_contents), wire type 2


@pytest.mark.parametrize(
    "tail",
    [
        RAW_TAG + _encode_varint(1 << 62) + b"\x00" * 8,  # a length far past the end
        RAW_TAG + _encode_varint(25) + b"\x00" * 24,  # one byte past the end
        RAW_TAG + b"\xff" * 9 + b"\x7f",  # a 10-byte length varint (2^70 - 1)
        RAW_TAG + b"\xff" * 11,  # a length varint that never ends
        RAW_TAG,  # a tag and nothing else
        b"\x3f",  # wire type 7 does not exist
        b"\x0a" + _encode_varint(1 << 40) + b"relu",  # model_name's length past the end
    ],
)
async def test_broken_framing_is_invalid_argument(channel: grpc.aio.Channel, tail: bytes) -> None:
    req = _request("relu")
    req.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    code, details, error_code = await _status(channel, req.SerializeToString() + tail)
    assert (code, error_code) == (grpc.StatusCode.INVALID_ARGUMENT, "malformed_request"), details


@pytest.mark.parametrize(
    "tail",
    [
        b"\x38\x18",  # field 7 as a varint: the wrong wire type
        b"\x39" + b"\x00" * 8,  # field 7 as fixed64
    ],
)
async def test_raw_contents_of_the_wrong_wire_type_are_no_data(
    channel: grpc.aio.Channel, tail: bytes
) -> None:
    # protobuf keeps a known field of the wrong wire type as an unknown field, so the
    # message parses (as protobuf itself would) with no data for x: a tensor whose data
    # disagrees with its shape.
    req = _request("relu")
    req.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    data = req.SerializeToString() + tail
    parsed = pb.ModelInferRequest.FromString(data)
    assert not parsed.raw_input_contents
    code, details, error_code = await _status(channel, data)
    assert (code, error_code) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_input"), details
    assert "needs 6" in details


# ---------------------------------------------------------------- concurrency limits


async def _watch(channel: grpc.aio.Channel) -> Any:
    """A Health.Watch call that holds its slot until cancelled; returned once served."""
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    # /readyz (what start_server waits for) may turn ready a moment before gRPC
    # health does: Watch then says NOT_SERVING first, and SERVING when it changes.
    while (await call.read()).status != health_pb2.HealthCheckResponse.SERVING:
        pass
    return call


async def test_calls_over_the_rpc_cap_are_refused_at_once(
    server_factory: Callable[..., ServerProcess],
) -> None:
    proc = server_factory("--grpc-max-concurrent-rpcs", "2")
    async with grpc.aio.insecure_channel(proc.grpc_target, options=OPTIONS) as channel:
        watches = [await _watch(channel), await _watch(channel)]
        health = health_pb2_grpc.HealthStub(channel)
        # No deadline: a hang here would be the bug (pytest-timeout ends it).
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Concurrent RPC limit" in (info.value.details() or "")
        # grpcio sends no gradserve trailer here; the SDK still reads it as an overload
        # (retried: nothing was started), not as a request too large.
        error = grpc_error(info.value.code().name, info.value.details() or "", None)
        assert isinstance(error, OverloadedError)
        watches[0].cancel()
        # The freed slot is reusable (grpcio counts a call until its task is done, so
        # a call may still be refused for a moment after the cancel).
        for _ in range(1000):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.01)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watches[1].cancel()


async def test_streams_per_connection_are_capped(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory("--grpc-max-concurrent-streams", "2")
    # Channels with the same target and options share one connection (grpcio's global
    # subchannel pool); a local pool gives each channel its own.
    own_connection = [*OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    async with (
        grpc.aio.insecure_channel(proc.grpc_target, options=own_connection) as full,
        grpc.aio.insecure_channel(proc.grpc_target, options=own_connection) as other,
    ):
        watches = [await _watch(full), await _watch(full)]
        # Both watches were answered, so the server's SETTINGS (with the cap) arrived.
        # A third call on `full` waits for a stream until its deadline (the deadline is
        # the mechanism, not a measurement: without the cap the call would be answered).
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(full).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        held_back = asyncio.ensure_future(
            health_pb2_grpc.HealthStub(full).Check(health_pb2.HealthCheckRequest())
        )
        reply = await health_pb2_grpc.HealthStub(other).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert not held_back.done()  # the third stream of `full` waits for a free one
        watches[0].cancel()
        assert (await held_back).status == health_pb2.HealthCheckResponse.SERVING
        watches[1].cancel()


async def test_calls_ended_by_their_deadline_leave_no_traceback(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """The engine's queue deadline is the call's own: when both pass together, grpc has
    ended the call before the servicer maps the error, and an abort then failed inside
    grpcio with a logged traceback (the soak found 7 in 2,000 such calls)."""
    server = server_factory()
    rng = np.random.default_rng(0)
    req = _relu_request(256)
    req.ClearField("raw_input_contents")
    req.inputs[0].shape[:] = [256, 256]
    req.raw_input_contents.append(rng.standard_normal((256, 256)).astype(np.float32).tobytes())
    codes: dict[grpc.StatusCode, int] = {}
    gate = asyncio.Semaphore(8)
    async with grpc.aio.insecure_channel(server.grpc_target) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def one(i: int) -> None:
            async with gate:
                try:
                    await call(req.SerializeToString(), timeout=0.0005 + 0.0045 * (i % 10) / 9)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(one(i) for i in range(1000)))
    print(f"\nshort deadlines: {codes}")
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
