"""V2 gRPC codec: ``ModelInferRequest`` / ``ModelInferResponse`` <-> tensors.

Flow position: grpc/servicer.py -> **codecs/v2_grpc** -> engine. Shares the REST codec's
request type (codecs/v2_protocol.py), checks and byte layout (codecs/v2_tensors.py):
``raw_*_contents`` are little-endian, row-major and unpadded like the HTTP binary
extension. Answers always use ``raw_output_contents``: tritonclient reads nothing else.
A tensor whose parameters name a shared-memory region (shm.py) has no raw entry: the
raw entries belong, in order, to the inputs that are not in shared memory, and an
output written into a region answers an empty raw entry, so entries still pair with
outputs by position.

ModelStreamInfer carries the same ModelInferRequest; its answers are framed here too
(``serialize_stream_response``), around the same hand-framed raw contents.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradserve.codecs.dtypes import of_tensor
from gradserve.codecs.v2_grpc_plans import HEADERS, plan_of
from gradserve.codecs.v2_protocol import (
    MODEL_VERSION,
    RequestedOutput,
    V2Request,
    refuse_unsupported,
    split_request_params,
)
from gradserve.codecs.v2_tensors import (
    check_shape,
    shm_input,
    shm_output,
    tensor_bytes,
    tensor_from_buffer,
    v2_dtype,
)
from gradserve.errors import InvalidInput, MalformedRequest
from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.shm import SharedMemory, ref_from_params


def _param_value(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


# Typed contents fields per datatype (FP16/BF16 have none: raw only).
_TYPED_FIELD = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
}


def _params(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {k: _param_value(v) for k, v in params.items()} if params else {}


def decode_grpc_request(
    msg: pb.ModelInferRequest,
    max_elements: int,
    raw_contents: Sequence[bytes | memoryview] | None = None,
    shm: SharedMemory | None = None,
    request_id: str | None = None,
) -> V2Request:
    """ModelInferRequest (raw_input_contents, or typed contents) -> V2Request;
    ``raw_contents``: the raw contents when they were split off the message
    (``parse_infer_request``); ``shm``: the registry that tensors naming a
    shared-memory region are read from (and outputs written to); ``request_id``: the
    id when it was split off too (else the message's)."""
    rid = msg.id if request_id is None else request_id
    req = V2Request(tensors={}, params={}, outputs=None, id=rid or None)
    split_request_params(req, _params(msg.parameters))
    raw: Sequence[bytes | memoryview] = raw_contents or msg.raw_input_contents
    input_params = [_params(item.parameters) for item in msg.inputs]
    refs = [
        ref_from_params(params, f"input {item.name!r}")
        for params, item in zip(input_params, msg.inputs, strict=True)
    ]
    needs_raw = sum(ref is None for ref in refs)
    if raw and len(raw) != needs_raw:
        in_shm = len(msg.inputs) - needs_raw
        raise MalformedRequest(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs"
            + (f" ({in_shm} of them in shared memory, which take none)" if in_shm else ""),
            code="size_mismatch",
        )
    next_raw = 0
    for i, item in enumerate(msg.inputs):
        where = f"input {item.name!r}"
        if not item.name:
            raise MalformedRequest(f"inputs[{i}] has no name", code="malformed_request")
        if item.name in req.tensors:
            raise MalformedRequest(f"{where} is given twice", code="duplicate_input")
        refuse_unsupported(input_params[i], where)
        dtype = v2_dtype(item.datatype, where)
        shape, count = check_shape(list(item.shape), where, max_elements)
        ref = refs[i]
        if ref is not None:
            if item.HasField("contents"):
                raise MalformedRequest(
                    f"{where}: names a shared memory region and also has contents", code="malformed_request"
                )
            req.tensors[item.name] = shm_input(shm, ref, where, dtype, shape, count)
            continue
        if raw:
            if item.HasField("contents"):
                raise MalformedRequest(
                    f"{where}: has typed contents although the request uses raw_input_contents",
                    code="malformed_request",
                )
            data = raw[next_raw]
            next_raw += 1
            if len(data) != count * dtype.itemsize:
                # The data disagrees with its own shape: invalid_input, as over REST (422).
                raise InvalidInput(
                    f"{where}: raw_input_contents[{next_raw - 1}] has {len(data)} bytes but shape {list(shape)} "
                    f"of {dtype.v2} needs {count * dtype.itemsize}",
                    code="shape_mismatch",
                )
            req.tensors[item.name] = tensor_from_buffer(where, dtype, shape, count, data)
            continue
        field_name = _TYPED_FIELD.get(dtype.v2)
        if field_name is None:
            raise MalformedRequest(
                f"{where}: {dtype.v2} must be sent in raw_input_contents", code="malformed_request"
            )
        values = getattr(item.contents, field_name)
        if len(values) != count:
            # Data in another contents field (fp64_contents for an FP32 input) is the
            # usual cause: say so rather than only "has 0 elements".
            others = [f.name for f, _ in item.contents.ListFields() if f.name != field_name]
            hint = (
                f"; {dtype.v2} data goes in contents.{field_name}, not {', '.join(others)}" if others else ""
            )
            raise InvalidInput(
                f"{where}: contents.{field_name} has {len(values)} elements but shape {list(shape)} "
                f"needs {count}{hint}",
                code="shape_mismatch",
            )
        assert dtype.numpy is not None
        req.tensors[item.name] = torch.from_numpy(np.array(values, dtype=dtype.numpy)).reshape(shape)
    if msg.outputs:
        req.outputs = []
        for o in msg.outputs:
            refuse_unsupported(_params(o.parameters), f"output {o.name!r}")
            req.outputs.append(RequestedOutput(o.name, True, shm_output(shm, o.name, _params(o.parameters))))
    return req


def decode_wire(wire: InferRequestWire, max_elements: int, shm: SharedMemory | None = None) -> V2Request:
    """A received request -> V2Request: through its header's plan when one is cached
    (codecs/v2_grpc_plans.py), else ``decode_grpc_request``, whose success on a
    plannable request makes the plan for the next one."""
    if wire.header is not None:
        plan = HEADERS.plan(wire.header, max_elements)
        if plan is not None:
            req = plan.build(wire.raw, wire.id)
            if req is not None:
                return req
    req = decode_grpc_request(wire.message, max_elements, wire.raw, shm, request_id=wire.id)
    if wire.header is not None:
        plan = plan_of(wire.message, len(wire.raw), req, max_elements)
        if plan is not None:
            HEADERS.learn(wire.header, plan)
    return req


_EMPTY = memoryview(b"")


def encode_grpc_response(
    model: str, request_id: str | None, outputs: Mapping[str, torch.Tensor], in_shm: Collection[str] = ()
) -> InferResponseWire:
    """Outputs -> a ModelInferResponse with raw_output_contents (tritonclient reads only
    those), the raw contents kept as views of the tensors for ``serialize_infer_response``.
    Outputs in ``in_shm`` were written into shared memory: an empty entry each."""
    response = pb.ModelInferResponse(model_name=model, model_version=MODEL_VERSION, id=request_id or "")
    raw = []
    for name, t in outputs.items():
        response.outputs.add(name=name, datatype=of_tensor(t).v2, shape=list(t.shape))
        # A zero-element or shared-memory output gets its entry too (empty): clients
        # pair raw entries with outputs by position.
        raw.append(_EMPTY if name in in_shm else tensor_bytes(t))
    return InferResponseWire(response, raw)


# ---------------------------------------------------------------- the raw contents on the wire
#
# protobuf-python copies a ``bytes`` field several times (measured on a 16 MiB tensor:
# FromString 9 ms, reading the field 9 ms; append 18 ms, SerializeToString 36 ms). The
# raw tensor fields are therefore split off and written by hand around protobuf: a
# request's raw_input_contents stay views of the received bytes, and an answer is its
# small protobuf head followed by each raw_output_contents entry, framed by hand.
# Protobuf lets fields come in any order and repeat, so the result is the same message.

_RAW_INPUT_FIELD = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_ID_FIELD = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["id"].number
_RAW_OUTPUT_TAG = bytes(
    [(pb.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number << 3) | 2]
)


@dataclass
class InferRequestWire:
    """A ModelInferRequest as received: the message without its raw contents and its
    id, the raw contents as views of the received bytes (no copies), the id, and the
    header bytes the message was parsed from (the plan cache's key; None when the
    whole request went to protobuf, and then ``message`` has both)."""

    message: pb.ModelInferRequest
    raw: list[memoryview]
    id: str = ""
    header: bytes | None = None


@dataclass
class InferResponseWire:
    """A ModelInferResponse to send: the message without raw contents, and the raw
    contents as views of the output tensors."""

    message: pb.ModelInferResponse
    raw: list[memoryview]


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def parse_infer_request(data: bytes) -> InferRequestWire:
    """The request deserializer of ModelInfer: top-level fields are walked by hand,
    raw_input_contents kept as views, everything else parsed by protobuf. Anything
    unexpected is left to protobuf's own parser (and its errors).

    Every length is checked against the end of ``data`` before it is used, so no
    framing (a truncated varint, a length past the end, a varint of 10 bytes saying
    2^70) reads past the buffer or allocates more than ``data`` holds: slices are views.
    The only exception this raises is protobuf's ``DecodeError``; grpc/guards.py turns
    it into INVALID_ARGUMENT (grpcio would answer UNKNOWN).

    The ``id`` (which differs per request where the rest repeats: stream clients match
    answers by it) is split off too, so the remaining header bytes key the parsed
    message and its decode plan (codecs/v2_grpc_plans.py)."""
    view = memoryview(data)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    id_field: memoryview | None = None
    pos = 0
    try:
        while pos < len(view):
            start = pos
            tag, pos = _varint(view, pos)
            wire_type = tag & 7
            if wire_type == 0:
                _, pos = _varint(view, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                length, pos = _varint(view, pos)
                if tag >> 3 == _RAW_INPUT_FIELD:
                    if pos + length > len(view):
                        raise ValueError("truncated field")
                    raw.append(view[pos : pos + length])
                    pos += length
                    continue
                if tag >> 3 == _ID_FIELD:
                    if pos + length > len(view):
                        raise ValueError("truncated field")
                    id_field = view[start : pos + length]  # a repeated field: the last wins
                    pos += length
                    continue
                pos += length
            else:
                raise ValueError(f"wire type {wire_type}")
            if pos > len(view):
                raise ValueError("truncated field")
            rest.append(view[start:pos])
    except ValueError:
        whole = pb.ModelInferRequest.FromString(data)
        return InferRequestWire(whole, [], whole.id)
    # protobuf's own verdict on the id (UTF-8), from the field alone.
    request_id = pb.ModelInferRequest.FromString(bytes(id_field)).id if id_field is not None else ""
    header = b"".join(rest)
    return InferRequestWire(HEADERS.message(header), raw, request_id, header)


def _response_parts(response: InferResponseWire) -> list[bytes | memoryview]:
    parts: list[bytes | memoryview] = [response.message.SerializeToString()]
    for raw in response.raw:
        parts += [_RAW_OUTPUT_TAG, _encode_varint(raw.nbytes), raw]
    return parts


def serialize_infer_response(response: InferResponseWire | pb.ModelInferResponse) -> bytes:
    """The response serializer of ModelInfer: the head, then each raw entry framed by
    hand (one copy of the tensor bytes, into the answer)."""
    if isinstance(response, pb.ModelInferResponse):
        return response.SerializeToString()
    return b"".join(_response_parts(response))


# ModelStreamInferResponse: error_message = 1, infer_response = 2 (an embedded message,
# framed as a length-delimited field: the inner message's bytes are those of ModelInfer's).
_STREAM_RESPONSE_TAG = bytes(
    [(pb.ModelStreamInferResponse.DESCRIPTOR.fields_by_name["infer_response"].number << 3) | 2]
)


def serialize_stream_response(response: InferResponseWire) -> bytes:
    """One ModelStreamInfer answer: the ModelInferResponse framed as above, inside the
    stream message, still one copy of the tensor bytes (the inner length is summed,
    not built)."""
    parts = _response_parts(response)
    size = sum(part.nbytes if isinstance(part, memoryview) else len(part) for part in parts)
    return b"".join([_STREAM_RESPONSE_TAG, _encode_varint(size), *parts])


# The error's code (errors.py: queue_full, invalid_input, ...) in a stream error answer's
# parameters: a unary call carries it in its trailers, a stream message has none of its own.
STREAM_ERROR_CODE_PARAM = "gradserve-error-code"


def serialize_stream_error(message: str, model: str, request_id: str, code: str | None = None) -> bytes:
    """One ModelStreamInfer answer for a request that failed: ``error_message``, the
    model and id so that a client matching answers by id can place it, and the error's
    code as a parameter (tritonclient reads only the message and ignores the rest)."""
    head = pb.ModelInferResponse(model_name=model, id=request_id)
    if code is not None:
        head.parameters[STREAM_ERROR_CODE_PARAM].string_param = code
    return pb.ModelStreamInferResponse(error_message=message, infer_response=head).SerializeToString()
