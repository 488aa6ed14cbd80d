"""The SDK's streaming mode (``client.stream()``, ``infer_many``) against real
`gradserve serve` processes: the same answers as the unary calls (and torch), many
concurrent calls on one stream each matched to its own answer, a failed call raising
the unary call's exception while the others go on, a server that goes away (pending
calls fail UnavailableError; the same stream serves again once a server is back), a
call's timeout, the API key, and closing. The mapping of a stream answer's
``error_message`` to exceptions is checked without a server, against the unary one."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradserve_client import (
    AsyncGrpcClient,
    GradserveError,
    GrpcClient,
    InferCall,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    RetryPolicy,
    ServerError,
    TimedOutError,
    TooLargeError,
    UnauthenticatedError,
    UnavailableError,
)
from gradserve_client._core import grpc_error, grpc_modules
from gradserve_client._stream_wire import answer_error, stamp, stream_error
from tests import conftest
from tests.clients.conftest import CASES, FAMILY_CASES, Case, assert_same, call_async, call_sync
from tests.conftest import ServerProcess, free_port

KEY = "stream-test-key"
# Busy for a while (~0.1 s on one thread: tests/integration/slow.py).
SLOW = InferCall("orthogonal", params={"shape": "1024,1024"})


def relu_input(i: int) -> np.ndarray:
    """A distinct input per call, so that a misplaced answer cannot go unnoticed."""
    return np.array([i - 250.0, 250.0 - i, i / 7], np.float32)


async def call_stream(stream: object, case: Case) -> object:
    return await call_async(stream, case)  # type: ignore[arg-type]  # the stream has the same methods


# -- the same answers --------------------------------------------------------------------


async def test_every_family_matches_the_unary_call(server: ServerProcess) -> None:
    async with AsyncGrpcClient(server.grpc_target) as client, client.stream() as s:
        streamed = await asyncio.gather(*(call_stream(s, case) for case in CASES))
        for case, got in zip(CASES, streamed, strict=True):
            assert_same(got, await call_async(client, case))  # type: ignore[arg-type]


@FAMILY_CASES
def test_the_sync_stream_matches_the_unary_call(server: ServerProcess, case: Case) -> None:
    with GrpcClient(server.grpc_target) as client, client.stream() as s:
        assert_same(call_sync(s, case), call_sync(client, case))  # type: ignore[arg-type]


async def test_cross_entropy_matches_torch(server: ServerProcess) -> None:
    x = np.random.default_rng(1).standard_normal((8, 10)).astype(np.float32)
    t = np.arange(8, dtype=np.int64) % 10
    async with AsyncGrpcClient(server.grpc_target) as client, client.stream() as s:
        out = await s.loss("cross_entropy", x, t, grad=True)
    xt = torch.from_numpy(x).requires_grad_()
    loss = F.cross_entropy(xt, torch.from_numpy(t))
    loss.backward()
    assert xt.grad is not None
    np.testing.assert_allclose(out["loss"], loss.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["grad_input"], xt.grad.numpy(), rtol=1e-5, atol=1e-7)


# -- concurrency -------------------------------------------------------------------------


async def test_500_concurrent_calls_on_one_stream_each_get_their_answer(server: ServerProcess) -> None:
    async with AsyncGrpcClient(server.grpc_target) as client, client.stream() as s:
        answers = await asyncio.gather(*(s.activation("relu", relu_input(i), grad=True) for i in range(500)))
    for i, out in enumerate(answers):
        x = relu_input(i)
        np.testing.assert_array_equal(out["y"], np.maximum(x, 0))
        np.testing.assert_array_equal(out["grad_x"], (x > 0).astype(np.float32))


def test_sync_submit_keeps_many_calls_in_flight_from_one_thread(server: ServerProcess) -> None:
    with GrpcClient(server.grpc_target) as client, client.stream() as s:
        futures = [s.submit("relu", {"x": relu_input(i)}) for i in range(300)]
        for i, future in enumerate(futures):
            np.testing.assert_array_equal(future.result()["y"], np.maximum(relu_input(i), 0))


async def test_infer_many_answers_in_order(server: ServerProcess) -> None:
    calls = [InferCall("relu", {"x": relu_input(i)}) for i in range(200)]
    async with AsyncGrpcClient(server.grpc_target) as client:
        answers = await client.infer_many(calls, max_in_flight=16)
        with pytest.raises(ValueError, match="max_in_flight"):
            await client.infer_many(calls, max_in_flight=0)
    assert [a["y"].tolist() for a in answers] == [np.maximum(relu_input(i), 0).tolist() for i in range(200)]
    with GrpcClient(server.grpc_target) as sync_client:
        tuples = [("leaky_relu", {"x": relu_input(i)}, {"negative_slope": 0.5}) for i in range(50)]
        got = sync_client.infer_many(tuples, max_in_flight=4)
    want = [np.where(relu_input(i) > 0, relu_input(i), 0.5 * relu_input(i)) for i in range(50)]
    for a, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(a["y"], w)


# -- errors ------------------------------------------------------------------------------

BAD = {
    0: (("nope", {"x": [1.0]}), NotFoundError),
    1: (("relu", {}), InvalidInputError),
    2: (("cross_entropy", {"input": [[1.0, 2.0]], "target": [5]}), InvalidInputError),
    3: (("orthogonal", {}, {"shape": "100000,100000"}), TooLargeError),
}


async def test_a_failed_call_raises_the_unary_exception_and_the_others_go_on(server: ServerProcess) -> None:
    calls = [BAD[i // 10 % 4][0] if i % 10 == 0 else ("relu", {"x": relu_input(i)}) for i in range(400)]
    no_retry = RetryPolicy(max_retries=0)
    async with AsyncGrpcClient(server.grpc_target, retry=no_retry) as client, client.stream() as s:
        answers = await s.infer_many(calls, return_exceptions=True)
        for i, answer in enumerate(answers):
            if i % 10 == 0:
                cls = BAD[i // 10 % 4][1]
                assert isinstance(answer, cls), (i, answer)
                assert answer.request_id and answer.attempts == 1
            else:
                assert not isinstance(answer, GradserveError)
                np.testing.assert_array_equal(answer["y"], np.maximum(relu_input(i), 0))
        # The same calls, unary: the same exceptions.
        for call, cls in BAD.values():
            with pytest.raises(cls) as unary:
                await client.infer(*call)
            with pytest.raises(cls) as streamed:
                await s.infer(*call)
            assert streamed.value.message == unary.value.message
            assert streamed.value.grpc_code == unary.value.grpc_code
        # Without return_exceptions the first failure is raised.
        with pytest.raises(NotFoundError):
            await s.infer_many(calls)


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("queue_full", "queue full (8 requests waiting); retry later", OverloadedError),
        ("request_too_large", "input 'x': over the limit", TooLargeError),
        ("device_out_of_memory", "op 'relu': the device ran out of memory", ServerError),
        ("unavailable", "server is draining; retry on another replica", UnavailableError),
        ("timeout", "op 'relu': request waited 1.000 s in the queue, past its deadline", TimedOutError),
        ("op_not_found", "unknown op 'nope'; GET /v1/ops lists the ops", NotFoundError),
        ("invalid_input", "op 'relu': input 'x' is required", InvalidInputError),
        ("internal", "internal error (request id abc)", ServerError),
    ],
)
def test_stream_errors_map_as_unary_errors(code: str, message: str, expected: type[GradserveError]) -> None:
    # With the server's error code, and from the message alone (a server without it).
    for error in (stream_error(message, code), stream_error(message)):
        assert type(error) is expected
        assert error.message == message
        assert error.retryable == expected.retryable
    unary_status = {OverloadedError: "RESOURCE_EXHAUSTED", TooLargeError: "RESOURCE_EXHAUSTED"}
    if expected in unary_status:
        assert type(grpc_error(unary_status[expected], message, code)) is expected


# -- deadlines, the server going away, keys, closing ------------------------------------


async def test_a_call_past_its_timeout_raises_timed_out_and_the_stream_goes_on(server: ServerProcess) -> None:
    async with AsyncGrpcClient(server.grpc_target) as client, client.stream() as s:
        with pytest.raises(TimedOutError):
            await s.infer("orthogonal", params={"shape": "2048,2048"}, timeout_s=0.001)
        assert (await s.activation("relu", [-1.0, 3.0]))["y"].tolist() == [0.0, 3.0]
    with GrpcClient(server.grpc_target) as sync_client, sync_client.stream(timeout_s=0.001) as sync_stream:
        with pytest.raises(TimedOutError):
            sync_stream.infer("orthogonal", params={"shape": "2048,2048"})
        assert sync_stream.activation("relu", [-1.0], timeout_s=30)["y"].tolist() == [0.0]


async def test_a_server_going_away_fails_pending_calls_and_the_stream_serves_again(
    server_factory: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both servers on the same two ports (start_server asks free_port for HTTP, then gRPC).
    ports = (free_port(), free_port())
    monkeypatch.setattr(conftest, "free_port", itertools.cycle(ports).__next__)
    first = server_factory("--batching", "false", "--max-batches-in-flight", "1")
    async with AsyncGrpcClient(first.grpc_target, timeout_s=60) as client, client.stream() as s:
        assert (await s.activation("relu", [1.0]))["y"].tolist() == [1.0]  # the rpc is up
        pending = [asyncio.ensure_future(s.infer(SLOW.op, params=SLOW.params)) for _ in range(20)]
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)  # some still queued
        first.stop(signal.SIGKILL)
        results = await asyncio.gather(*pending, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed and all(isinstance(r, UnavailableError) for r in failed), failed
        assert all(r.attempts == 6 for r in failed if isinstance(r, UnavailableError))  # 5 retries
        with pytest.raises(UnavailableError):
            await s.activation("relu", [1.0])  # nobody there: refused, retried, given up
        server_factory()  # back on the same ports
        for _ in range(300):  # the channel reconnects on its own backoff schedule
            if await client.ready():
                break
            await asyncio.sleep(0.1)
        assert (await s.activation("relu", [-2.0, 2.0]))["y"].tolist() == [0.0, 2.0]


def test_the_stream_sends_the_api_key(server_factory: Callable[..., ServerProcess]) -> None:
    keyed = server_factory("--api-keys", KEY)
    with GrpcClient(keyed.grpc_target, retry=RetryPolicy(max_retries=0)) as client, client.stream() as s:
        with pytest.raises(UnauthenticatedError) as refused:
            s.activation("relu", [1.0])
        assert refused.value.request_id
        futures = [s.submit("relu", {"x": [1.0]}) for _ in range(5)]
        assert all(isinstance(f.exception(), UnauthenticatedError) for f in futures), [
            repr(f.exception()) for f in futures
        ]
    with GrpcClient(keyed.grpc_target, api_key=KEY) as client, client.stream() as s:
        assert s.activation("relu", [-1.0, 1.0], grad=True)["grad_x"].tolist() == [0.0, 1.0]
        assert len(client.infer_many([("relu", {"x": [1.0]})] * 20)) == 20

    async def keyed_async() -> None:
        async with AsyncGrpcClient(keyed.grpc_target, api_key=KEY) as client, client.stream() as s:
            assert (await s.loss("mse", [1.0, 2.0], [1.0, 0.0]))["loss"].tolist() == pytest.approx(2.0)

    asyncio.run(keyed_async())


async def test_closing_fails_late_calls_with_server_error(server: ServerProcess) -> None:
    async with AsyncGrpcClient(server.grpc_target) as client:
        async with client.stream() as s:
            assert (await s.activation("relu", [1.0]))["y"].tolist() == [1.0]
        with pytest.raises(ServerError, match="is closed"):
            await s.activation("relu", [1.0])
        # Closing with calls in flight (cancel=True, as on an exception) fails them at once.
        s2 = client.stream()
        pending = [asyncio.ensure_future(s2.infer(SLOW.op, params=SLOW.params)) for _ in range(8)]
        await asyncio.sleep(0)  # let them go out
        await s2.aclose(cancel=True)
        for result in await asyncio.gather(*pending, return_exceptions=True):
            assert isinstance(result, ServerError) or "weight" in result  # type: ignore[operator]
    with GrpcClient(server.grpc_target) as sync_client:
        sync_stream = sync_client.stream()
        sync_stream.close()
        with pytest.raises(ServerError, match="is closed"):
            sync_stream.submit("relu", {"x": [1.0]})


def test_the_stream_id_is_stamped_on_bytes_and_on_messages() -> None:
    pb, _ = grpc_modules()
    message = pb.ModelInferRequest(model_name="relu", id="")
    message.raw_input_contents.append(b"\x00" * 300)  # a long field before the id
    for built in (message.SerializeToString(), message):
        parsed = pb.ModelInferRequest.FromString(stamp(built, "123456"))
        assert parsed.id == "123456" and parsed.model_name == "relu"
        assert parsed.raw_input_contents[0] == b"\x00" * 300


async def test_errors_carry_the_streams_request_id(server: ServerProcess) -> None:
    mine = [("x-request-id", "my-stream.7")]
    async with AsyncGrpcClient(server.grpc_target, metadata=mine) as client, client.stream() as s:
        with pytest.raises(NotFoundError) as missing:
            await s.infer("nope")
    assert missing.value.request_id == "my-stream.7"
    async with AsyncGrpcClient(server.grpc_target) as client, client.stream() as s:
        with pytest.raises(NotFoundError) as missing:
            await s.infer("nope")
    assert missing.value.request_id and missing.value.request_id.endswith("-1")  # the stream's first rpc


def test_an_answers_error_code_decides_over_its_message() -> None:
    pb, _ = grpc_modules()
    answer = pb.ModelStreamInferResponse(error_message="something went wrong")
    answer.infer_response.id = "7"
    assert type(answer_error(answer)) is InvalidInputError  # the message alone: a bad request
    answer.infer_response.parameters["gradserve-error-code"].string_param = "queue_full"
    error = answer_error(answer)
    assert type(error) is OverloadedError and error.retryable
    assert answer_error(pb.ModelStreamInferResponse()) is None  # an answer, not an error
