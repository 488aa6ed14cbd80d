"""V2 gRPC messages: ``InferRequest`` <-> ``ModelInferRequest``, ``ModelInferResponse``
-> ``Outputs``, and the generated stubs, imported on first use.

Flow position: the unary clients frame ModelInfer by hand (``_grpc_wire``), which
reads an answer's small head through protobuf and hands it here
(**decode_grpc_infer**); the stream (``_stream``, ``_stream_wire``) builds and reads
whole messages here (**grpc_infer_request**, **decode_grpc_infer**). Errors go to
``_error_map.grpc_error``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradserve_client._outputs import Outputs, decode_tensor
from gradserve_client._tensors import V2_TO_NUMPY, InferRequest, Scalar
from gradserve_client.errors import ServerError


def grpc_modules() -> tuple[ModuleType, ModuleType]:
    """The generated stubs, imported on first use.

    Importing them registers the ``inference`` protos in protobuf's default pool, which
    clashes with tritonclient.grpc's copy of the same names; importing lazily keeps the
    HTTP clients usable in such a process.
    """
    from gradserve_client.generated import inference_pb2, inference_pb2_grpc

    return inference_pb2, inference_pb2_grpc


def _set_param(target: Any, value: Scalar) -> None:
    # bool first: bool is an int subclass.
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value


def grpc_infer_request(request: InferRequest) -> Any:
    """``request`` as a ``ModelInferRequest`` with one ``raw_input_contents`` entry per input."""
    pb, _ = grpc_modules()
    msg = pb.ModelInferRequest(model_name=request.op, model_version="")
    for t in request.inputs:
        entry = msg.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        del entry  # contents stay empty: the data travels raw
        msg.raw_input_contents.append(t.raw())
    for name in request.outputs or ():
        msg.outputs.add(name=name)
    for key, value in request.params.items():
        _set_param(msg.parameters[key], value)
    return msg


def decode_grpc_infer(msg: Any, raw_contents: Sequence[bytes | memoryview] | None = None) -> Outputs:
    """A ``ModelInferResponse`` -> ``Outputs`` (raw contents; typed contents as a fallback).

    ``raw_contents``: the raw outputs when they were split off the message's bytes
    (``_grpc_wire``): writable views, read in place; else the message's own, copied.
    """
    outputs = Outputs(datatypes={o.name: o.datatype for o in msg.outputs})
    raw = list(raw_contents) if raw_contents else [bytearray(r) for r in msg.raw_output_contents]
    for i, o in enumerate(msg.outputs):
        shape = [int(d) for d in o.shape]
        if i < len(raw):
            outputs[o.name] = decode_tensor(o.name, o.datatype, shape, raw[i])
        else:
            outputs[o.name] = _decode_typed_contents(o.name, o.datatype, shape, o.contents)
    return outputs


_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def _decode_typed_contents(name: str, datatype: str, shape: Sequence[int], contents: Any) -> NDArray[Any]:
    field_name = _TYPED_FIELD.get(datatype)
    if field_name is None:
        raise ServerError(f"output {name!r}: {datatype} needs raw_output_contents")
    return np.asarray(list(getattr(contents, field_name)), dtype=V2_TO_NUMPY[datatype]).reshape(tuple(shape))
