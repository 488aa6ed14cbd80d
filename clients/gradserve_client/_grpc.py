"""The gRPC clients: ``GrpcClient`` and ``AsyncGrpcClient`` over inference.GRPCInferenceService.

Twins of the HTTP clients, method for method, over the same ``_core`` code: requests
go out as ``ModelInferRequest`` with ``raw_input_contents``; answers come back as the
same ``Outputs``; errors as the same exceptions.

Retries run in the client's loop, as over HTTP, not in the channel's configurable
retry policy (a gRPC service config), which does not serve here: it cannot tell a
queue-full RESOURCE_EXHAUSTED (retry) from a too-large one (never retry), since only the
message differs; it silently skips requests over its per-call retry buffer (256 KiB by
default, so most tensors); it caps attempts at 5; and with grpcio 1.85 its retry of a
refused connection sometimes waits out the whole deadline instead of failing fast.
What the channel does serve is kept: its transparent retries (an RPC that never left
the client) and its reconnect backoff. A call that ends CANCELLED without this client
cancelling it (grpcio does so under a burst of thousands of calls and while a server
drains) is retried like UNAVAILABLE; see ``_core.grpc_error``.

The V2 gRPC service has no catalog rpc, so ``ops()`` reads the HTTP catalog
(GET /v1/ops) at ``catalog_url``; everything else stays on gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from gradserve_client import _core, _tls
from gradserve_client._core import (
    Deadline,
    InferRequest,
    ModelMetadata,
    OpInfo,
    Outputs,
    ParamValue,
    RetryPolicy,
    ServerMetadata,
    TensorLike,
)
from gradserve_client._http import AsyncClient, Client
from gradserve_client._tls import PemPath
from gradserve_client.errors import GradserveError

log = logging.getLogger("gradserve_client")

DEFAULT_TARGET = "localhost:8001"
DEFAULT_TIMEOUT_S = 30.0


class _GrpcCommon:
    """State and pure helpers the sync and async gRPC clients share."""

    def __init__(
        self,
        target: str,
        timeout_s: float,
        retry: RetryPolicy | None,
        catalog_url: str | None,
        metadata: Sequence[tuple[str, str]] | None,
        api_key: str | None,
        tls_files: dict[str, PemPath | None],
    ) -> None:
        Deadline(timeout_s)  # validates
        self.target = target
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.catalog_url = catalog_url
        authorization = _tls.bearer(api_key)
        self._call_metadata = tuple(metadata or ()) + (
            (("authorization", authorization),) if authorization is not None else ()
        )
        # For ops(), which reads the catalog over HTTP with the same key and TLS files.
        self._http_security: dict[str, Any] = {"api_key": api_key, **tls_files}
        self._metadata: dict[str, ModelMetadata] = {}
        self._pb, self._pb_grpc = _core.grpc_modules()
        # Set before the channel is closed: a call that then ends CANCELLED was
        # cancelled by this client, not by the server, and is not retried.
        self._closed = False

    def _channel_options(self, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return [
            # The server enforces its own message limit (and answers RESOURCE_EXHAUSTED
            # past it); a client-side cap would only add a second, different one.
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            *options,
        ]

    def _deadline(self, timeout_s: float | None) -> Deadline:
        return Deadline(self.timeout_s if timeout_s is None else timeout_s)

    def _build(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
    ) -> Any:
        request = InferRequest(
            op, tensors, _core.encode_params(params), None if outputs is None else tuple(outputs)
        )
        return _core.grpc_infer_request(request)

    def _rpc_error(self, exc: grpc.RpcError, deadline: Deadline) -> GradserveError:
        call: Any = exc  # grpc.RpcError raised by a call is also a grpc.Call
        code = call.code()
        trailers = dict(call.trailing_metadata() or ())
        error = _core.grpc_error(
            code.name if code is not None else "UNKNOWN",
            call.details() or "",
            trailers.get(_core.ERROR_CODE_KEY),
            client_closed=self._closed,
            deadline_passed=deadline.remaining_s() <= 0,
        )
        error.request_id = trailers.get(_core.REQUEST_ID_KEY)
        return error

    @staticmethod
    def _secure(
        credentials: grpc.ChannelCredentials | None, tls: bool, tls_files: dict[str, PemPath | None]
    ) -> grpc.ChannelCredentials | None:
        """The channel's credentials: the caller's own, or TLS from the files (or
        grpcio's bundled roots with ``tls=True``); None for a plain-text channel."""
        if credentials is not None:
            return credentials
        if tls or any(path is not None for path in tls_files.values()):
            return _tls.grpc_credentials(**tls_files)
        return None

    def _after_failure(self, error: GradserveError, attempt: int, deadline: Deadline) -> float:
        delay = self.retry.next_delay(error, attempt, deadline.remaining_s())
        if delay is None:
            raise _core.give_up(error, attempt)
        log.info("retry %d/%d in %.3f s after %s", attempt, self.retry.max_retries, delay, error)
        return delay

    def _catalog_url(self) -> str:
        if self.catalog_url is None:
            raise ValueError(
                "the V2 gRPC protocol has no catalog rpc: pass catalog_url='http://host:8000' "
                "to read GET /v1/ops over HTTP, or use model_metadata(op) per op"
            )
        return self.catalog_url


class GrpcClient(_GrpcCommon):
    """Synchronous gRPC client (V2 ``inference.GRPCInferenceService``).

    Args:
        target: the server's gRPC address, ``host:port``.
        timeout_s: default timeout of each call (the gRPC deadline), retries included.
        retry: the retry policy (default: up to 3 retries on overload/unavailability).
        catalog_url: the server's HTTP base URL, used only by ``ops()``.
        credentials: TLS credentials, for full control; the options below cover the
            usual cases. Without any of them the channel is plain text.
        metadata: extra metadata sent with every call.
        api_key: the server's API key, sent as ``authorization: Bearer <key>`` metadata
            (a wrong or missing one raises ``UnauthenticatedError``).
        tls: use TLS, trusting grpcio's bundled roots (implied by the next three).
        ca_cert: PEM file of the CA that signed the server's certificate.
        client_cert, client_key: PEM files of this client's certificate and key, for a
            server that requires mutual TLS.
        options: extra gRPC channel options.
    """

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
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._stub = self._pb_grpc.GRPCInferenceServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._closed = True
        self._channel.close()

    def activation(
        self,
        op: str,
        x: TensorLike,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        """Run an activation op on ``x``; see ``Client.activation``."""
        return self._run(op, _core.activation_inputs(x, inputs), params, None, grad, timeout_s)

    def loss(
        self,
        op: str,
        input: TensorLike | None = None,
        target: TensorLike | None = None,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        """Run a loss op; see ``Client.loss``."""
        return self._run(op, _core.loss_inputs(input, target, inputs), params, None, grad, timeout_s)

    def init(
        self, op: str, shape: Sequence[int], *, timeout_s: float | None = None, **params: ParamValue
    ) -> Outputs:
        """Run a weight-initialization op; see ``Client.init``."""
        return self._run(op, [], {**params, "shape": tuple(shape)}, None, False, timeout_s)

    def activation_stats(self, *, timeout_s: float | None = None, **params: ParamValue) -> Outputs:
        """Run the lab's experiment; see ``Client.activation_stats``."""
        return self._run("activation_stats", [], params, None, False, timeout_s)

    def infer(
        self,
        op: str,
        inputs: Mapping[str, TensorLike] | None = None,
        params: Mapping[str, ParamValue] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        grad: bool = False,
        timeout_s: float | None = None,
    ) -> Outputs:
        """Run any op with named tensors and params; see ``Client.infer``."""
        return self._run(op, _core.encode_inputs(inputs), params or {}, outputs, grad, timeout_s)

    def _run(
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
            outputs = _core.wanted_outputs(self._model_metadata(op, deadline), tensors)
        response = self._call(self._stub.ModelInfer, self._build(op, tensors, params, outputs), deadline)
        return _core.decode_grpc_infer(response)

    def ops(self, *, timeout_s: float | None = None) -> list[OpInfo]:
        """The op catalog, read over HTTP from ``catalog_url`` (gRPC has no catalog rpc)."""
        with Client(
            self._catalog_url(),
            timeout_s=timeout_s or self.timeout_s,
            retry=self.retry,
            **self._http_security,
        ) as http:
            return http.ops()

    def model_metadata(self, op: str, *, timeout_s: float | None = None) -> ModelMetadata:
        """The V2 metadata of one op (ModelMetadata rpc); cached per client."""
        return self._model_metadata(op, self._deadline(timeout_s))

    def _model_metadata(self, op: str, deadline: Deadline) -> ModelMetadata:
        if op not in self._metadata:
            msg = self._call(self._stub.ModelMetadata, self._pb.ModelMetadataRequest(name=op), deadline)
            self._metadata[op] = _core.model_metadata_from_grpc(msg)
        return self._metadata[op]

    def server_metadata(self, *, timeout_s: float | None = None) -> ServerMetadata:
        """The V2 server metadata (ServerMetadata rpc)."""
        msg = self._call(
            self._stub.ServerMetadata, self._pb.ServerMetadataRequest(), self._deadline(timeout_s)
        )
        return ServerMetadata(msg.name, msg.version, tuple(msg.extensions))

    def live(self) -> bool:
        """Whether the server answers ServerLive with live=true. Never raises."""
        return self._health(
            lambda t: (
                self._stub.ServerLive(
                    self._pb.ServerLiveRequest(), timeout=t, metadata=self._call_metadata
                ).live
            )
        )

    def ready(self) -> bool:
        """Whether the server answers ServerReady with ready=true."""
        return self._health(
            lambda t: (
                self._stub.ServerReady(
                    self._pb.ServerReadyRequest(), timeout=t, metadata=self._call_metadata
                ).ready
            )
        )

    def model_ready(self, op: str) -> bool:
        """Whether one op (V2 model) is ready (ModelReady rpc)."""
        return self._health(
            lambda t: (
                self._stub.ModelReady(
                    self._pb.ModelReadyRequest(name=op), timeout=t, metadata=self._call_metadata
                ).ready
            )
        )

    def _health(self, probe: Callable[[float], bool]) -> bool:
        try:
            return bool(probe(self.timeout_s))
        except grpc.RpcError:
            return False

    def _call(self, method: Any, request: Any, deadline: Deadline) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=deadline.check(), metadata=self._call_metadata)
            except grpc.RpcError as exc:
                error = self._rpc_error(exc, deadline)
            time.sleep(self._after_failure(error, attempt, deadline))


class AsyncGrpcClient(_GrpcCommon):
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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel."""
        self._closed = True
        await self._channel.close()

    async def activation(
        self,
        op: str,
        x: TensorLike,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        """Run an activation op on ``x``; see ``Client.activation``."""
        return await self._run(op, _core.activation_inputs(x, inputs), params, None, grad, timeout_s)

    async def loss(
        self,
        op: str,
        input: TensorLike | None = None,
        target: TensorLike | None = None,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        """Run a loss op; see ``Client.loss``."""
        return await self._run(op, _core.loss_inputs(input, target, inputs), params, None, grad, timeout_s)

    async def init(
        self, op: str, shape: Sequence[int], *, timeout_s: float | None = None, **params: ParamValue
    ) -> Outputs:
        """Run a weight-initialization op; see ``Client.init``."""
        return await self._run(op, [], {**params, "shape": tuple(shape)}, None, False, timeout_s)

    async def activation_stats(self, *, timeout_s: float | None = None, **params: ParamValue) -> Outputs:
        """Run the lab's experiment; see ``Client.activation_stats``."""
        return await self._run("activation_stats", [], params, None, False, timeout_s)

    async def infer(
        self,
        op: str,
        inputs: Mapping[str, TensorLike] | None = None,
        params: Mapping[str, ParamValue] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        grad: bool = False,
        timeout_s: float | None = None,
    ) -> Outputs:
        """Run any op with named tensors and params; see ``Client.infer``."""
        return await self._run(op, _core.encode_inputs(inputs), params or {}, outputs, grad, timeout_s)

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
        response = await self._call(
            self._stub.ModelInfer, self._build(op, tensors, params, outputs), deadline
        )
        return _core.decode_grpc_infer(response)

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
        try:
            return bool(
                getattr(await method(request, timeout=self.timeout_s, metadata=self._call_metadata), field)
            )
        except grpc.RpcError:
            return False

    async def _call(self, method: Any, request: Any, deadline: Deadline) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=deadline.check(), metadata=self._call_metadata)
            except grpc.RpcError as exc:
                error = self._rpc_error(exc, deadline)
            await asyncio.sleep(self._after_failure(error, attempt, deadline))
