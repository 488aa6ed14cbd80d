"""The gRPC server: grpc.aio on the HTTP server's event loop, over the same runtime.

Flow position: ``gradserve serve`` (cli.py) -> **GrpcServer** -> servicer -> engine.
It serves inference.GRPCInferenceService, grpc.health.v1.Health (NOT_SERVING while
warming, SERVING once every op is warm, NOT_SERVING for good from the moment a drain
starts) and server reflection (so grpcurl needs no .proto file). Message size limits
come from settings (large by default: tensors are big, grpcio's 4 MiB default is not),
as do the caps on concurrent streams per connection and concurrent calls in all.
Every method of every service goes through grpc/calls.py first (the key check, the
request id, the span and the access line; docs/security.md), then grpc/guards.py, so
an undecodable message is INVALID_ARGUMENT rather than grpcio's UNKNOWN and a logged
traceback. With ``tls_cert``/``tls_key`` the port serves TLS only (mutual TLS with
``tls_client_ca``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gradserve.codecs import v2_grpc
from gradserve.config import Settings
from gradserve.grpc.calls import CallGate
from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.guards import DecodeGuard
from gradserve.grpc.servicer import InferenceServicer
from gradserve.runtime import Runtime

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register GRPCInferenceService as the generated stubs would, but for the
    (de)serializers of ModelInfer and ModelStreamInfer, which keep the raw tensor
    contents out of protobuf's copies (the stream's answers are framed by the servicer,
    which writes them as bytes)."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            continue
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer,
        request_deserializer=v2_grpc.parse_infer_request,
        response_serializer=v2_grpc.serialize_infer_response,
    )
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer, request_deserializer=v2_grpc.parse_infer_request
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from ``tls_cert``/``tls_key`` (None: plain text); with
    ``tls_client_ca``, clients must present a certificate that CA signed (mutual TLS)."""
    if not settings.tls_cert:
        return None
    with open(settings.tls_key, "rb") as key, open(settings.tls_cert, "rb") as cert:
        pair = (key.read(), cert.read())
    client_ca = None
    if settings.tls_client_ca:
        with open(settings.tls_client_ca, "rb") as ca:
            client_ca = ca.read()
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class _EndedCallFilter(logging.Filter):
    """grpcio logs an ERROR with a traceback when a handler's answer (or abort) meets a
    call that grpc-core already ended: its deadline passed, or the client cancelled,
    between the handler's last check and the send. The client has its status (a soak
    saw a few in 2,000 calls with millisecond deadlines). Kept as one DEBUG line, so the
    log's ERRORs stay the ones someone must read."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "ExecuteBatchError" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info, record.exc_text = None, None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("grpc._cython.cygrpc").addFilter(_EndedCallFilter())


class GrpcServer:
    """Start, mark not serving, and stop the gRPC side of ``gradserve serve``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        limit = settings.grpc_max_message_bytes
        pending = max(settings.grpc_max_concurrent_rpcs, settings.grpc_max_concurrent_streams)
        self.server = grpc.aio.server(
            # The gate first: a call without a valid key is refused before anything
            # decodes its message; then the decode guard (order of the list).
            interceptors=[CallGate(settings, runtime.keys, runtime.tracing), DecodeGuard()],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: grpcio's default is unlimited,
                # so one connection could hold any number of calls open.
                ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
                # Without this, grpcio binds with SO_REUSEPORT: a second server on a
                # taken port would start and silently share it instead of failing.
                ("grpc.so_reuseport", 0),
                # Calls grpc-core has accepted but grpc.aio has not yet picked up
                # (it asks for one call at a time, so a burst waits here). grpc-core's
                # defaults (1,000 soft, 3,000 hard) drop calls at random past the soft
                # limit, RST_STREAM CANCEL, before any handler sees them: a burst of
                # 2,000 calls on one channel lost ~200 of them per run. Soft = hard =
                # the server's own cap, so the queue drops nothing a caller may send.
                ("grpc.server.max_pending_requests", pending),
                ("grpc.server.max_pending_requests_hard_limit", pending),
            ],
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs or None,
        )
        self.health = health.aio.HealthServicer()
        _add_inference_service(InferenceServicer(runtime.engine, runtime.registry, runtime.shm), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.address = f"{settings.host}:{settings.grpc_port}"
        self.port: int | None = None
        self._shutdown: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and start; health turns SERVING when the engine is ready."""
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        credentials = server_credentials(self.runtime.settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(self.address)
        else:
            self.port = self.server.add_secure_port(self.address, credentials)
        if not self.port:  # pragma: no cover - grpcio returns 0 when it cannot bind
            raise RuntimeError(f"gRPC cannot bind {self.address}")
        await self.server.start()
        await self.runtime.engine.when_ready(self._serving)
        log.info("gRPC listening on %s%s", self.address, " (TLS)" if credentials is not None else "")

    async def _serving(self) -> None:
        """Health SERVING: called by the engine just before it turns ready."""
        if self.runtime.engine.draining or self._shutdown is not None:
            return
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def set_not_serving(self) -> None:
        """Health NOT_SERVING from now on (called at SIGTERM, before the drain)."""
        if self._shutdown is None:
            # The aio health servicer's setters are coroutines (they notify watchers).
            self._shutdown = asyncio.ensure_future(self.health.enter_graceful_shutdown())

    async def stop(self, grace_s: float | None) -> None:
        """Stop accepting RPCs; in-flight ones get ``grace_s`` seconds to finish."""
        self.set_not_serving()
        if self._shutdown is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._shutdown
        await self.server.stop(grace_s)
        log.info("gRPC stopped")
