"""gRPC ModelStreamInfer against a real `gradserve serve` process, with gradserve's own
stubs: answers matched by id, each message its own request (they batch together, so
the stream is not served one at a time), an error per answer that never ends the
stream, the per-stream in-flight bound, and cancellation when the client goes away. A
message that does not decode at all ends the stream INVALID_ARGUMENT, as on any method."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import httpx
import numpy as np
import pytest

from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.integration.slow import SLOW_SIDE, wait_for_metric
from tests.integration.wire import metric_total, scrape

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
# The slow request's answer is a 4 MiB weight: over grpcio's default receive limit.
OPTIONS = [("grpc.max_receive_message_length", -1)]


def relu_request(request_id: str, values: list[float]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="relu", id=request_id)
    x = np.asarray(values, np.float32)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


def slow_request(request_id: str) -> pb.ModelInferRequest:
    """~0.1 s of device time (tests/integration/slow.py): an orthogonal init."""
    request = pb.ModelInferRequest(model_name="orthogonal", id=request_id)
    request.parameters["shape"].string_param = f"{SLOW_SIDE},{SLOW_SIDE}"
    return request


def y_of(response: pb.ModelStreamInferResponse) -> list[float]:
    return np.frombuffer(response.infer_response.raw_output_contents[0], np.float32).tolist()


@pytest.fixture
async def stub(server: ServerProcess) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(server.grpc_target, options=OPTIONS) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


async def test_answers_match_requests_by_id(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    requests = [relu_request(f"r{i}", [i - 50.0, 50.0 - i]) for i in range(100)]
    answers = [a async for a in stub.ModelStreamInfer(iter(requests))]
    assert len(answers) == 100 and not any(a.error_message for a in answers)
    by_id = {a.infer_response.id: a for a in answers}
    for i in range(100):
        assert y_of(by_id[f"r{i}"]) == [max(i - 50.0, 0.0), max(50.0 - i, 0.0)]
        assert by_id[f"r{i}"].infer_response.model_name == "relu"


async def test_an_error_is_one_answer_and_the_stream_goes_on(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    bad_dtype = pb.ModelInferRequest(model_name="relu", id="dtype")
    bad_dtype.inputs.add(name="x", datatype="INT64", shape=[1])
    bad_dtype.raw_input_contents.append(np.zeros(1, np.int64).tobytes())
    short = relu_request("short", [1.0, 2.0])
    short.raw_input_contents[0] = b"\0" * 3
    requests = [
        relu_request("before", [-1.0]),
        pb.ModelInferRequest(model_name="nope", id="model"),
        bad_dtype,
        short,
        relu_request("after", [2.0]),
    ]
    answers = {a.infer_response.id: a async for a in stub.ModelStreamInfer(iter(requests))}
    assert y_of(answers["before"]) == [0.0] and y_of(answers["after"]) == [2.0]
    assert "unknown op 'nope'" in answers["model"].error_message
    assert "int64" in answers["dtype"].error_message
    assert "needs 8" in answers["short"].error_message
    # The error's code rides in the answer's parameters (a stream message has no trailers).
    assert "gradserve-error-code" not in answers["before"].infer_response.parameters
    codes = {i: a.infer_response.parameters["gradserve-error-code"].string_param for i, a in answers.items()}
    assert codes["model"] == "op_not_found" and codes["dtype"] == "invalid_input"
    assert codes["short"] == "invalid_input"  # data that disagrees with its shape (REST: 422)
    assert all(answers[i].infer_response.model_name in ("relu", "nope") for i in answers)


async def test_an_undecodable_message_ends_the_stream_invalid_argument(server: ServerProcess) -> None:
    # Not a request at all (no id to answer, and the client's framing is broken): the
    # stream ends INVALID_ARGUMENT, as any method does (grpc/guards.py).
    async with grpc.aio.insecure_channel(server.grpc_target, options=OPTIONS) as channel:
        call = channel.stream_stream(STREAM)  # raw bytes both ways
        messages = [relu_request("ok", [3.0]).SerializeToString(), b"\xff\xff\xff"]
        stream = call(iter(messages))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot be decoded" in (info.value.details() or "")
    assert dict(info.value.trailing_metadata() or ()).get("gradserve-error-code") == "malformed_request"


@pytest.mark.parametrize("ahead", [1, 4])
async def test_an_undecodable_message_behind_answers_being_written_still_ends_the_stream(
    server: ServerProcess, ahead: int
) -> None:
    # Answers to the messages ahead are being written when the bad one is read: the
    # call's INVALID_ARGUMENT status must still arrive (grpc-core takes one send at a
    # time, so an abort started under a write was lost and the client waited for ever;
    # the deadline turns such a hang into a failure here).
    async with grpc.aio.insecure_channel(server.grpc_target, options=OPTIONS) as channel:
        call = channel.stream_stream(STREAM)
        messages = [relu_request(f"ok{i}", [float(i)]).SerializeToString() for i in range(ahead)]
        for _ in range(50):  # a race: it hung about one stream in 5-60 before the fix
            stream = call(iter([*messages, b"\xff\xff\xff"]), timeout=20)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stream:
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
            assert (
                dict(info.value.trailing_metadata() or ()).get("gradserve-error-code") == "malformed_request"
            )


async def test_an_empty_stream_ends_cleanly(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert [a async for a in stub.ModelStreamInfer(iter([]))] == []


async def _stream_behind_a_slow_request(server: ServerProcess, count: int) -> dict[str, float]:
    """A slow request, then ``count`` small ones on one stream; the relu metrics after."""
    requests = [slow_request("slow")] + [relu_request(f"r{i}", [float(i)]) for i in range(count)]
    async with grpc.aio.insecure_channel(server.grpc_target, options=OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = [a async for a in stub.ModelStreamInfer(iter(requests))]
    assert len(answers) == count + 1 and not any(a.error_message for a in answers)
    async with httpx.AsyncClient(base_url=server.url) as client:
        samples = await scrape(client)
    return {
        "count": metric_total(samples, "nv_inference_count", model="relu"),
        "batches": metric_total(samples, "nv_inference_exec_count", model="relu"),
    }


async def test_messages_run_concurrently_and_batch(server_factory: Callable[..., ServerProcess]) -> None:
    # While the slow request holds the device, the stream's next messages are read and
    # queued at once: they run together in a few batches, not one after another.
    server = server_factory("--max-batches-in-flight", "1")
    relu = await _stream_behind_a_slow_request(server, 60)
    assert relu["count"] == 60 and relu["batches"] <= 10, relu


async def test_in_flight_bound_per_stream(server_factory: Callable[..., ServerProcess]) -> None:
    # At most 4 of the stream's requests at once: no more than 4 small ones are ever
    # queued together, so 60 of them need at least 15 batches.
    server = server_factory("--max-batches-in-flight", "1", "--grpc-stream-max-in-flight", "4")
    relu = await _stream_behind_a_slow_request(server, 60)
    assert relu["count"] == 60 and relu["batches"] >= 15, relu


async def test_client_going_away_drops_the_streams_queued_work(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--batching", "false", "--max-batches-in-flight", "1")
    requests = [slow_request(f"s{i}") for i in range(3)] + [relu_request(f"r{i}", [1.0]) for i in range(5)]
    async with grpc.aio.insecure_channel(server.grpc_target, options=OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(iter(requests))
        first = await call.read()
        assert first.infer_response.id == "s0"
        call.cancel()
    async with httpx.AsyncClient(base_url=server.url) as client:
        await wait_for_metric(
            client, "nv_inference_request_failure", lambda v: v == 5, model="relu", reason="cancelled"
        )
        await wait_for_metric(client, "nv_inference_pending_request_count", lambda v: v == 0)
        samples = await scrape(client)
        assert metric_total(samples, "nv_inference_count", model="relu") == 0
        # The server goes on serving.
        r = await client.post(
            "/v2/models/relu/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        )
        assert r.status_code == 200
    await asyncio.sleep(0)
    assert "Traceback" not in server.log()
