"""V2 REST codec: a POST .../infer body (JSON, or JSON header + binary tensor data) <->
``V2Request`` and the answer's body parts.

Flow position: rest/v2.py -> **codecs/v2_rest** -> engine (via codecs/v2.py
``engine_inputs``) -> codecs/v2_rest (encode). JSON tensors go through
codecs/numbers.py, binary sections and shared-memory regions through
codecs/v2_tensors.py; the framing and status rules are described in codecs/v2.py.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import orjson
import torch

from gradserve.codecs.dtypes import DType, of_tensor
from gradserve.codecs.numbers import json_array, nonfinite_literal_hint, to_torch
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
from gradserve.near_miss import first_near_miss
from gradserve.shm import SharedMemory, ref_from_params


def tensor_from_json(where: str, dtype: DType, shape: tuple[int, ...], count: int, data: Any) -> torch.Tensor:
    """The ``data`` of a JSON input (flat or nested) -> tensor of ``shape`` (count checked
    before reshaping; values checked against the datatype's range)."""
    array = json_array(
        where,
        data if isinstance(data, list) else [data],
        strings=dtype.torch.is_floating_point,
        max_elements=None,  # the data is in the body: its cost is the body's
    )
    if array.size != count:
        raise InvalidInput(
            f"{where}: 'data' has {array.size} elements but shape {list(shape)} needs {count}",
            code="shape_mismatch",
        )
    return to_torch(where, array.reshape(-1), dtype.torch).reshape(shape)


def _json_data(t: torch.Tensor) -> Any:
    """Flat JSON data of an output (perf_analyzer's C++ client reads flat lists only)."""
    t = t.detach().cpu().reshape(-1)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        return [
            v if math.isfinite(v) else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
            for v in t.float().tolist()
        ]
    if t.dtype == torch.bfloat16:
        return t.float().numpy()  # every bfloat16 is exact in float32
    return t.numpy()  # orjson serializes numpy arrays natively


def _parse_parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedRequest(f"{where}: 'parameters' must be a JSON object", code="malformed_request")
    return value


# The fields of a V2 inference request. Others are ignored, as Triton does (clients and
# proxies add their own), except a near miss of one of these: {"input": [...]} would
# otherwise read as a request with no inputs.
_REQUEST_FIELDS = ("id", "parameters", "inputs", "outputs")


def _refuse_near_miss_fields(doc: Mapping[str, Any]) -> None:
    miss = first_near_miss(doc, _REQUEST_FIELDS)
    if miss is not None:
        key, meant = miss
        raise MalformedRequest(
            f"unknown field {key!r}; did you mean {meant!r}? (an inference request has "
            f"{', '.join(map(repr, _REQUEST_FIELDS))})",
            code="unknown_field",
        )


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """The Inference-Header-Content-Length header, checked against the body."""
    if value is None:
        return None
    text = value.strip()
    # str.isdigit() also takes "²" and "١", which int() refuses or reads: ASCII only,
    # and short (int() of a long digit string is slow; no body needs 19 digits).
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise MalformedRequest(
            f"Inference-Header-Content-Length must be a non-negative integer, got {value!r}",
            code="bad_header_length",
        )
    length = int(text)
    if length == 0:
        # A "raw binary request" carries one input's bytes and no JSON: it relies on a
        # fixed input shape, which no gradserve op has.
        raise MalformedRequest(
            "Inference-Header-Content-Length 0 (a raw binary request) is not supported: "
            "send a JSON header that gives each input's shape and datatype",
            code="bad_header_length",
        )
    if length > body_length:
        raise MalformedRequest(
            f"Inference-Header-Content-Length {length} is past the end of the {body_length}-byte body",
            code="bad_header_length",
        )
    return length


def decode_rest_request(
    body: bytes | memoryview,
    header_length: str | None,
    max_elements: int,
    *,
    binary_aligned: bool = False,
    shm: SharedMemory | None = None,
) -> V2Request:
    """A POST .../infer body (JSON, or JSON header + binary tensor data) -> V2Request.

    ``binary_aligned``: the binary section starts 16-byte aligned in a writable buffer
    (rest/body.py arranges it), so a tensor at an offset that is a multiple of its
    item size can alias the body instead of being copied. ``shm``: the registry that
    tensors naming a shared-memory region are read from (and outputs written to).
    """
    length = parse_header_length(header_length, len(body))
    view = memoryview(body)
    head = view if length is None else view[:length]
    binary = view[0:0] if length is None else view[length:]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        hint = nonfinite_literal_hint(head, exc.pos) or (
            ""
            if length is not None
            else " (binary tensor data needs the Inference-Header-Content-Length header)"
        )
        raise MalformedRequest(f"body is not valid JSON: {exc}{hint}", code="malformed_json") from None
    if not isinstance(doc, dict):
        raise MalformedRequest("the inference request must be a JSON object", code="malformed_json")

    _refuse_near_miss_fields(doc)
    req = V2Request(tensors={}, params={}, outputs=None)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedRequest(f"'id' must be a string, got {request_id!r}", code="malformed_request")
    req.id = request_id
    split_request_params(req, _parse_parameters(doc.get("parameters"), "request"))

    inputs = doc.get("inputs", [])
    if not isinstance(inputs, list):
        raise MalformedRequest("'inputs' must be a list", code="malformed_request")
    offset = 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise MalformedRequest(
                f"inputs[{i}] must be an object with a string 'name'", code="malformed_request"
            )
        name = item["name"]
        where = f"input {name!r}"
        if name in req.tensors:
            raise MalformedRequest(f"{where} is given twice", code="duplicate_input")
        for field in ("datatype", "shape"):
            if field not in item:
                raise MalformedRequest(f"{where}: has no {field!r}", code="malformed_request")
        dtype = v2_dtype(item["datatype"], where)
        shape, count = check_shape(item["shape"], where, max_elements)
        tensor_params = _parse_parameters(item.get("parameters"), where)
        refuse_unsupported(tensor_params, where)
        ref = ref_from_params(tensor_params, where)
        if ref is not None:
            if "data" in item or "binary_data_size" in tensor_params:
                raise MalformedRequest(
                    f"{where}: names a shared memory region and also carries data", code="malformed_request"
                )
            req.tensors[name] = shm_input(shm, ref, where, dtype, shape, count)
        elif "binary_data_size" in tensor_params:
            size = tensor_params["binary_data_size"]
            if "data" in item:
                raise MalformedRequest(
                    f"{where}: has both 'data' and binary_data_size", code="malformed_request"
                )
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise MalformedRequest(
                    f"{where}: binary_data_size must be a non-negative integer", code="size_mismatch"
                )
            expected = count * dtype.itemsize
            if size != expected:
                # The data disagrees with its own shape (422, as a JSON input whose 'data'
                # has the wrong count); a section whose sizes do not add up stays 400.
                raise InvalidInput(
                    f"{where}: binary_data_size is {size} but shape {list(shape)} of {dtype.v2} "
                    f"needs {expected} bytes",
                    code="shape_mismatch",
                )
            if offset + size > len(binary):
                raise MalformedRequest(
                    f"{where}: its {size} bytes at offset {offset} are past the end of the "
                    f"{len(binary)}-byte binary section (truncated body?)",
                    code="truncated_body",
                )
            req.tensors[name] = tensor_from_buffer(
                where,
                dtype,
                shape,
                count,
                binary[offset : offset + size],
                aligned=binary_aligned and offset % dtype.itemsize == 0,
            )
            offset += size
        elif "data" in item:
            req.tensors[name] = tensor_from_json(where, dtype, shape, count, item["data"])
        else:
            raise MalformedRequest(
                f"{where}: needs 'data' or parameter binary_data_size", code="malformed_request"
            )
    if offset != len(binary):
        raise MalformedRequest(
            f"the binary section has {len(binary)} bytes but the inputs' binary_data_size add up to {offset}",
            code="size_mismatch",
        )

    outputs = doc.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise MalformedRequest("'outputs' must be a list", code="malformed_request")
    if outputs:  # an empty list means "none named", as an absent one (and as on gRPC)
        req.outputs = []
        for i, item in enumerate(outputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise MalformedRequest(
                    f"outputs[{i}] must be an object with a string 'name'", code="malformed_request"
                )
            out_params = _parse_parameters(item.get("parameters"), f"output {item['name']!r}")
            refuse_unsupported(out_params, f"output {item['name']!r}")
            flag = out_params.get("binary_data", req.binary_output)
            slot = shm_output(shm, item["name"], out_params)
            req.outputs.append(RequestedOutput(item["name"], flag is True and slot is None, slot))
    return req


def encode_rest_response(
    model: str,
    request_id: str | None,
    outputs: Mapping[str, torch.Tensor],
    binary: Mapping[str, bool],
    in_shm: Collection[str] = (),
) -> tuple[list[bytes | memoryview], int | None]:
    """Outputs (in answer order) -> (body parts, JSON header length or None for plain
    JSON). The parts are the JSON header then each binary tensor's bytes as a view of
    the tensor: written one after the other, never joined into a copy. Outputs in
    ``in_shm`` were written into shared memory: their entries carry neither data nor
    parameters (Triton's form; perf_analyzer reads any output ``parameters`` as
    binary data)."""
    entries: list[dict[str, Any]] = []
    chunks: list[memoryview] = []
    for name, t in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": of_tensor(t).v2, "shape": list(t.shape)}
        if name in in_shm:
            entries.append(entry)  # its bytes are in the region already
            continue
        if binary.get(name, False):
            raw = tensor_bytes(t)
            # Output-level parameters only with binary_data_size: perf_analyzer's C++
            # client requires that key whenever an output has parameters.
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(t)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": MODEL_VERSION}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return [head], None
    return [head, *chunks], len(head)
