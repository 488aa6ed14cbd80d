"""ModelStreamInfer's answers, framed by hand (codecs/v2_grpc.py), against protobuf as
the oracle: a response is ModelStreamInferResponse{infer_response} with the same raw
contents ModelInfer would send (shared-memory outputs as empty entries), byte for byte
what protobuf writes; an error answer carries the message, the model and the id."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradserve.codecs.v2_grpc import encode_grpc_response, serialize_stream_error, serialize_stream_response
from gradserve.grpc.generated import inference_pb2 as pb

SETTINGS = settings(derandomize=True, max_examples=200, deadline=None)

shapes = st.lists(st.integers(0, 40), min_size=0, max_size=3)


@SETTINGS
@given(
    st.lists(st.tuples(shapes, st.sampled_from([torch.float32, torch.float64, torch.int64])), max_size=4),
    st.text(max_size=20),
    st.data(),
)
def test_stream_response_is_protobufs(
    tensors: list[tuple[list[int], torch.dtype]], request_id: str, data: st.DataObject
) -> None:
    outputs = {
        f"out{i}": torch.arange(int(torch.Size(shape).numel()), dtype=dtype).reshape(shape)
        for i, (shape, dtype) in enumerate(tensors)
    }
    in_shm = {name for name in outputs if data.draw(st.booleans())}
    wire = encode_grpc_response("relu", request_id, outputs, in_shm)
    framed = serialize_stream_response(wire)

    expected_inner = pb.ModelInferResponse()
    expected_inner.CopyFrom(wire.message)
    expected_inner.raw_output_contents.extend(
        b"" if name in in_shm else bytes(raw) for name, raw in zip(outputs, wire.raw, strict=True)
    )
    expected = pb.ModelStreamInferResponse(infer_response=expected_inner)
    assert framed == expected.SerializeToString()
    parsed = pb.ModelStreamInferResponse.FromString(framed)
    assert parsed.error_message == "" and parsed.infer_response.id == request_id
    assert len(parsed.infer_response.raw_output_contents) == len(outputs)


def test_error_answer() -> None:
    parsed = pb.ModelStreamInferResponse.FromString(serialize_stream_error("bad dtype", "relu", "r7"))
    assert parsed.error_message == "bad dtype"
    assert parsed.infer_response.model_name == "relu" and parsed.infer_response.id == "r7"
    assert not parsed.infer_response.outputs
