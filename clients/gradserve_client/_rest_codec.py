"""V2 REST on the wire: ``InferRequest`` -> the POST /v2/models/{op}/infer request,
its answer -> ``Outputs``.

Flow position: ``_http_common._HttpCommon`` -> **http_infer_request** (binary tensor
extension, or plain JSON with ``binary=False``) -> ``HttpRequest`` -> a sender
(``_pool``, ``_httpx``) -> the answer's headers and body -> **decode_http_infer** ->
``Outputs``. A non-2xx answer goes to ``_error_map.http_error`` instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
from numpy.typing import NDArray

from gradserve_client._outputs import Outputs, decode_tensor
from gradserve_client._tensors import V2_TO_NUMPY, InferRequest, Scalar
from gradserve_client.errors import ServerError

# JSON has no NaN or infinity; gradserve spells them as strings (the protobuf JSON
# convention), both ways.
_NONFINITE_JSON = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def model_path(op: str) -> str:
    # quote: an op name is user input and must not escape its path segment.
    return f"/v2/models/{quote(op, safe='')}"


def http_infer_request(request: InferRequest, *, binary: bool) -> HttpRequest:
    """The POST /v2/models/{op}/infer of ``request``.

    Binary (the default): the JSON header names each input with ``binary_data_size``
    and asks for binary outputs; the raw tensors follow it, located by the
    Inference-Header-Content-Length header. JSON: flat ``data`` lists, JSON outputs.
    """
    params: dict[str, Scalar] = dict(request.params)
    header: dict[str, Any] = {"inputs": []}
    chunks: list[bytes | memoryview] = []
    for t in request.inputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary:
            raw = t.view()  # no copy: the join below is the body's one copy
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            chunks.append(raw)
        else:
            entry["data"] = t.json_data()
        header["inputs"].append(entry)
    if request.outputs is not None:
        header["outputs"] = [
            {"name": name, "parameters": {"binary_data": True}} if binary else {"name": name}
            for name in request.outputs
        ]
    elif binary:
        params["binary_data_output"] = True
    if params:
        header["parameters"] = params
    head = json.dumps(header, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
    if binary:
        headers["Inference-Header-Content-Length"] = str(len(head))
    return HttpRequest("POST", f"{model_path(request.op)}/infer", headers, b"".join([head, *chunks]))


def decode_http_infer(headers: Mapping[str, str], body: bytes) -> Outputs:
    """A V2 REST infer answer (binary extension or JSON) -> ``Outputs``."""
    header_len = headers.get("inference-header-content-length")
    try:
        binary = bytearray()
        if header_len is None:
            head = json.loads(body)
        else:
            n = int(header_len)
            # bytearray: writable arrays (one copy; the memoryview saves a second)
            head, binary = json.loads(body[:n]), bytearray(memoryview(body)[n:])
        outputs = Outputs(datatypes={o["name"]: o["datatype"] for o in head["outputs"]})
        offset = 0
        for o in head["outputs"]:
            name, datatype, shape = o["name"], o["datatype"], o["shape"]
            size = (o.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                outputs[name] = decode_tensor(
                    name, datatype, shape, memoryview(binary)[offset : offset + size]
                )
                offset += size
            else:
                outputs[name] = _decode_json_data(name, datatype, shape, o["data"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ServerError(f"unreadable V2 infer answer: {exc}") from None
    return outputs


def _decode_json_data(name: str, datatype: str, shape: Sequence[int], data: Any) -> NDArray[Any]:
    # BF16 values arrive as JSON numbers; like binary BF16 they become float32 (exact).
    dtype = np.dtype(np.float32) if datatype == "BF16" else V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise ServerError(f"output {name!r}: datatype {datatype!r} cannot be read from JSON data")
    values = np.asarray(data, dtype=object).ravel()
    if dtype.kind == "f":
        values = np.asarray([_NONFINITE_JSON.get(v, v) if isinstance(v, str) else v for v in values])
    return np.asarray(values, dtype=dtype.newbyteorder("=")).reshape(tuple(shape))
