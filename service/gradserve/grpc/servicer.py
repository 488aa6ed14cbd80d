"""inference.GRPCInferenceService: the thin gRPC layer over the engine.

Flow position: grpc.aio server -> **servicer** -> codecs/v2 (decode raw contents) ->
engine -> codecs/v2 (encode raw_output_contents). Errors take ONE path: a
``GradservError`` aborts with its ``grpc_code`` from errors.py (the same table that
gives REST its statuses); anything unexpected aborts INTERNAL with a generic message
and a request id that is logged with the traceback. Cancellation is not an error: the
CancelledError of a cancelled RPC propagates into the engine, so the batcher drops
the request if it is still queued.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from gradserve import __version__
from gradserve.codecs import v2, v2_grpc, v2_models
from gradserve.engine import Engine
from gradserve.errors import GradservError
from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc
from gradserve.ops.registry import OpSpec, Registry

log = logging.getLogger(__name__)

# Trailing-metadata key carrying the error's code (errors.py: queue_full, request_too_large, ...).
ERROR_CODE_KEY = "gradserve-error-code"

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


def mapped_errors(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """The one place where exceptions become gRPC statuses."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            return await method(self, request, context)
        except GradservError as exc:
            code, message, error_code = exc.grpc_code, exc.message, exc.kind.code
        except asyncio.CancelledError:
            raise  # the client went away: let the engine and batcher see it
        except Exception:
            request_id = uuid.uuid4().hex[:12]
            log.exception("gRPC request %s (%s) failed", request_id, method.__name__)
            code, message = grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
            error_code = "internal"
        # RESOURCE_EXHAUSTED covers both a full queue (retry) and a request over a limit
        # (do not): the error code in the trailers tells clients which, no message parsing.
        # abort() raises; it is outside the try so its exception is not remapped.
        await context.abort(code, message, trailing_metadata=((ERROR_CODE_KEY, error_code),))
        raise AssertionError("unreachable")  # pragma: no cover - abort always raises

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """ServerLive/Ready, ModelReady, Server/ModelMetadata, ModelConfig, ModelInfer."""

    def __init__(self, engine: Engine, registry: Registry) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = engine.settings

    def _model(self, name: str, version: str) -> OpSpec:
        spec = self.registry.get(name)
        v2_models.check_version(spec, version)
        return spec

    def _serving(self) -> bool:
        return self.engine.ready and not self.engine.draining

    @mapped_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @mapped_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._serving())

    @mapped_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        self._model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self._serving())

    @mapped_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        meta = v2_models.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=__version__, extensions=meta["extensions"]
        )

    @mapped_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        spec = self._model(request.name, request.version)
        # One source for both transports: the REST JSON, parsed into the message.
        return json_format.ParseDict(v2_models.model_metadata(spec), pb.ModelMetadataResponse())

    @mapped_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelConfigResponse:
        spec = self._model(request.name, request.version)
        config = json_format.ParseDict(v2_models.model_config(spec), pb.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    @mapped_errors
    async def ModelInfer(
        self, request: v2_grpc.InferRequestWire, context: grpc.aio.ServicerContext[Any, Any]
    ) -> v2_grpc.InferResponseWire:
        # The request and answer travel with their raw contents split off the protobuf
        # message (codecs/v2_grpc.py; the server registers the matching (de)serializers).
        message = request.message
        spec = self._model(message.model_name, message.model_version)
        req = v2_grpc.decode_grpc_request(message, self.settings.max_tensor_elements, request.raw)
        tensors, params = v2.engine_inputs(spec, req)
        # The queue deadline: ours, shortened by the `timeout` parameter or the
        # client's gRPC deadline (no point computing an answer nobody waits for).
        limits = [self.settings.request_timeout_s]
        if req.timeout_s is not None:
            limits.append(req.timeout_s)
        remaining = context.time_remaining()
        if remaining is not None:
            limits.append(max(remaining, 0.0))
        outputs = await self.engine.infer(
            spec.name,
            tensors,
            params,
            outputs=req.output_names,
            transport="grpc",
            lenient=True,
            timeout_s=min(limits),
        )
        return v2_grpc.encode_grpc_response(spec.name, req.id, outputs)
