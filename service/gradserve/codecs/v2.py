"""Open Inference Protocol (V2) codec: the request type and tensor checks both V2
transports share, and REST JSON + binary tensor data.

Flow position: transport (rest/v2.py; grpc/servicer.py via codecs/v2_grpc.py) ->
**codecs/v2** -> engine. A V2 request decodes into a ``V2Request`` (op, tensors, params,
requested outputs with their binary flags, id); ``engine_inputs`` turns it into what
``Engine.infer`` takes. Responses encode back from the engine's output tensors. Model
metadata and config live in codecs/v2_models.py.

Binary tensors (the HTTP binary extension and gRPC ``raw_*_contents`` share one byte
layout: little-endian, row-major, unpadded) are decoded with ``torch.frombuffer`` and a
reshape, never through Python lists. Every size is checked against the shape and
datatype before a byte is read, so a truncated body, a header length past the end or a
``binary_data_size`` that does not match is a 400, never a read past the buffer.

Shared memory (Triton's system shared-memory extension): a tensor whose parameters
name a ``shared_memory_region`` has no data in the request; the registry (shm.py)
checks its size, bounds and region and hands back a view, read like a binary section.
A requested output that names a region is written there (``write_shm_outputs``) and
answered without data.

Status choices (API.md section 4): a request whose framing is wrong (bad JSON, sizes
that disagree, a string that is no V2 datatype, data whose element count does not match
its shape) is 400; a well-formed request that the op refuses (a V2 datatype gradserve
does not take such as BOOL, a bad value, wrong shapes for the op) is 422.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import torch

from gradserve.codecs.dtypes import BY_V2, DType, of_tensor
from gradserve.codecs.numbers import HARD_MAX_DIMS, check_shape_size, json_array, to_torch
from gradserve.errors import InvalidInput, MalformedRequest, NotSupported
from gradserve.ops.registry import OpSpec
from gradserve.shm import OutputSlot, SharedMemory, ShmRef, ref_from_params

# The wire is little-endian; torch/numpy buffers are native-endian.
assert sys.byteorder == "little", "gradserve's V2 codec assumes a little-endian host"

SERVER_NAME = "gradserve"
MODEL_VERSION = "1"
PLATFORM = "gradserve"
# Advertised in server metadata. Not "statistics": perf_analyzer would then poll a
# statistics endpoint we do not serve (research notes section 3.3).
EXTENSIONS = ("binary_tensor_data", "model_configuration", "parameters")

# Every V2 datatype with its element size (None: variable, BYTES). Lets us tell "not a
# V2 datatype at all" (400, the framing is unreadable) from "a V2 datatype gradserve
# does not take" (422, BOOL/UINT8/...), and size a binary section of either.
V2_ITEMSIZE: dict[str, int | None] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "BF16": 2,
    "FP32": 4,
    "FP64": 8,
    "BYTES": None,
}

# Request parameters that belong to the protocol (Triton reserves them), never op params.
_RESERVED_PARAMS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers"}
)
# Input/output parameters of Triton extensions gradserve does not implement: refused
# with a clear 400 rather than silently ignored (ignoring would read no data).
_UNSUPPORTED_TENSOR_PARAMS = frozenset({"classification"})


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool  # REST only: answer this output in the binary section
    # Written into this shared-memory region, not sent (checked at decode).
    shm: OutputSlot | None = None


@dataclass
class V2Request:
    """One decoded V2 request, transport-neutral."""

    tensors: dict[str, torch.Tensor]
    params: dict[str, Any]
    # None: the client named no outputs (the op's plain outputs are returned).
    outputs: list[RequestedOutput] | None
    binary_output: bool = False  # request-level binary_data_output
    id: str | None = None
    # From the `timeout` parameter (microseconds, Triton's queue timeout).
    timeout_s: float | None = None

    @property
    def output_names(self) -> list[str] | None:
        return None if self.outputs is None else [o.name for o in self.outputs]

    @property
    def shm_outputs(self) -> list[OutputSlot]:
        return [] if self.outputs is None else [o.shm for o in self.outputs if o.shm is not None]

    def binary_flags(self, names: Sequence[str]) -> dict[str, bool]:
        """Per answered output, whether it goes in the binary section."""
        if self.outputs is None:
            return {n: self.binary_output for n in names}
        return {o.name: o.binary for o in self.outputs}


# ---------------------------------------------------------------- tensors <-> bytes


def v2_dtype(datatype: object, where: str) -> DType:
    """V2 datatype string -> our dtype: 400 for a non-V2 string, 422 for one we refuse."""
    if not isinstance(datatype, str) or datatype not in V2_ITEMSIZE:
        raise MalformedRequest(
            f"{where}: unknown datatype {datatype!r}; expected one of {', '.join(BY_V2)}",
            code="unknown_dtype",
        )
    dtype = BY_V2.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"{where}: datatype {datatype} is not supported; expected one of {', '.join(BY_V2)}",
            code="bad_dtype",
        )
    return dtype


def check_shape(shape: object, where: str, max_elements: int) -> tuple[tuple[int, ...], int]:
    """A V2 shape (list of non-negative ints) and its element count, within the limits
    (numbers.check_shape_size: dims, elements, and elements spanned past zero dims)."""
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise MalformedRequest(f"{where}: 'shape' must be a list of integers", code="bad_shape")
    if any(d < 0 for d in shape):
        raise MalformedRequest(
            f"{where}: negative dimension in shape {list(shape)[:HARD_MAX_DIMS]}", code="bad_shape"
        )
    count = check_shape_size(where, list(shape), max_elements)
    return tuple(shape), count


def tensor_from_buffer(
    where: str,
    dtype: DType,
    shape: tuple[int, ...],
    count: int,
    buf: bytes | bytearray | memoryview,
    *,
    aligned: bool = False,
) -> torch.Tensor:
    """Raw little-endian row-major bytes -> tensor; the size was checked by the caller.

    A writable buffer that the caller knows is aligned for the dtype (a slice of a body
    that rest/body.py read into an aligned buffer) becomes the tensor's memory: no copy.
    Anything else (a protobuf ``bytes``, a misaligned slice) is copied once into a fresh
    ``bytearray``: torch must not alias memory it may not write, nor read a dtype
    misaligned.
    """
    if len(buf) != count * dtype.itemsize:  # callers check; this keeps the function safe alone
        raise MalformedRequest(
            f"{where}: {len(buf)} bytes of data, but shape {list(shape)} of {dtype.v2} needs "
            f"{count * dtype.itemsize}",
            code="size_mismatch",
        )
    if count == 0:
        return torch.empty(shape, dtype=dtype.torch)
    usable = isinstance(buf, bytearray) or (aligned and isinstance(buf, memoryview) and not buf.readonly)
    source = buf if usable else bytearray(buf)
    return torch.frombuffer(source, dtype=dtype.torch, count=count).reshape(shape)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's little-endian row-major bytes, as a view (no copy for a CPU tensor)."""
    if t.device.type != "cpu":
        t = t.cpu()
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; the bits are the same as int16's
        t = t.view(torch.int16)
    if t.numel() == 0:  # memoryview cannot cast a view with a zero in its shape
        return memoryview(b"")
    array = t.numpy()
    return (array if array.ndim else array.reshape(1)).data.cast("B")


def tensor_from_json(where: str, dtype: DType, shape: tuple[int, ...], count: int, data: Any) -> torch.Tensor:
    """The ``data`` of a JSON input (flat or nested) -> tensor of ``shape`` (count checked
    before reshaping; values checked against the datatype's range)."""
    array = json_array(
        where,
        data if isinstance(data, list) else [data],
        strings=dtype.torch.is_floating_point,
        max_elements=None,  # the data is in the body: its cost is the body's
        ragged_error=MalformedRequest,
    )
    if array.size != count:
        raise MalformedRequest(
            f"{where}: 'data' has {array.size} elements but shape {list(shape)} needs {count}",
            code="size_mismatch",
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


# ---------------------------------------------------------------- REST


def _parse_parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedRequest(f"{where}: 'parameters' must be a JSON object", code="malformed_request")
    return value


def split_request_params(req: V2Request, params: Mapping[str, Any]) -> None:
    """Protocol parameters -> request fields; the rest are op params (unknown ones are
    ignored by the engine's lenient mode, as V2 clients add their own)."""
    for key, value in params.items():
        if key == "binary_data_output":
            req.binary_output = value is True or (isinstance(value, str) and value.lower() == "true")
        elif key == "timeout":
            # Triton's queue timeout in microseconds (transports cap it at our default).
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                req.timeout_s = float(value) / 1e6
        elif key in _RESERVED_PARAMS or key.startswith("triton_"):
            continue
        else:
            req.params[key] = value


def shm_input(
    shm: SharedMemory | None,
    ref: ShmRef,
    where: str,
    dtype: DType,
    shape: tuple[int, ...],
    count: int,
) -> torch.Tensor:
    """An input held in a shared-memory region: a view of the region once the registry
    has checked its size against shape and datatype, its bounds and the region."""
    if shm is None:
        raise NotSupported(f"{where}: shared memory is not offered on this transport")
    view, aligned = shm.input_view(ref, where, count * dtype.itemsize, dtype.itemsize)
    return tensor_from_buffer(where, dtype, shape, count, view, aligned=aligned)


def shm_output(shm: SharedMemory | None, name: str, params: Mapping[str, Any]) -> OutputSlot | None:
    """The region a requested output names in its parameters, checked; None if none."""
    ref = ref_from_params(params, f"output {name!r}")
    if ref is None:
        return None
    if shm is None:
        raise NotSupported(f"output {name!r}: shared memory is not offered on this transport")
    return shm.output_slot(name, ref)


def write_shm_outputs(slots: Sequence[OutputSlot], outputs: Mapping[str, torch.Tensor]) -> None:
    """Each answered output that names a region, written into it (sizes checked there).
    Blocking writes: transports run this off the event loop when it is large."""
    for slot in slots:
        t = outputs[slot.name]
        SharedMemory.write_output(slot, tensor_bytes(t))


def shm_bytes(slots: Sequence[OutputSlot], outputs: Mapping[str, torch.Tensor]) -> int:
    """How many bytes ``write_shm_outputs`` will write (to decide where it runs)."""
    return sum(outputs[s.name].numel() * outputs[s.name].element_size() for s in slots)


def refuse_unsupported(params: Mapping[str, Any], where: str) -> None:
    bad = sorted(_UNSUPPORTED_TENSOR_PARAMS.intersection(params))
    if bad:
        raise MalformedRequest(
            f"{where}: parameter(s) {', '.join(bad)} (shared memory / classification) are not supported",
            code="unsupported_extension",
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
        hint = (
            ""
            if length is not None
            else " (binary tensor data needs the Inference-Header-Content-Length header)"
        )
        raise MalformedRequest(f"body is not valid JSON: {exc}{hint}", code="malformed_json") from None
    if not isinstance(doc, dict):
        raise MalformedRequest("the inference request must be a JSON object", code="malformed_json")

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
        dtype = v2_dtype(item.get("datatype"), where)
        shape, count = check_shape(item.get("shape"), where, max_elements)
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
                raise MalformedRequest(
                    f"{where}: binary_data_size is {size} but shape {list(shape)} of {dtype.v2} "
                    f"needs {expected} bytes",
                    code="size_mismatch",
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


# ---------------------------------------------------------------- engine arguments


def engine_inputs(spec: OpSpec, req: V2Request) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and params for ``Engine.infer``.

    Init ops have no tensor inputs; V2 clients may still send the weight shape as an
    INT64 input named ``shape`` (API.md section 3), which becomes the ``shape`` param.
    """
    tensors, params = dict(req.tensors), dict(req.params)
    if "shape" in tensors and "shape" in spec.param_index and "shape" not in spec.input_index:
        t = tensors.pop("shape")
        if t.dtype not in (torch.int64, torch.int32) or t.dim() > 1:
            raise InvalidInput("input 'shape': expected a 1-D INT64 tensor of dimensions", code="bad_shape")
        if "shape" in params:
            raise InvalidInput(
                "shape is given both as an input and as a parameter; give one", code="bad_shape"
            )
        params["shape"] = [int(d) for d in t.reshape(-1).tolist()]
    return tensors, params
