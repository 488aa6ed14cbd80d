"""The I/O-free heart of every client: encoding, decoding, error mapping, retry timing.

Nothing here opens a socket or sleeps. The four clients (``_http.py`` and
``_grpc.py``, each sync and async) only move the bytes this module builds and hand
back what it parses, so their behaviour cannot drift apart:

- tensors in (numpy, nested lists, scalars, torch) -> ``WireTensor`` (V2 datatype,
  shape, little-endian row-major array);
- ``InferRequest`` -> a V2 REST body (binary tensor extension or plain JSON) or a gRPC
  ``ModelInferRequest`` (``raw_input_contents``);
- V2 REST / gRPC answers -> ``Outputs`` (numpy arrays keyed by output name);
- HTTP statuses and gRPC codes -> the exception tree of ``errors.py``;
- error mapping; retry timing (``RetryPolicy``, ``Deadline``) is in ``_retry.py``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeAlias
from urllib.parse import quote

import numpy as np
from numpy.typing import NDArray

from gradserve_client import _tls

# Retry timing lives in _retry.py; re-exported here, where the clients import it from.
from gradserve_client._retry import NO_RETRY as NO_RETRY
from gradserve_client._retry import Deadline as Deadline
from gradserve_client._retry import RetryPolicy as RetryPolicy
from gradserve_client._retry import give_up as give_up
from gradserve_client.errors import (
    GradserveError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    ServerError,
    TimedOutError,
    TlsError,
    TooLargeError,
    UnauthenticatedError,
    UnavailableError,
)

#: Anything the clients accept as a tensor: a numpy array, a nested list or scalar,
#: or a torch tensor (torch is never imported unless such a tensor is passed).
TensorLike: TypeAlias = Any
#: A request parameter: a scalar, or a sequence of ints (``shape``), sent as "500,500".
ParamValue: TypeAlias = bool | int | float | str | Sequence[int] | None
#: A V2 parameter value as it travels on the wire.
Scalar: TypeAlias = bool | int | float | str

MODEL_VERSION = "1"

# V2 datatype <-> numpy dtype (little-endian). BF16 has no numpy dtype: its 2-byte
# patterns travel as uint16 and are widened to float32 on the way out (exactly).
_V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}
# Keyed by (kind, itemsize) so that byte order does not matter; BF16 is left out
# (its uint16 carrier would shadow UINT16).
_NUMPY_TO_V2: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in _V2_TO_NUMPY.items() if name != "BF16"
}
# JSON has no NaN or infinity; gradserve spells them as strings (the protobuf JSON
# convention), both ways.
_NONFINITE_JSON = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# -- tensors in ----------------------------------------------------------------------


@dataclass(frozen=True)
class WireTensor:
    """One input tensor, ready for the wire: V2 datatype, shape and a little-endian,
    C-contiguous array (for BF16: the uint16 bit patterns)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: NDArray[Any]

    def raw(self) -> bytes:
        """The bytes of the binary extension and of gRPC ``raw_input_contents``."""
        return self.array.tobytes()

    def json_data(self) -> list[Any]:
        """A flat row-major list for a V2 JSON body."""
        # BF16 travels as its float32 value, which is exact; the server rounds it back.
        array = _bf16_to_float32(self.array) if self.datatype == "BF16" else self.array
        flat: list[Any] = array.ravel().tolist()
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            flat = [_json_float(v) for v in flat]
        return flat


def _json_float(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _is_torch_tensor(value: object) -> bool:
    # Checked by module name so that torch is never imported by the client itself.
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def to_wire(name: str, value: TensorLike, *, float_input: bool = False) -> WireTensor:
    """Turn one user tensor into a ``WireTensor`` (InvalidInputError if it cannot be one).

    numpy arrays and torch tensors keep their dtype. Nested lists and scalars follow
    the native API's defaults: float32 for floats, int64 for integers, and float32
    for integers too when ``float_input`` (an activation's ``x``, a loss's ``input``).
    """
    if _is_torch_tensor(value):
        return _torch_to_wire(name, value)
    if isinstance(value, np.ndarray):
        array: NDArray[Any] = value
        if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16, if the caller uses it
            return _wire(name, "BF16", array.view(np.uint16))
    else:
        try:
            array = np.asarray(value)
        except ValueError as exc:
            raise InvalidInputError(f"input {name!r}: not a rectangular numeric tensor ({exc})") from None
        if array.dtype.kind == "f" or (float_input and array.dtype.kind in "iu"):
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int64)
    datatype = _NUMPY_TO_V2.get((array.dtype.kind, array.dtype.itemsize))
    if datatype is None:
        raise InvalidInputError(f"input {name!r}: dtype {array.dtype} has no V2 datatype")
    return _wire(name, datatype, array)


def _torch_to_wire(name: str, tensor: Any) -> WireTensor:
    torch: Any = sys.modules["torch"]  # imported already: the caller holds a tensor
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return _wire(name, "BF16", t.view(torch.int16).numpy().view(np.uint16))
    return to_wire(name, t.numpy())


def _wire(name: str, datatype: str, array: NDArray[Any]) -> WireTensor:
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return WireTensor(name, datatype, tuple(int(d) for d in array.shape), np.ascontiguousarray(little))


def encode_inputs(
    inputs: Mapping[str, TensorLike] | None, float_inputs: Iterable[str] = ()
) -> list[WireTensor]:
    """All named inputs as ``WireTensor``; ``None`` values are left out (optional inputs)."""
    floats = set(float_inputs)
    return [
        to_wire(name, value, float_input=name in floats)
        for name, value in (inputs or {}).items()
        if value is not None
    ]


def encode_params(params: Mapping[str, ParamValue] | None) -> dict[str, Scalar]:
    """Params as V2 request parameters: ``None`` is left out (the server's default
    applies) and a sequence of ints (an init ``shape``) becomes ``"500,500"``."""
    encoded: dict[str, Scalar] = {}
    for name, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool | int | float | str):
            encoded[name] = value
        elif isinstance(value, Sequence) and all(isinstance(d, int | np.integer) for d in value):
            encoded[name] = ",".join(str(int(d)) for d in value)
        else:
            raise InvalidInputError(
                f"param {name!r}: expected a bool, number, string or sequence of ints, got {value!r}"
            )
    return encoded


# -- the families --------------------------------------------------------------------


def activation_inputs(x: TensorLike, inputs: Mapping[str, TensorLike] | None) -> list[WireTensor]:
    """An activation's tensors: ``x`` plus extra ones (prelu's ``alpha``, ``grad_y``...)."""
    return encode_inputs({"x": x, **(inputs or {})}, float_inputs=("x",))


def loss_inputs(
    input: TensorLike | None, target: TensorLike | None, inputs: Mapping[str, TensorLike] | None
) -> list[WireTensor]:
    """A loss's tensors. ``input``/``target`` may be None for ops that name theirs
    differently (regularization's ``weight``; full_loss's ``x`` and ``weight``)."""
    return encode_inputs({"input": input, "target": target, **(inputs or {})}, float_inputs=("input",))


@dataclass(frozen=True)
class InferRequest:
    """One V2 inference call, transport-neutral. ``outputs`` None: the op's plain outputs."""

    op: str
    inputs: list[WireTensor]
    params: dict[str, Scalar]
    outputs: tuple[str, ...] | None = None


# -- metadata ------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """V2 model metadata of one op: its input and output tensors."""

    name: str
    platform: str
    versions: tuple[str, ...]
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]

    @property
    def grad_outputs(self) -> tuple[str, ...]:
        """Outputs that are gradients: named ``grad_<input>`` (API.md section 1)."""
        names = {t.name for t in self.inputs}
        return tuple(o.name for o in self.outputs if o.name.startswith("grad_") and o.name[5:] in names)

    @property
    def plain_outputs(self) -> tuple[str, ...]:
        grads = set(self.grad_outputs)
        return tuple(o.name for o in self.outputs if o.name not in grads)


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class OpInfo:
    """One entry of the op catalog (GET /v1/ops)."""

    name: str
    family: str
    kind: str
    doc: str
    inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...]
    params: dict[str, Any]  # name -> default
    outputs: tuple[str, ...]
    grad_outputs: tuple[str, ...]


def model_metadata_from_json(body: Mapping[str, Any]) -> ModelMetadata:
    def tensors(key: str) -> tuple[TensorMetadata, ...]:
        return tuple(
            TensorMetadata(t["name"], t["datatype"], tuple(int(d) for d in t["shape"]))
            for t in body.get(key, ())
        )

    return ModelMetadata(
        str(body["name"]),
        str(body.get("platform", "")),
        tuple(body.get("versions", ())),
        tensors("inputs"),
        tensors("outputs"),
    )


def model_metadata_from_grpc(msg: Any) -> ModelMetadata:
    def tensors(items: Any) -> tuple[TensorMetadata, ...]:
        return tuple(TensorMetadata(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in items)

    return ModelMetadata(
        msg.name, msg.platform, tuple(msg.versions), tensors(msg.inputs), tensors(msg.outputs)
    )


def ops_from_catalog(body: Mapping[str, Any]) -> list[OpInfo]:
    return [
        OpInfo(
            name=op["name"],
            family=op["family"],
            kind=op["kind"],
            doc=op.get("doc", ""),
            inputs=tuple(t["name"] for t in op["inputs"]),
            optional_inputs=tuple(t["name"] for t in op["inputs"] if t.get("optional")),
            params={p["name"]: p.get("default") for p in op["params"]},
            outputs=tuple(op["outputs"]),
            grad_outputs=tuple(op.get("grad_outputs", ())),
        )
        for op in body["ops"]
    ]


def wanted_outputs(meta: ModelMetadata, sent: Iterable[WireTensor]) -> tuple[str, ...]:
    """The outputs of ``grad=True``: the plain outputs, then the gradient of each input
    that was sent. (An optional input left out has no gradient to ask for; prelu's
    default ``alpha`` is the one case where the server could still give one, so send
    ``alpha`` to get ``grad_alpha``.)"""
    names = {t.name for t in sent}
    return meta.plain_outputs + tuple(g for g in meta.grad_outputs if g[5:] in names)


# -- outputs -------------------------------------------------------------------------


class Outputs(dict[str, NDArray[Any]]):
    """An op's answer: numpy arrays keyed by output name, in the server's order.

    ``datatypes`` keeps each output's V2 datatype: a BF16 output is a float32 array
    here (numpy has no bfloat16; the widening is exact) and ``torch()`` gives it back
    as ``torch.bfloat16``.
    """

    def __init__(
        self, items: Iterable[tuple[str, NDArray[Any]]] = (), datatypes: Mapping[str, str] | None = None
    ):
        super().__init__(items)
        self.datatypes: dict[str, str] = dict(datatypes or {})

    def torch(self) -> dict[str, Any]:
        """The same outputs as CPU torch tensors (needs torch installed)."""
        import torch

        result: dict[str, Any] = {}
        for name, array in self.items():
            tensor = torch.from_numpy(np.array(array, copy=True))
            result[name] = tensor.to(torch.bfloat16) if self.datatypes.get(name) == "BF16" else tensor
        return result


def decode_tensor(
    name: str, datatype: str, shape: Sequence[int], raw: bytes | bytearray | memoryview
) -> NDArray[Any]:
    """Raw little-endian row-major bytes -> a numpy array (frombuffer, no Python lists)."""
    dtype = _V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise ServerError(f"output {name!r}: unsupported datatype {datatype!r}")
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise ServerError(
            f"output {name!r}: {len(raw)} bytes do not hold {count} {datatype} elements of shape {list(shape)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))
    if datatype == "BF16":
        return _bf16_to_float32(array)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _bf16_to_float32(bits: NDArray[Any]) -> NDArray[Any]:
    """bfloat16 bit patterns (uint16) -> float32 values: the upper half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _decode_json_data(name: str, datatype: str, shape: Sequence[int], data: Any) -> NDArray[Any]:
    # BF16 values arrive as JSON numbers; like binary BF16 they become float32 (exact).
    dtype = np.dtype(np.float32) if datatype == "BF16" else _V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise ServerError(f"output {name!r}: datatype {datatype!r} cannot be read from JSON data")
    values = np.asarray(data, dtype=object).ravel()
    if dtype.kind == "f":
        values = np.asarray([_NONFINITE_JSON.get(v, v) if isinstance(v, str) else v for v in values])
    return np.asarray(values, dtype=dtype.newbyteorder("=")).reshape(tuple(shape))


# -- V2 REST -------------------------------------------------------------------------


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
    chunks: list[bytes] = []
    for t in request.inputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary:
            raw = t.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
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
            head, binary = json.loads(body[:n]), bytearray(body[n:])  # bytearray: writable arrays
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


def http_error(status: int, headers: Mapping[str, str], body: bytes) -> GradserveError:
    """A non-2xx answer -> its exception, carrying the server's message.

    Reads both error bodies: V2 ``{"error": "msg"}`` and native ``{"error": {"code", "message"}}``.
    """
    message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        parsed = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message", message))
        elif isinstance(error, str):
            message = error
    except ValueError:
        pass
    retry_after: float | None = None
    if "retry-after" in headers:
        try:
            retry_after = float(headers["retry-after"])
        except ValueError:
            retry_after = None  # an HTTP-date: the backoff schedule applies instead
    cls = _HTTP_STATUS.get(status, ServerError if status >= 500 else GradserveError)
    error = cls(message, status=status, retry_after_s=retry_after)
    error.request_id = headers.get(REQUEST_ID_KEY)
    return error


_HTTP_STATUS: dict[int, type[GradserveError]] = {
    400: InvalidInputError,
    401: UnauthenticatedError,
    404: NotFoundError,
    413: TooLargeError,
    422: InvalidInputError,
    429: OverloadedError,
    503: UnavailableError,
    504: TimedOutError,
}


# -- V2 gRPC -------------------------------------------------------------------------


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


def decode_grpc_infer(msg: Any) -> Outputs:
    """A ``ModelInferResponse`` -> ``Outputs`` (raw contents; typed contents as a fallback)."""
    outputs = Outputs(datatypes={o.name: o.datatype for o in msg.outputs})
    raw = list(msg.raw_output_contents)
    for i, o in enumerate(msg.outputs):
        shape = [int(d) for d in o.shape]
        if i < len(raw):
            outputs[o.name] = decode_tensor(o.name, o.datatype, shape, bytearray(raw[i]))
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
    return np.asarray(list(getattr(contents, field_name)), dtype=_V2_TO_NUMPY[datatype]).reshape(tuple(shape))


# The trailing-metadata key in which gradserve names the error (its error code).
ERROR_CODE_KEY = "gradserve-error-code"
#: The server's id of a request: an HTTP answer header, a gRPC trailer.
REQUEST_ID_KEY = "x-request-id"
_EXHAUSTED_BY_CODE: dict[str, type[GradserveError]] = {
    "queue_full": OverloadedError,
    "request_too_large": TooLargeError,
    "device_out_of_memory": ServerError,
}


def grpc_error(
    code: str,
    details: str,
    error_code: str | None = None,
    *,
    client_closed: bool = False,
    deadline_passed: bool = False,
) -> GradserveError:
    """A gRPC status (and gradserve's error code from the trailers) -> its exception.

    RESOURCE_EXHAUSTED means two things on gradserve: a full queue (retry) and a
    request over a size limit (never retry: it would fail the same way). The
    ``gradserve-error-code`` trailer tells them apart; without it (another server, a
    proxy that drops trailers) the message does ("queue full ..."; grpcio's own
    "Concurrent RPC limit exceeded!", sent before the call starts, is an overload
    too), and anything else is treated as too large.

    CANCELLED that the client did not cause is retried (``UnavailableError``): grpcio
    ends calls CANCELLED under a burst of thousands of concurrent calls and while a
    server drains, and every op is a pure function, so a retry is safe. The client
    caused it when it closed its own channel (``client_closed``), which is final, or
    when its deadline had passed (``deadline_passed``), which is a timeout. (A call
    the caller cancels through asyncio raises CancelledError, never reaching here.)
    """
    message = details or code
    cls: type[GradserveError]
    if code == "CANCELLED":
        if deadline_passed:
            cls = TimedOutError
        elif client_closed:
            cls = ServerError
        else:
            cls = UnavailableError
    elif code == "RESOURCE_EXHAUSTED" and error_code in _EXHAUSTED_BY_CODE:
        cls = _EXHAUSTED_BY_CODE[error_code]
    elif code == "RESOURCE_EXHAUSTED":
        lowered = message.lower()
        if "queue full" in lowered or "concurrent rpc limit" in lowered:
            cls = OverloadedError
        elif "out of memory" in lowered:
            cls = ServerError
        else:
            cls = TooLargeError
    elif code == "UNAVAILABLE" and _tls.grpc_handshake_failed(message):
        cls = TlsError  # a matter of trust, not of load: not retried
    else:
        cls = _GRPC_CODE.get(code, ServerError)
    return cls(message, grpc_code=code)


_GRPC_CODE: dict[str, type[GradserveError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "NOT_FOUND": NotFoundError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": TimedOutError,
}
