"""Property tests of ModelInfer's hand-written framing (codecs/v2_grpc.py), against
protobuf's own parser and writer as the oracle (derandomized: the same cases each run).

- Any bytes at all: ``parse_infer_request`` accepts exactly what protobuf accepts,
  yields the same message with raw_input_contents split off as views, and fails only
  with protobuf's DecodeError (which grpc/guards.py turns into INVALID_ARGUMENT).
- Valid requests, and valid requests truncated, with bytes flipped or spliced in.
- Responses: what ``serialize_infer_response`` writes is, for protobuf, the message
  with raw_output_contents, zero-element outputs included.
"""

from __future__ import annotations

import numpy as np
import torch
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from gradserve.codecs.v2_grpc import (
    _encode_varint,
    encode_grpc_response,
    parse_infer_request,
    serialize_infer_response,
)
from gradserve.grpc.generated import inference_pb2 as pb

SETTINGS = settings(derandomize=True, max_examples=400, deadline=None)


def _same_as_protobuf(data: bytes) -> None:
    """parse_infer_request(data) and protobuf agree: both fail, or both give one message."""
    try:
        expected = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        expected = None
    try:
        wire = parse_infer_request(data)
    except DecodeError:
        assert expected is None, "protobuf reads what the hand-written parser refused"
        return
    assert expected is not None, "the hand-written parser read what protobuf refuses"
    for raw in wire.raw:
        assert isinstance(raw, memoryview) and raw.obj is data  # views, not copies
    got = pb.ModelInferRequest()
    got.CopyFrom(wire.message)
    got.raw_input_contents.extend(bytes(r) for r in wire.raw)
    got.id = wire.id  # split off too (the header, less id and raw contents, keys the plan cache)
    assert got == expected


names = st.text(max_size=8)
requests = st.builds(
    lambda model, version, rid, inputs, raws, outputs, params: _build(
        model, version, rid, inputs, raws, outputs, params
    ),
    names,
    names,
    names,
    st.lists(
        st.tuples(names, st.sampled_from(["FP32", "INT64", "BF16", "??"]), st.lists(st.integers(-1, 2**40))),
        max_size=3,
    ),
    st.lists(st.binary(max_size=300), max_size=4),
    st.lists(names, max_size=2),
    st.dictionaries(
        names, st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.booleans()), max_size=3
    ),
)


def _build(
    model: str,
    version: str,
    rid: str,
    inputs: list[tuple[str, str, list[int]]],
    raws: list[bytes],
    outputs: list[str],
    params: dict[str, int | str | bool],
) -> bytes:
    req = pb.ModelInferRequest(model_name=model, model_version=version, id=rid)
    for name, datatype, shape in inputs:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
    req.raw_input_contents.extend(raws)
    for name in outputs:
        req.outputs.add(name=name)
    for key, value in params.items():
        if isinstance(value, bool):
            req.parameters[key].bool_param = value
        elif isinstance(value, int):
            req.parameters[key].int64_param = value
        else:
            req.parameters[key].string_param = value
    return req.SerializeToString()


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes(data: bytes) -> None:
    _same_as_protobuf(data)


@SETTINGS
@given(requests)
def test_valid_requests(data: bytes) -> None:
    _same_as_protobuf(data)
    assert parse_infer_request(data) is not None


@SETTINGS
@given(requests, st.data())
def test_valid_requests_truncated(data: bytes, draw: st.DataObject) -> None:
    end = draw.draw(st.integers(0, len(data)))
    _same_as_protobuf(data[:end])


@SETTINGS
@given(requests, st.data())
def test_valid_requests_with_bytes_flipped_or_spliced(data: bytes, draw: st.DataObject) -> None:
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        at = draw.draw(st.integers(0, len(buf)))
        # A byte flipped, or a random run spliced in (tags, varints, lengths that lie).
        if at < len(buf) and draw.draw(st.booleans()):
            buf[at] = draw.draw(st.integers(0, 255))
        else:
            buf[at:at] = draw.draw(st.binary(min_size=1, max_size=12))
    _same_as_protobuf(bytes(buf))


@SETTINGS
@given(requests, st.integers(0, 2**70), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]))
def test_a_field_with_any_length_and_wire_type(data: bytes, length: int, wire_type: int) -> None:
    """Field 7 (raw_input_contents) or another, any wire type, any length claimed."""
    for field in (7, 1, 99):
        tag = _encode_varint((field << 3) | wire_type)
        _same_as_protobuf(data + tag + _encode_varint(length) + b"\x00" * 16)


dtypes = st.sampled_from(
    [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32]
)


@SETTINGS
@given(st.lists(st.tuples(dtypes, st.lists(st.integers(0, 4), max_size=3)), max_size=4), names)
def test_responses_are_what_protobuf_would_write(
    outputs: list[tuple[torch.dtype, list[int]]], rid: str
) -> None:
    tensors = {f"out{i}": torch.ones(shape, dtype=dtype) for i, (dtype, shape) in enumerate(outputs)}
    parsed = pb.ModelInferResponse.FromString(
        serialize_infer_response(encode_grpc_response("relu", rid, tensors))
    )
    assert parsed.id == rid and [o.name for o in parsed.outputs] == list(tensors)
    assert len(parsed.raw_output_contents) == len(tensors)
    for o, raw, t in zip(parsed.outputs, parsed.raw_output_contents, tensors.values(), strict=True):
        assert list(o.shape) == list(t.shape)
        assert raw == t.reshape(-1).view(torch.uint8).numpy().tobytes()


def test_zero_element_outputs_keep_their_place() -> None:
    """Clients pair raw entries with outputs by position: an empty one must be there."""
    tensors = {
        "y": torch.zeros(0, 3),
        "grad_x": torch.zeros((0, 3), dtype=torch.bfloat16),
        "s": torch.tensor(2.0),
    }
    parsed = pb.ModelInferResponse.FromString(
        serialize_infer_response(encode_grpc_response("relu", None, tensors))
    )
    assert list(parsed.raw_output_contents) == [b"", b"", np.float32(2.0).tobytes()]
