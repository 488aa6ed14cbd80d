"""V2 gRPC codec: ``ModelInferRequest`` / ``ModelInferResponse`` <-> tensors.

Flow position: grpc/servicer.py -> **codecs/v2_grpc** -> engine. Shares the REST codec's
request type, checks and byte layout (codecs/v2.py): ``raw_*_contents`` are little-endian,
row-major and unpadded like the HTTP binary extension. Answers always use
``raw_output_contents``: tritonclient reads nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from gradserve.codecs.dtypes import of_tensor
from gradserve.codecs.v2 import (
    MODEL_VERSION,
    RequestedOutput,
    V2Request,
    check_shape,
    refuse_unsupported,
    split_request_params,
    tensor_bytes,
    tensor_from_buffer,
    v2_dtype,
)
from gradserve.errors import MalformedRequest
from gradserve.grpc.generated import inference_pb2 as pb


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


def decode_grpc_request(msg: pb.ModelInferRequest, max_elements: int) -> V2Request:
    """ModelInferRequest (raw_input_contents, or typed contents) -> V2Request."""
    req = V2Request(tensors={}, params={}, outputs=None, id=msg.id or None)
    split_request_params(req, {k: _param_value(v) for k, v in msg.parameters.items()})
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise MalformedRequest(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs", code="size_mismatch"
        )
    for i, item in enumerate(msg.inputs):
        where = f"input {item.name!r}"
        if not item.name:
            raise MalformedRequest(f"inputs[{i}] has no name", code="malformed_request")
        if item.name in req.tensors:
            raise MalformedRequest(f"{where} is given twice", code="duplicate_input")
        refuse_unsupported({k: None for k in item.parameters}, where)
        dtype = v2_dtype(item.datatype, where)
        shape, count = check_shape(list(item.shape), where, max_elements)
        if raw:
            if item.HasField("contents"):
                raise MalformedRequest(
                    f"{where}: has typed contents although the request uses raw_input_contents",
                    code="malformed_request",
                )
            data = raw[i]
            if len(data) != count * dtype.itemsize:
                raise MalformedRequest(
                    f"{where}: raw_input_contents[{i}] has {len(data)} bytes but shape {list(shape)} "
                    f"of {dtype.v2} needs {count * dtype.itemsize}",
                    code="size_mismatch",
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
            raise MalformedRequest(
                f"{where}: contents.{field_name} has {len(values)} elements but shape {list(shape)} needs {count}",
                code="size_mismatch",
            )
        assert dtype.numpy is not None
        req.tensors[item.name] = torch.from_numpy(np.array(values, dtype=dtype.numpy)).reshape(shape)
    if msg.outputs:
        req.outputs = [RequestedOutput(o.name, True) for o in msg.outputs]
    return req


def encode_grpc_response(
    model: str, request_id: str | None, outputs: Mapping[str, torch.Tensor]
) -> pb.ModelInferResponse:
    """Outputs -> ModelInferResponse with raw_output_contents (tritonclient reads only those)."""
    response = pb.ModelInferResponse(model_name=model, model_version=MODEL_VERSION, id=request_id or "")
    for name, t in outputs.items():
        response.outputs.add(name=name, datatype=of_tensor(t).v2, shape=list(t.shape))
        response.raw_output_contents.append(tensor_bytes(t).tobytes())
    return response
