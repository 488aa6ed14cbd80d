"""``GrpcClient``: the synchronous gRPC client, blocking calls on a ``grpc`` channel.

Flow position: a client method (``_families.py``) -> ``_core`` tensors ->
**GrpcClient._run** (the ``grad=True`` outputs from cached metadata) -> **_call** (the
retry loop: ``time.sleep`` between attempts, within one ``Deadline``) -> ModelInfer
bytes in and out (``_grpc_wire``) -> ``Outputs``. The shared steps are ``_grpc_common``'s; the
streaming methods (``stream``, ``infer_many``) are ``_stream_sync.Streaming``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc

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
from gradserve_client._families import SyncFamilies
from gradserve_client._grpc_common import DEFAULT_TARGET, DEFAULT_TIMEOUT_S, _GrpcCommon, closed_error
from gradserve_client._http import Client
from gradserve_client._stream_sync import Streaming
from gradserve_client._tls import PemPath


class GrpcClient(_GrpcCommon, Streaming, SyncFamilies):
    """Synchronous gRPC client (V2 ``inference.GRPCInferenceService``).

    Args:
        target: the server's gRPC address, ``host:port``.
        timeout_s: default timeout of each call (the gRPC deadline), retries included.
        retry: the retry policy (default: up to 5 retries on overload/unavailability).
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
        # For stream(): its grpc.aio channel, made on the stream's own loop (_stream_sync.py).
        self._channel_args = (target, credentials, opts)
        self._channel = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._stub = self._pb_grpc.GRPCInferenceServiceStub(self._channel)
        # ModelInfer with no serializers: the request goes out as _grpc_wire built it and
        # the answer comes back as bytes, its raw contents read in place (_grpc_wire.py).
        self._model_infer = self._channel.unary_unary(_grpc_wire.MODEL_INFER)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel. A call in flight then raises ``ServerError`` (CANCELLED),
        and so does every later call; ``live()`` and ``ready()`` return False."""
        self._closed = True
        self._channel.close()

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
        response = self._call(self._model_infer, self._build(op, tensors, params, outputs), deadline)
        return _grpc_wire.decode_infer_response(response)

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
        if self._closed:
            return False
        try:
            return bool(probe(self.timeout_s))
        except grpc.RpcError:
            return False
        except ValueError:  # "Cannot invoke RPC on closed channel!": closed meanwhile
            if self._closed:
                return False
            raise

    def _call(self, method: Any, request: Any, deadline: Deadline) -> Any:
        attempt = 0
        while True:
            attempt += 1
            if self._closed:
                raise closed_error(attempt)
            try:
                return method(request, timeout=deadline.check(), metadata=self._call_metadata)
            except grpc.RpcError as exc:
                error = self._rpc_error(exc, deadline)
            except ValueError:  # "Cannot invoke RPC on closed channel!": closed meanwhile
                if self._closed:
                    raise closed_error(attempt) from None
                raise
            time.sleep(self._after_failure(error, attempt, deadline))
