"""ModelInfer's hand-framed raw contents read and write the same messages as protobuf."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradserve.codecs.v2_grpc import (
    InferResponseWire,
    encode_grpc_response,
    parse_infer_request,
    serialize_infer_response,
)
from gradserve.grpc.generated import inference_pb2 as pb


def _request(raw: bool) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="cross_entropy", model_version="1", id="abc")
    req.parameters["reduction"].string_param = "sum"
    req.parameters["label_smoothing"].double_param = 0.1
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = np.array([0, 3, 1], dtype=np.int64)
    for name, dtype, value in (("input", "FP32", x), ("target", "INT64", t)):
        item = req.inputs.add(name=name, datatype=dtype, shape=list(value.shape))
        if raw:
            req.raw_input_contents.append(value.tobytes())
        elif dtype == "FP32":
            item.contents.fp32_contents.extend(value.reshape(-1).tolist())
        else:
            item.contents.int64_contents.extend(value.tolist())
    req.outputs.add(name="loss")
    req.outputs.add(name="grad_input")
    return req


@pytest.mark.parametrize("raw", [True, False])
def test_parse_splits_raw_contents_and_keeps_the_rest(raw: bool) -> None:
    original = _request(raw)
    wire = parse_infer_request(original.SerializeToString())
    assert [bytes(r) for r in wire.raw] == list(original.raw_input_contents)
    expected = pb.ModelInferRequest()
    expected.CopyFrom(original)
    del expected.raw_input_contents[:]
    assert wire.id == expected.id
    expected.ClearField("id")  # split off: the rest is the header that keys the plan cache
    assert wire.message == expected


def test_parse_leaves_garbage_to_protobuf() -> None:
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        parse_infer_request(b"\x3a\xff\xff\xff\x0f")  # a length past the end


def test_response_is_the_message_protobuf_would_write() -> None:
    outputs = {"loss": torch.tensor(1.5), "grad_input": torch.randn(3, 4, dtype=torch.float64)}
    wire = encode_grpc_response("cross_entropy", "abc", outputs)
    assert isinstance(wire, InferResponseWire)
    parsed = pb.ModelInferResponse.FromString(serialize_infer_response(wire))
    assert parsed.model_name == "cross_entropy" and parsed.id == "abc"
    assert [o.name for o in parsed.outputs] == ["loss", "grad_input"]
    assert parsed.raw_output_contents[0] == outputs["loss"].numpy().tobytes()
    assert parsed.raw_output_contents[1] == outputs["grad_input"].numpy().tobytes()
    # Large entries need multi-byte length varints.
    big = {"y": torch.randn(70_000)}
    parsed = pb.ModelInferResponse.FromString(
        serialize_infer_response(encode_grpc_response("relu", None, big))
    )
    assert parsed.raw_output_contents[0] == big["y"].numpy().tobytes()
