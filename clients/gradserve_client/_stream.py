"""Streaming mode of the gRPC clients: many small calls over one ModelStreamInfer call.

Flow position: ``AsyncGrpcClient.stream()`` (``_grpc.py``) -> **AsyncInferStream** ->
the client's own request builder (``_build``: the bytes of a unary ModelInfer) with an
``id`` stamped on -> a queue -> grpc.aio's writer task -> the bidirectional call -> the
reader task matches each answer to its waiting call by ``id`` -> ``_core`` decodes it
(or maps its ``error_message`` to the exception the unary call would raise).
``GrpcClient.stream()`` gives the sync twin (``_stream_sync.py``), which runs this same
code on an event loop of its own thread.

One ``_Call`` is one ModelStreamInfer rpc. When it ends (the server drains, the
connection drops) every call still waiting on it fails with the mapped status, and the
next attempt opens a fresh rpc: a stream outlives its rpcs. Retries follow the
client's ``RetryPolicy`` as unary calls do (overload, unavailability, a CANCELLED the
client did not cause), including the calls of an rpc that broke under them, which may
have run on the server: they are resent anyway, because every gradserve op is a pure
function (a resend costs compute, never changes an answer).

Writes go through grpc.aio's request-iterator task, never from the callers' tasks: a
caller's timeout cancels its task, and a cancelled ``write`` can leave the rpc's send
half-done. Each call's timeout also travels as the V2 ``timeout`` parameter, so the
server drops a request that waited past it in its queue, as it does for a unary
call's gRPC deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, overload

import grpc
import grpc.aio

from gradserve_client import _core
from gradserve_client._core import Deadline, ModelMetadata, Outputs, ParamValue
from gradserve_client._families import AsyncFamilies
from gradserve_client._stream_wire import Calls, answer_error, as_call, stamp, status_lost
from gradserve_client.errors import GradserveError, ServerError, TimedOutError, UnavailableError

if TYPE_CHECKING:
    from gradserve_client._grpc_common import _GrpcCommon

log = logging.getLogger("gradserve_client")

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
#: infer_many's default: enough to keep the server's batcher fed, few enough that a
#: call's time in the client's own queue stays short next to its timeout.
DEFAULT_MAX_IN_FLIGHT = 64


class _Call:
    """One ModelStreamInfer rpc: its writer queue, the calls awaiting an answer, and
    the reader task that answers them (and fails them all when the rpc ends)."""

    def __init__(self, method: Any, metadata: tuple[tuple[str, str], ...], request_id: str) -> None:
        self.queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.request_id = request_id
        self.metadata = metadata
        self.rpc = method(self._requests(), metadata=metadata)
        self.ended = False
        self.reader: asyncio.Task[None] | None = None

    async def _requests(self) -> AsyncIterator[bytes]:
        # None half-closes; a call that gave up before its turn is not sent.
        while (item := await self.queue.get()) is not None:
            if item[0] in self.pending:
                yield item[1]


class AsyncInferStream(AsyncFamilies):
    """Many concurrent calls over one gRPC ModelStreamInfer stream (async).

    Made by ``AsyncGrpcClient.stream()``; use ``async with``. ``infer``, ``activation``,
    ``loss``, ``init`` and ``activation_stats`` are those of the client, and may be
    awaited from many tasks at once: each answer is matched to its call by id, and a
    failed call raises the exception the unary call would. ``infer_many`` runs a list
    of calls with at most ``max_in_flight`` at once and returns the answers in order.
    """

    def __init__(
        self,
        client: _GrpcCommon,
        channel: grpc.aio.Channel,
        metadata_of: Callable[[str, Deadline], Awaitable[ModelMetadata]],
        timeout_s: float | None = None,
    ) -> None:
        self._client = client
        self._timeout_s = client.timeout_s if timeout_s is None else timeout_s
        Deadline(self._timeout_s)  # validates
        self._metadata_of = metadata_of
        self._method = channel.stream_stream(
            METHOD,
            request_serializer=None,  # bytes, built and stamped here
            response_deserializer=client._pb.ModelStreamInferResponse.FromString,
        )
        self._given_id = dict(client._call_metadata).get(_core.REQUEST_ID_KEY)
        self._id_base = uuid.uuid4().hex[:12]
        self._call: _Call | None = None
        self._calls_opened = 0
        self._ids = itertools.count()
        self._closing = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose(cancel=exc is not None)

    async def aclose(self, *, cancel: bool = False) -> None:
        """End the stream: answers still due are awaited (up to the stream's timeout),
        unless ``cancel``, which fails them with ``ServerError`` at once."""
        self._closing = True
        call, self._call = self._call, None
        if call is None or call.reader is None:
            return
        if not cancel:
            call.queue.put_nowait(None)  # half-close: the server answers, then ends
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(call.reader), self._timeout_s)
        call.rpc.cancel()
        await call.reader

    # -- the calls --------------------------------------------------------------------

    @overload
    async def infer_many(
        self,
        calls: Calls,
        *,
        max_in_flight: int = ...,
        timeout_s: float | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[Outputs]: ...

    @overload
    async def infer_many(
        self,
        calls: Calls,
        *,
        max_in_flight: int = ...,
        timeout_s: float | None = ...,
        return_exceptions: Literal[True],
    ) -> list[Outputs | GradserveError]: ...

    async def infer_many(
        self,
        calls: Calls,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout_s: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Outputs] | list[Outputs | GradserveError]:
        """Run ``calls`` (``InferCall``s or ``(op, inputs[, params])`` tuples), at most
        ``max_in_flight`` at once; the answers come back in the calls' order. The first
        failure is raised (the calls not yet started are not), unless
        ``return_exceptions``, which puts each call's exception in its place instead.
        ``timeout_s`` applies to each call from the moment it starts."""
        return await self._many(calls, max_in_flight, timeout_s, return_exceptions)

    async def _many(
        self,
        calls: Calls,
        max_in_flight: int,
        timeout_s: float | None,
        return_exceptions: bool,
    ) -> list[Any]:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        todo = [as_call(c) for c in calls]
        results: list[Any] = [None] * len(todo)
        queue = iter(enumerate(todo))  # shared: each worker takes the next call

        async def worker() -> None:
            for i, c in queue:
                try:
                    results[i] = await self.infer(
                        c.op, c.inputs, c.params, c.outputs, grad=c.grad, timeout_s=timeout_s
                    )
                except GradserveError as exc:
                    if not return_exceptions:
                        raise
                    results[i] = exc

        workers = [asyncio.ensure_future(worker()) for _ in range(min(max_in_flight, len(todo)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return results

    # -- one call, its attempts -------------------------------------------------------

    async def run(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
        grad: bool,
        timeout_s: float | None,
    ) -> Outputs:
        """One call, encoded tensors in: its attempts within one deadline."""
        deadline = Deadline(self._timeout_s if timeout_s is None else timeout_s)
        if outputs is None and grad:
            outputs = _core.wanted_outputs(await self._metadata_of(op, deadline), tensors)
        if "timeout" not in params:  # the server's queue deadline, in microseconds
            params = {**params, "timeout": max(1, int(deadline.check() * 1e6))}
        built = self._client._build(op, tensors, params, outputs)
        attempt = 0
        while True:
            attempt += 1
            try:
                return _core.decode_grpc_infer(await self._attempt(built, deadline))
            except GradserveError as error:
                delay = self._client.retry.next_delay(error, attempt, deadline.remaining_s())
                if delay is None:
                    raise _core.give_up(error, attempt) from None
                retries = self._client.retry.max_retries
                log.info("stream retry %d/%d in %.3f s after %s", attempt, retries, delay, error)
            await asyncio.sleep(delay)

    _run = run  # what AsyncFamilies' methods (``infer``, ``loss``...) call

    async def _attempt(self, built: Any, deadline: Deadline) -> Any:
        left = deadline.check()
        call = self._open()
        request_id = str(next(self._ids))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call.pending[request_id] = future
        call.queue.put_nowait((request_id, stamp(built, request_id)))
        try:
            async with asyncio.timeout(left):
                return await future
        except GradserveError:
            raise
        except TimeoutError:
            raise TimedOutError(f"call timed out after {deadline.timeout_s} s") from None
        finally:
            call.pending.pop(request_id, None)

    def _open(self) -> _Call:
        """The live rpc, or a fresh one if the last has ended (or none was opened)."""
        if self._closing or self._client._closed:
            raise ServerError("the stream (or its client) is closed", grpc_code="CANCELLED")
        call = self._call
        if call is None or call.ended:
            self._calls_opened += 1
            metadata = tuple(self._client._call_metadata)
            # The server takes the rpc's id from the client: each rpc gets its own
            # (unless the caller set one), and its errors carry it.
            request_id = self._given_id or f"{self._id_base}-{self._calls_opened}"
            if self._given_id is None:
                metadata += ((_core.REQUEST_ID_KEY, request_id),)
            call = self._call = _Call(self._method, metadata, request_id)
            call.reader = asyncio.ensure_future(self._read(call))
        return call

    async def _read(self, call: _Call) -> None:
        """Answer each waiting call by id; when the rpc ends, fail those still waiting."""
        make_error: Callable[[], GradserveError]
        make_error = functools.partial(UnavailableError, "the stream ended before answering")
        lost = False
        try:
            async for answer in call.rpc:
                self._dispatch(call, answer)
        except grpc.RpcError as exc:
            make_error = functools.partial(self._ended_error, exc, call)
            lost = status_lost(exc)
        except asyncio.CancelledError:  # this client cancelled the rpc (aclose)
            make_error = functools.partial(ServerError, "the stream was closed", grpc_code="CANCELLED")
        finally:
            call.ended = True
            call.queue.put_nowait(None)  # ends the request iterator, if it still waits
        if lost:
            make_error = await self._probe(call)
        for future in call.pending.values():
            if not future.done():
                future.set_exception(make_error())  # one exception per call: each has its attempts
        call.pending.clear()

    async def _probe(self, call: _Call) -> Callable[[], GradserveError]:
        """The status grpc.aio lost (``status_lost``), asked again of an rpc that writes
        nothing, so that no write can race its end: the server's refusal of this client
        (UNAUTHENTICATED, say) comes back as such. An rpc the server accepts ends OK at
        once; then the lost one broke under a write, and its calls are retried."""

        async def nothing() -> AsyncIterator[bytes]:
            return
            yield  # an async generator that yields nothing

        try:
            probe = self._method(nothing(), metadata=call.metadata, timeout=self._timeout_s)
            async for _ in probe:
                pass
        except grpc.RpcError as exc:
            return functools.partial(self._ended_error, exc, call)
        except (asyncio.CancelledError, grpc.aio.UsageError):
            # The client's channel closed under the probe (grpc.aio cancels its calls).
            if not (self._closing or self._client._closed):
                raise
            return functools.partial(ServerError, "the stream was closed", grpc_code="CANCELLED")
        return functools.partial(UnavailableError, "the stream broke while a request was being sent")

    def _dispatch(self, call: _Call, answer: Any) -> None:
        response = answer.infer_response
        future = call.pending.pop(response.id, None)
        if future is None or future.done():
            return  # a call that gave up (its timeout): nobody waits for this answer
        error = answer_error(answer)
        if error is None:
            future.set_result(response)
        else:
            error.request_id = call.request_id
            future.set_exception(error)

    def _ended_error(self, exc: grpc.RpcError, call: _Call) -> GradserveError:
        rpc: Any = exc  # an AioRpcError: code(), details(), trailing_metadata()
        trailers = dict(rpc.trailing_metadata() or ())
        error = _core.grpc_error(
            rpc.code().name,
            rpc.details() or "",
            trailers.get(_core.ERROR_CODE_KEY),
            client_closed=self._closing or self._client._closed,
        )
        error.request_id = trailers.get(_core.REQUEST_ID_KEY, call.request_id)
        return error
