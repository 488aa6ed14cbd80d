"""The sync stream (``InferStream``) and the clients' ``stream()`` / ``infer_many()``.

Flow position: ``GrpcClient.stream()`` -> **InferStream**: the caller's thread encodes
the tensors -> an event loop on a thread of the stream's own -> ``AsyncInferStream``
(``_stream.py``) over a grpc.aio channel to the same target, with the client's
credentials, options and metadata -> a ``concurrent.futures.Future`` per call, resolved
for the caller's thread. ``AsyncGrpcClient.stream()`` builds the ``AsyncInferStream``
over the client's own channel.

A loop thread rather than grpcio's sync ``stream_stream``: matching answers by id,
timeouts, retries and reopening a broken rpc stay one implementation, the async one;
the sync rpc would need all of it again, around a thread and timers. The price is one
more channel (one more connection) per sync stream.

The two mixins keep the clients' streaming methods here, out of ``_grpc_sync.py`` and
``_grpc_async.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar, cast, overload

import grpc
import grpc.aio

from gradserve_client import _core
from gradserve_client._core import Deadline, ModelMetadata, Outputs, ParamValue, TensorLike
from gradserve_client._families import SyncFamilies
from gradserve_client._stream import DEFAULT_MAX_IN_FLIGHT, AsyncInferStream
from gradserve_client._stream_wire import Calls
from gradserve_client.errors import GradserveError, ServerError

if TYPE_CHECKING:
    from gradserve_client._grpc_async import AsyncGrpcClient
    from gradserve_client._grpc_sync import GrpcClient

T = TypeVar("T")


class InferStream(SyncFamilies):
    """Many concurrent calls over one gRPC ModelStreamInfer stream (sync).

    Made by ``GrpcClient.stream()``; use ``with``, or ``close()``. ``submit`` sends a
    call and returns a ``concurrent.futures.Future`` of its ``Outputs`` at once, so one
    thread can keep many calls in flight; ``infer``, ``activation``, ``loss``, ``init``
    and ``activation_stats`` block for their answer, and are safe from many threads.
    Errors, retries and timeouts are those of ``AsyncInferStream``.
    """

    def __init__(self, client: GrpcClient, timeout_s: float | None = None) -> None:
        self._client = client
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gradserve-stream", daemon=True)
        self._thread.start()
        try:
            self._channel, self._stream = self._wait(self._start(timeout_s))
        except BaseException:
            self._stop()
            raise

    async def _start(self, timeout_s: float | None) -> tuple[grpc.aio.Channel, AsyncInferStream]:
        # grpc.aio objects belong to the loop that made them: this one.
        target, credentials, options = self._client._channel_args
        channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=options)
        )

        async def metadata_of(op: str, deadline: Deadline) -> ModelMetadata:
            # The sync client's cached ModelMetadata rpc, off the loop (it blocks).
            return await asyncio.to_thread(self._client._model_metadata, op, deadline)

        return channel, AsyncInferStream(self._client, channel, metadata_of, timeout_s)

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(cancel=exc is not None)

    def close(self, *, cancel: bool = False) -> None:
        """End the stream (see ``AsyncInferStream.aclose``) and its thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wait(self._aclose(cancel))
        finally:
            self._stop()

    async def _aclose(self, cancel: bool) -> None:
        try:
            await self._stream.aclose(cancel=cancel)
        finally:
            await self._channel.close()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # -- the calls --------------------------------------------------------------------

    def submit(
        self,
        op: str,
        inputs: Mapping[str, TensorLike] | None = None,
        params: Mapping[str, ParamValue] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        grad: bool = False,
        timeout_s: float | None = None,
    ) -> concurrent.futures.Future[Outputs]:
        """Send one call (``infer``'s arguments) without waiting: its answer's future."""
        return self._submit(op, _core.encode_inputs(inputs), params or {}, outputs, grad, timeout_s)

    def _submit(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
        grad: bool,
        timeout_s: float | None,
    ) -> concurrent.futures.Future[Outputs]:
        if self._closed:
            raise ServerError("the stream is closed", grpc_code="CANCELLED")
        coro = self._stream.run(op, tensors, params, outputs, grad, timeout_s)
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
        grad: bool,
        timeout_s: float | None,
    ) -> Outputs:
        # SyncFamilies' methods (``infer``, ``loss``...) block for their answer.
        return self._submit(op, tensors, params, outputs, grad, timeout_s).result()

    @overload
    def infer_many(
        self,
        calls: Calls,
        *,
        max_in_flight: int = ...,
        timeout_s: float | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[Outputs]: ...

    @overload
    def infer_many(
        self,
        calls: Calls,
        *,
        max_in_flight: int = ...,
        timeout_s: float | None = ...,
        return_exceptions: Literal[True],
    ) -> list[Outputs | GradserveError]: ...

    def infer_many(
        self,
        calls: Calls,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout_s: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Outputs] | list[Outputs | GradserveError]:
        """Run ``calls`` with at most ``max_in_flight`` at once, answers in order; see
        ``AsyncInferStream.infer_many``."""
        if self._closed:
            raise ServerError("the stream is closed", grpc_code="CANCELLED")
        return self._wait(self._stream._many(calls, max_in_flight, timeout_s, return_exceptions))


class Streaming:
    """``GrpcClient``'s streaming methods."""

    def stream(self, *, timeout_s: float | None = None) -> InferStream:
        """A stream for many small calls: ``with client.stream() as s: s.submit(...)``
        (or blocking calls from many threads). ``timeout_s``: each call's default
        timeout (the client's if None). See ``InferStream``."""
        return InferStream(cast("GrpcClient", self), timeout_s)

    @overload
    def infer_many(
        self,
        calls: Calls,
        *,
        max_in_flight: int = ...,
        timeout_s: float | None = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[Outputs]: ...

    @overload
    def infer_many(
        self,
        calls: Calls,
        *,
        max_in_flight: int = ...,
        timeout_s: float | None = ...,
        return_exceptions: Literal[True],
    ) -> list[Outputs | GradserveError]: ...

    def infer_many(
        self,
        calls: Calls,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout_s: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Outputs] | list[Outputs | GradserveError]:
        """Run ``calls`` over one stream opened for them, answers in order; see
        ``AsyncInferStream.infer_many``."""
        with self.stream() as s:
            return s._wait(s._stream._many(calls, max_in_flight, timeout_s, return_exceptions))


class AsyncStreaming:
    """``AsyncGrpcClient``'s streaming methods."""

    def stream(self, *, timeout_s: float | None = None) -> AsyncInferStream:
        """A stream for many small calls: ``async with client.stream() as s: await
        s.loss(...)``, from many tasks at once. ``timeout_s``: each call's default
        timeout (the client's if None). See ``AsyncInferStream``."""
        client = cast("AsyncGrpcClient", self)
        return AsyncInferStream(client, client._channel, client._model_metadata, timeout_s)

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
        """Run ``calls`` over one stream opened for them, answers in order; see
        ``AsyncInferStream.infer_many``."""
        async with self.stream() as s:
            return await s._many(calls, max_in_flight, timeout_s, return_exceptions)
