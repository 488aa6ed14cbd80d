"""grpc/guards.py on a real in-process grpc.aio server, for every handler shape grpc.aio
accepts: unary-unary, unary-stream as an async generator and as a coroutine writing
with ``context.write``, stream-unary and stream-stream. An undecodable message ends
the call INVALID_ARGUMENT with the malformed_request trailer; decodable ones reach the
handler unchanged; a handler with a synchronous behaviour is left as it was.
(The real services of gradserve are covered end to end by
tests/integration/test_grpc_robustness.py; gradserve has no stream-unary method.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from gradserve.grpc.guards import DecodeGuard, guard_handler
from gradserve.grpc.servicer import ERROR_CODE_KEY


@dataclass(frozen=True)
class Msg:
    """The decoded message type of the test service (not a str: grpcio would encode
    a str answer itself before calling the serializer)."""

    text: str


def _decode(data: bytes) -> Msg:
    return Msg(data.decode("ascii"))  # UnicodeDecodeError on anything else: "undecodable"


def _encode(message: Msg) -> bytes:
    return message.text.encode()


def _upper(message: Msg) -> Msg:
    return Msg(message.text.upper())


async def _echo(request: Msg, context: Any) -> Msg:
    return _upper(request)


async def _generate(request: Msg, context: Any) -> AsyncIterator[Msg]:
    yield request
    yield _upper(request)


async def _write(request: Msg, context: Any) -> None:
    await context.write(request)
    await context.write(_upper(request))


async def _join(requests: AsyncIterator[Msg], context: Any) -> Msg:
    return Msg("+".join([r.text async for r in requests]))


async def _each(requests: AsyncIterator[Msg], context: Any) -> AsyncIterator[Msg]:
    async for r in requests:
        yield _upper(r)


HANDLERS = {
    "UnaryUnary": grpc.unary_unary_rpc_method_handler(_echo, _decode, _encode),
    "UnaryStreamGen": grpc.unary_stream_rpc_method_handler(_generate, _decode, _encode),
    "UnaryStreamWrite": grpc.unary_stream_rpc_method_handler(_write, _decode, _encode),
    "StreamUnary": grpc.stream_unary_rpc_method_handler(_join, _decode, _encode),
    "StreamStream": grpc.stream_stream_rpc_method_handler(_each, _decode, _encode),
}


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[DecodeGuard()])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", HANDLERS),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


async def _call(channel: grpc.aio.Channel, method: str, messages: list[bytes]) -> tuple[Any, list[bytes]]:
    """(status code, answers) of one call of t.T/<method> with raw ``messages``."""
    path = f"/t.T/{method}"
    answers: list[bytes] = []
    call: Any
    if method.startswith("UnaryUnary"):
        call = channel.unary_unary(path)(messages[0])
    elif method.startswith("UnaryStream"):
        call = channel.unary_stream(path)(messages[0])
    elif method == "StreamUnary":
        call = channel.stream_unary(path)(iter(messages))
    else:
        call = channel.stream_stream(path)(iter(messages))
    try:
        if method in ("UnaryUnary", "StreamUnary"):
            answers.append(await call)
        else:
            answers += [a async for a in call]
    except grpc.aio.AioRpcError:
        pass
    code = await call.code()
    # The server ended the call while this client was still writing its request stream:
    # grpc-core then sometimes reports its own INTERNAL instead of the server's status
    # (seen about once in 20 runs on a loaded machine). Not the server's answer.
    raced = code == grpc.StatusCode.INTERNAL and method.startswith("Stream")
    if raced and await call.details() == "Internal error from Core":
        pytest.skip("grpc-core lost the server's status to a write race (client side)")
    if code != grpc.StatusCode.OK:
        assert (await call.details()).startswith("request message cannot be decoded: ")
        assert dict(await call.trailing_metadata())[ERROR_CODE_KEY] == "malformed_request"
    return code, answers


EXPECTED = {
    "UnaryUnary": [b"AB"],
    "UnaryStreamGen": [b"ab", b"AB"],
    "UnaryStreamWrite": [b"ab", b"AB"],
    "StreamUnary": [b"ab+cd"],
    "StreamStream": [b"AB", b"CD"],
}


@pytest.mark.parametrize("method", list(HANDLERS))
async def test_decodable_messages_pass_through(channel: grpc.aio.Channel, method: str) -> None:
    assert await _call(channel, method, [b"ab", b"cd"]) == (grpc.StatusCode.OK, EXPECTED[method])


@pytest.mark.parametrize("method", list(HANDLERS))
async def test_an_undecodable_message_is_invalid_argument(channel: grpc.aio.Channel, method: str) -> None:
    code, answers = await _call(channel, method, [b"\xff", b"cd"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and answers == []


async def test_a_stream_ends_at_the_undecodable_message(channel: grpc.aio.Channel) -> None:
    code, answers = await _call(channel, "StreamStream", [b"ab", b"\xff", b"cd"])
    # The answer to "ab" was sent before the abort, but grpcio may drop a message the
    # client had not read yet when the error status arrives: either is fine. Never "CD".
    assert code == grpc.StatusCode.INVALID_ARGUMENT and answers in ([], [b"AB"])


def test_sync_behaviours_and_raw_byte_handlers_are_left_alone() -> None:
    sync = grpc.unary_unary_rpc_method_handler(lambda request, context: request, _decode, _encode)
    raw = grpc.unary_unary_rpc_method_handler(_echo)
    assert guard_handler(sync) is sync and guard_handler(raw) is raw
    guarded = guard_handler(HANDLERS["UnaryUnary"])
    assert guarded.request_deserializer is not _decode and guarded.response_serializer is _encode
