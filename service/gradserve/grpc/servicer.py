"""inference.GRPCInferenceService: the thin gRPC layer over the engine.

Flow position: grpc.aio server -> **servicer** -> codecs/v2_grpc (decode raw contents) ->
engine -> codecs/v2_grpc (encode raw_output_contents). Errors take ONE path: a
``GradservError`` aborts with its ``grpc_code`` from errors.py (the same table that
gives REST its statuses); anything unexpected aborts INTERNAL with a generic message
and a request id that is logged with the traceback. Cancellation is not an error: the
CancelledError of a cancelled RPC propagates into the engine, so the batcher drops
the request if it is still queued.

ModelStreamInfer (Triton's bidirectional stream) submits each message to the engine as
its own request, concurrently, and writes each answer as it is ready (clients match
answers by id); a failed request is answered with its ``error_message`` and the stream
goes on. A message that cannot be decoded at all ends the stream INVALID_ARGUMENT, as
on every method (grpc/guards.py): its bytes are not a request, and what follows them
on a client's broken framing is no more trustworthy. At most
``grpc_stream_max_in_flight`` requests of one stream run at once: the next message is
not read before one of them is answered, so HTTP/2 flow control holds a fast client
back. When the client goes away (or the call's deadline passes) grpc.aio cancels the
handler, which cancels every request of the stream still queued.

Shared memory: the SystemSharedMemory* / CudaSharedMemory* rpcs use the runtime's one
region registry (shm.py), the same that REST's /v2/systemsharedmemory routes use; a
ModelInfer tensor naming a region is read from it, an output naming one written to it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from gradserve import __version__
from gradserve.codecs import v2, v2_grpc, v2_models, v2_tensors
from gradserve.engine import GRPC_STREAM, GRPC_UNARY, Arrival, Engine
from gradserve.errors import GradservError, NotSupported
from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc
from gradserve.ops.registry import OpSpec, Registry
from gradserve.shm import SharedMemory
from gradserve.tracing import current_request_id

log = logging.getLogger(__name__)

# Trailing-metadata key carrying the error's code (errors.py: queue_full, request_too_large, ...).
ERROR_CODE_KEY = "gradserve-error-code"
# Shared-memory outputs at least this large are written from a worker thread (os.pwrite
# releases the GIL), as REST's off_loop does for large bodies.
_WRITE_OFF_LOOP_BYTES = 1 << 20

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
            request_id = current_request_id() or uuid.uuid4().hex[:12]  # the call's x-request-id
            log.exception("gRPC request %s (%s) failed", request_id, method.__name__)
            code, message = grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
            error_code = "internal"
        # RESOURCE_EXHAUSTED covers both a full queue (retry) and a request over a limit
        # (do not): the error code in the trailers tells clients which, no message parsing.
        # abort() raises; it is outside the try so its exception is not remapped.
        # Added to the trailers already set (x-request-id, grpc/calls.py), not replacing them.
        remaining = context.time_remaining()
        if context.done() or (remaining is not None and remaining <= 0):
            # grpc already ended the call (its deadline passed as ours did): an abort now
            # fails inside grpcio and logs a traceback; the client has its status.
            raise asyncio.CancelledError
        trailers = (*context.trailing_metadata(), (ERROR_CODE_KEY, error_code))
        await context.abort(code, message, trailing_metadata=trailers)
        raise AssertionError("unreachable")  # pragma: no cover - abort always raises

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """ServerLive/Ready, ModelReady, Server/ModelMetadata, ModelConfig, ModelInfer,
    ModelStreamInfer, and the system and CUDA shared-memory rpcs."""

    def __init__(self, engine: Engine, registry: Registry, shm: SharedMemory | None = None) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = engine.settings
        self.shm = shm

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
        meta = v2_models.server_metadata(self.shm.extensions if self.shm is not None else ())
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
        return await self._infer(request, context.time_remaining())

    async def _infer(
        self, request: v2_grpc.InferRequestWire, remaining_s: float | None, arrival: Arrival = GRPC_UNARY
    ) -> v2_grpc.InferResponseWire:
        """One ModelInferRequest through the engine (ModelInfer, and each message of
        ModelStreamInfer, which passes GRPC_STREAM); raises the request's GradservError."""
        message = request.message
        spec = self._model(message.model_name, message.model_version)
        req = v2_grpc.decode_wire(request, self.settings.max_tensor_elements, self.shm)
        tensors, params = v2.engine_inputs(spec, req)
        # The queue deadline: ours, shortened by the `timeout` parameter or the
        # client's gRPC deadline (no point computing an answer nobody waits for).
        limits = [self.settings.request_timeout_s]
        if req.timeout_s is not None:
            limits.append(req.timeout_s)
        if remaining_s is not None:
            limits.append(max(remaining_s, 0.0))
        outputs = await self.engine.infer(
            spec.name,
            tensors,
            params,
            outputs=req.output_names,
            transport="grpc",
            lenient=True,
            timeout_s=min(limits),
            arrival=arrival,
        )
        slots = req.shm_outputs
        if slots:
            if v2_tensors.shm_bytes(slots, outputs) < _WRITE_OFF_LOOP_BYTES:
                v2_tensors.write_shm_outputs(slots, outputs)
            else:
                await asyncio.to_thread(v2_tensors.write_shm_outputs, slots, outputs)
        return v2_grpc.encode_grpc_response(spec.name, req.id, outputs, {slot.name for slot in slots})

    # ------------------------------------------------------------ ModelStreamInfer

    # Not the generated stub's signature: requests arrive with their raw contents split
    # off (as ModelInfer's), answers are written as bytes with context.write as they
    # finish (a generator would answer in order only).
    async def ModelStreamInfer(  # type: ignore[override]
        self, requests: AsyncIterator[v2_grpc.InferRequestWire], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """The bidirectional stream (see the module doc)."""
        slots = asyncio.Semaphore(self.settings.grpc_stream_max_in_flight)
        running: set[asyncio.Task[None]] = set()
        # grpc.aio allows one write at a time on a call; answers finish in any order.
        write_lock = asyncio.Lock()

        async def answer(request: v2_grpc.InferRequestWire) -> None:
            try:
                payload = await self._stream_answer(request, context.time_remaining())
                async with write_lock:
                    await context.write(payload)
            except (grpc.aio.UsageError, grpc.aio.AbortError, asyncio.InvalidStateError):
                # The call ended under us (the client left, or the deadline passed):
                # nobody reads this answer; the handler's own cancellation cleans up.
                log.debug("gRPC stream answer dropped: the call has ended")
            finally:
                slots.release()

        incoming = requests.__aiter__()
        try:
            while True:
                # A slot before the next read: past the cap, the message stays unread.
                await slots.acquire()
                try:
                    request = await incoming.__anext__()
                except StopAsyncIteration:
                    slots.release()
                    break
                task = asyncio.create_task(answer(request))
                running.add(task)
                task.add_done_callback(running.discard)
            # The client half-closed: answer what is in flight, then end the call (OK).
            while running:
                await asyncio.gather(*running)
        finally:
            # Cancelled (client gone, deadline) or failed (an undecodable message):
            # queued and computing requests are dropped, but an answer being written is
            # let finish first. grpc-core takes one send at a time on a call, and the
            # status that ends it is a send too: an abort started under a write was
            # lost, and the client waited for ever (tests/integration/test_stream.py).
            async with write_lock:
                for task in running:
                    task.cancel()

    async def _stream_answer(self, request: v2_grpc.InferRequestWire, remaining_s: float | None) -> bytes:
        """One stream message -> its answer's bytes; every failure becomes that answer's
        ``error_message`` (the same messages unary calls abort with)."""
        message = request.message
        try:
            return v2_grpc.serialize_stream_response(await self._infer(request, remaining_s, GRPC_STREAM))
        except GradservError as exc:
            error, code = exc.message, exc.kind.code
        except asyncio.CancelledError:
            raise
        except Exception:
            request_id = current_request_id() or uuid.uuid4().hex[:12]  # the call's x-request-id
            log.exception("gRPC stream request %s failed", request_id)
            error, code = f"internal error (request id {request_id})", "internal"
        return v2_grpc.serialize_stream_error(error, message.model_name, request.id, code)

    # ------------------------------------------------------------ shared memory

    def _regions(self) -> SharedMemory:
        if self.shm is None:
            raise NotSupported("shared memory is not offered by this server")
        return self.shm

    @mapped_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self._regions().system_status(request.name):
            response.regions[region["name"]].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
            )
        return response

    @mapped_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._regions().register_system(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @mapped_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._regions().unregister_system(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @mapped_errors
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CudaSharedMemoryStatusResponse:
        response = pb.CudaSharedMemoryStatusResponse()
        for region in self._regions().cuda_status(request.name):
            response.regions[region["name"]].CopyFrom(
                pb.CudaSharedMemoryStatusResponse.RegionStatus(**region)
            )
        return response

    @mapped_errors
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CudaSharedMemoryRegisterResponse:
        self._regions().register_cuda(request.name, request.raw_handle, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @mapped_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self._regions().unregister_cuda(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()
