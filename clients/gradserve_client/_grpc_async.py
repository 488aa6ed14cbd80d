"""``AsyncGrpcClient``: the asynchronous twin of ``GrpcClient``, over ``grpc.aio``.

Flow position: an awaited client method (``_families.py``) -> ``_core`` tensors ->
**AsyncGrpcClient._run** -> **_call** (the retry loop: ``asyncio.sleep`` between
attempts, within one ``Deadline``) -> ModelInfer bytes in and out (``_grpc_wire``) ->
``Outputs``. The shared steps are ``_grpc_common``'s; the streaming methods
(``stream``, ``infer_many``) are ``_stream_sync.AsyncStreaming``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from gradserve_client import _core, _grpc_wire
from gradserve_client._core import (
    Deadline,
    ModelMetadata,
    OpInfo,
    Outputs,
    ParamValue,
    RetryPolicy,
    ServerMetadata,
)
from gradserve_client._families import AsyncFamilies
from gradserve_client._grpc_common import DEFAULT_TARGET, DEFAULT_TIMEOUT_S, _GrpcCommon, closed_error
from gradserve_client._http import AsyncClient
from gradserve_client._stream_sync import AsyncStreaming
from gradserve_client._tls import PemPath


class AsyncGrpcClient(_GrpcCommon, AsyncStreaming, AsyncFamilies):
    """Asynchronous twin of ``GrpcClient`` (grpc.aio): the same constructor and methods,
    awaited. Use ``async with``, or ``await aclose()``. Create it inside the event loop
    that will use it."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        catalog_url: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
        options: Sequence[tuple[str, Any]] = (),
        api_key: str | None = None,
        tls: bool = False,
        ca_cert: PemPath | None = None,
        client_cert: PemPath | None = None,
        client_key: PemPath | None = None,
    ) -> None:
        files = {"ca_cert": ca_cert, "client_cert": client_cert, "client_key": client_key}
        super().__init__(target, timeout_s, retry, catalog_url, metadata, api_key, files)
        credentials = self._secure(credentials, tls, files)
        opts = self._channel_options(options)
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self._stub = self._pb_grpc.GRPCInferenceServiceStub(self._channel)
        # ModelInfer with no serializers: the request goes out as _grpc_wire built it and
        # the answer comes back as bytes, its raw contents read in place (_grpc_wire.py).
        self._model_infer = self._channel.unary_unary(_grpc_wire.MODEL_INFER)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel. A call in flight then raises ``ServerError`` (CANCELLED),
        and so does every later call; ``live()`` and ``ready()`` return False."""
        self._closed = True
        await self._channel.close()

    async def _run(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
        grad: bool,
        timeout_s: float | None,
    ) -> Outputs:
        deadline = self._deadline(timeout_s)
        if outputs is None and grad:
            outputs = _core.wanted_outputs(await self._model_metadata(op, deadline), tensors)
        response = await self._call(self._model_infer, self._build(op, tensors, params, outputs), deadline)
        return _grpc_wire.decode_infer_response(response)

    async def ops(self, *, timeout_s: float | None = None) -> list[OpInfo]:
        """The op catalog, read over HTTP from ``catalog_url`` (gRPC has no catalog rpc)."""
        async with AsyncClient(
            self._catalog_url(),
            timeout_s=timeout_s or self.timeout_s,
            retry=self.retry,
            **self._http_security,
        ) as http:
            return await http.ops()

    async def model_metadata(self, op: str, *, timeout_s: float | None = None) -> ModelMetadata:
        """The V2 metadata of one op (ModelMetadata rpc); cached per client."""
        return await self._model_metadata(op, self._deadline(timeout_s))

    async def _model_metadata(self, op: str, deadline: Deadline) -> ModelMetadata:
        if op not in self._metadata:
            msg = await self._call(self._stub.ModelMetadata, self._pb.ModelMetadataRequest(name=op), deadline)
            self._metadata[op] = _core.model_metadata_from_grpc(msg)
        return self._metadata[op]

    async def server_metadata(self, *, timeout_s: float | None = None) -> ServerMetadata:
        """The V2 server metadata (ServerMetadata rpc)."""
        msg = await self._call(
            self._stub.ServerMetadata, self._pb.ServerMetadataRequest(), self._deadline(timeout_s)
        )
        return ServerMetadata(msg.name, msg.version, tuple(msg.extensions))

    async def live(self) -> bool:
        """Whether the server answers ServerLive with live=true. Never raises."""
        return await self._health(self._stub.ServerLive, self._pb.ServerLiveRequest(), "live")

    async def ready(self) -> bool:
        """Whether the server answers ServerReady with ready=true."""
        return await self._health(self._stub.ServerReady, self._pb.ServerReadyRequest(), "ready")

    async def model_ready(self, op: str) -> bool:
        """Whether one op (V2 model) is ready (ModelReady rpc)."""
        return await self._health(self._stub.ModelReady, self._pb.ModelReadyRequest(name=op), "ready")

    async def _health(self, method: Any, request: Any, field: str) -> bool:
        if self._closed:
            return False
        try:
            return bool(
                getattr(await method(request, timeout=self.timeout_s, metadata=self._call_metadata), field)
            )
        except grpc.RpcError:
            return False
        except (asyncio.CancelledError, grpc.aio.UsageError):
            if self._closed_under_call():
                return False
            raise

    async def _call(self, method: Any, request: Any, deadline: Deadline) -> Any:
        attempt = 0
        while True:
            attempt += 1
            if self._closed:
                raise closed_error(attempt)
            try:
                return await method(request, timeout=deadline.check(), metadata=self._call_metadata)
            except grpc.RpcError as exc:
                error = self._rpc_error(exc, deadline)
            except (asyncio.CancelledError, grpc.aio.UsageError):
                if self._closed_under_call():
                    raise closed_error(attempt) from None
                raise
            await asyncio.sleep(self._after_failure(error, attempt, deadline))

    def _closed_under_call(self) -> bool:
        """Whether a call that ended in CancelledError (or grpc.aio's UsageError) ended so
        because this client was closed: grpc.aio cancels the calls of a channel it closes,
        and refuses new ones. A CancelledError of the caller's own task (``task.cancel()``,
        ``asyncio.timeout``) is the caller's, and propagates."""
        task = asyncio.current_task()
        return self._closed and (task is None or not task.cancelling())
