"""ModelInfer on the wire, by hand: the request's bytes and the answer's raw contents,
with no protobuf message built for a tensor.

Flow position: ``GrpcClient``/``AsyncGrpcClient._run`` (_grpc_sync.py,
_grpc_async.py) -> ``_core``'s ``InferRequest`` -> **encode_infer_request** (bytes) ->
a generic ``channel.unary_unary`` without serializers (the bytes go out as they are)
-> the answer's bytes -> **decode_infer_response** -> ``Outputs``.

Why by hand: protobuf-python copies a ``bytes`` field on ``append``, on
``SerializeToString``, on ``FromString`` and on reading it back, and building a message
costs tens of microseconds per call even for an 8x10 tensor. The framing is the
server's (service/gradserve/codecs/v2_grpc.py), copied here because the clients
package never imports the service: protobuf lets fields come in any order and repeat,
so a message written field by field is the same message. Only the answer's small head
(model name, output names, datatypes and shapes) goes through protobuf.
"""

from __future__ import annotations

import struct

from gradserve_client import _core
from gradserve_client._core import InferRequest, Outputs, Scalar
from gradserve_client.errors import ServerError

#: The rpc, for ``channel.unary_unary`` with no serializers (bytes in, bytes out).
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

# Field numbers of inference.proto (ModelInferRequest, ModelInferResponse and their
# nested messages); a tag is (field << 3) | wire type, wire type 2 for length-delimited.
_LEN = 2
_REQ_MODEL_NAME, _REQ_PARAMETERS, _REQ_INPUTS, _REQ_OUTPUTS, _REQ_RAW = 1, 4, 5, 6, 7
_RESP_RAW = 6


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 negatives: ten bytes of two's complement
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes | memoryview) -> list[bytes | memoryview]:
    """A length-delimited field: tag, length, payload (joined later, copied once)."""
    return [_varint((number << 3) | _LEN), _varint(len(payload)), payload]


def _text(number: int, text: str) -> bytes:
    return b"".join(_field(number, text.encode()))


def _parameter(value: Scalar) -> bytes:
    """An InferParameter: bool_param 1, int64_param 2, string_param 3, double_param 4."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return b"\x08" + _varint(int(value))
    if isinstance(value, int):
        return b"\x10" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    return _text(3, value)


def encode_infer_request(request: InferRequest) -> bytes:
    """``request`` as ModelInferRequest bytes: inputs described, data in raw_input_contents."""
    parts: list[bytes | memoryview] = [_text(_REQ_MODEL_NAME, request.op)]
    for key, value in request.params.items():
        entry = _text(1, key) + b"".join(_field(2, _parameter(value)))
        parts += _field(_REQ_PARAMETERS, entry)
    for t in request.inputs:
        tensor = _text(1, t.name) + _text(2, t.datatype)
        if t.shape:
            tensor += b"".join(_field(3, b"".join(_varint(d) for d in t.shape)))
        parts += _field(_REQ_INPUTS, tensor)
    for name in request.outputs or ():
        parts += _field(_REQ_OUTPUTS, _text(1, name))
    for t in request.inputs:
        parts += _field(_REQ_RAW, t.view())  # no copy: the join below is the one
    return b"".join(parts)


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
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


def split_raw_outputs(data: bytes) -> tuple[bytes, list[memoryview]]:
    """A ModelInferResponse's bytes -> (the message without raw_output_contents, those
    contents as views of one writable copy of ``data``). Every length is checked
    against the end, so a malformed answer raises ValueError, never reads past it."""
    view = memoryview(bytearray(data))  # writable: the arrays the caller gets are too
    head: list[memoryview] = []
    raw: list[memoryview] = []
    pos = 0
    while pos < len(view):
        start = pos
        tag, pos = _read_varint(view, pos)
        wire_type = tag & 7
        if wire_type == 0:
            _, pos = _read_varint(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == _LEN:
            length, pos = _read_varint(view, pos)
            if pos + length > len(view):
                raise ValueError("truncated field")
            if tag >> 3 == _RESP_RAW:
                raw.append(view[pos : pos + length])
                pos += length
                continue
            pos += length
        else:
            raise ValueError(f"wire type {wire_type}")
        if pos > len(view):
            raise ValueError("truncated field")
        head.append(view[start:pos])
    return b"".join(head), raw


def decode_infer_response(data: bytes) -> Outputs:
    """ModelInferResponse bytes -> ``Outputs``: raw contents read in place; the head (and
    typed contents, from a server that sends those) parsed by protobuf."""
    pb, _ = _core.grpc_modules()
    try:
        head, raw = split_raw_outputs(data)
        message = pb.ModelInferResponse.FromString(head)
    except Exception as exc:  # ValueError from the framing, DecodeError from protobuf
        raise ServerError(f"unreadable V2 gRPC infer answer: {exc}") from None
    return _core.decode_grpc_infer(message, raw)
