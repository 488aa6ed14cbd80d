"""Native REST (/v1) tensor codec: JSON values <-> torch tensors.

Requests may give a tensor as a nested list, as ``{"dtype", "shape", "data"}`` (flat
row-major list) or as ``{"dtype", "shape", "b64"}`` (little-endian row-major bytes).
Responses are ``{"dtype", "shape", "data"}`` with nested lists. JSON has no NaN or
infinity, so non-finite values travel as the strings "NaN", "Infinity" and
"-Infinity" (the protobuf JSON convention) both ways.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np
import orjson
import torch

from gradserve.codecs.dtypes import BY_NAME, DType, by_name, of_tensor
from gradserve.codecs.numbers import HARD_MAX_DIMS, check_shape_size, json_array, to_torch
from gradserve.errors import InvalidInput
from gradserve.ops.registry import TensorKind


def default_dtype(kind: TensorKind, array: np.ndarray) -> DType:
    """The dtype a plain nested list gets: float32 for floats, int64 for indices."""
    if kind in ("index", "int"):
        return BY_NAME["int64"]
    if kind == "target" and array.dtype.kind in "iu":
        return BY_NAME["int64"]
    return BY_NAME["float32"]


def _parse_shape(name: str, shape: Any, max_elements: int) -> tuple[tuple[int, ...], int]:
    """A request shape and its element count; 413 past the limits (numbers.py says why a
    zero dimension does not make a shape free)."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of integers", code="bad_shape")
    if any(d < 0 for d in shape):
        raise InvalidInput(
            f"input {name!r}: negative dimension in shape {shape[:HARD_MAX_DIMS]}", code="bad_shape"
        )
    count = check_shape_size(f"input {name!r}", shape, max_elements)
    return tuple(shape), count


def _from_values(name: str, values: Any, kind: TensorKind, max_elements: int) -> np.ndarray:
    """Nested list (or scalar) -> int64 or float64 array, refusing ragged and non-numeric data."""
    return json_array(
        f"input {name!r}", values, strings=kind in ("float", "target"), max_elements=max_elements
    )


def decode_tensor(name: str, value: Any, kind: TensorKind, max_elements: int) -> torch.Tensor:
    """Decode one request tensor of the native API."""
    if isinstance(value, dict):
        return _decode_object(name, value, kind, max_elements)
    if isinstance(value, bool) or not isinstance(value, (list, int, float, str)):
        raise InvalidInput(
            f"input {name!r}: expected a nested list or an object with dtype, shape and data or b64",
            code="bad_tensor",
        )
    array = _from_values(name, value, kind, max_elements)
    if kind == "index" and array.dtype.kind == "f" and not bool(np.all(np.mod(array, 1) == 0)):
        # The generic "int64 needs integer values" would not say what the input is.
        raise InvalidInput(
            f"input {name!r}: class indices are expected, as integers; got a non-integer value",
            code="bad_tensor",
        )
    return to_torch(f"input {name!r}", array, default_dtype(kind, array).torch)


def _decode_object(name: str, value: dict[str, Any], kind: TensorKind, max_elements: int) -> torch.Tensor:
    unknown = set(value) - {"dtype", "shape", "data", "b64"}
    if unknown:
        raise InvalidInput(
            f"input {name!r}: unknown key(s) {sorted(unknown)[:8]}; expected dtype, shape and data or b64",
            code="bad_tensor",
        )
    if "shape" not in value or ("data" in value) == ("b64" in value):
        raise InvalidInput(
            f"input {name!r}: an object tensor needs 'shape' and exactly one of 'data' or 'b64'",
            code="bad_tensor",
        )
    shape, count = _parse_shape(name, value["shape"], max_elements)
    if "b64" in value:
        dtype = by_name(value.get("dtype", "float32"), f"input {name!r}")
        return _decode_b64(name, value["b64"], dtype, shape, count)
    data = value["data"]
    array = _from_values(name, data if isinstance(data, list) else [data], kind, max_elements)
    if array.ndim != 1:
        raise InvalidInput(f"input {name!r}: 'data' must be a flat list", code="bad_tensor")
    if array.size != count:
        raise InvalidInput(
            f"input {name!r}: data has {array.size} elements but shape {list(shape)} needs {count}",
            code="shape_mismatch",
        )
    dtype = by_name(value["dtype"], f"input {name!r}") if "dtype" in value else default_dtype(kind, array)
    return to_torch(f"input {name!r}", array, dtype.torch).reshape(shape)


def _decode_b64(name: str, text: Any, dtype: DType, shape: tuple[int, ...], count: int) -> torch.Tensor:
    if not isinstance(text, str):
        raise InvalidInput(f"input {name!r}: 'b64' must be a string", code="bad_base64")
    expected = count * dtype.itemsize
    # Check the encoded length first, so a huge string is refused before decoding it.
    if len(text) > 4 * (-(-expected // 3)) + 4:
        raise InvalidInput(
            f"input {name!r}: b64 holds more than the {expected} bytes that shape {list(shape)} "
            f"of {dtype.name} needs",
            code="shape_mismatch",
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"input {name!r}: invalid base64", code="bad_base64") from None
    if len(raw) != expected:
        raise InvalidInput(
            f"input {name!r}: b64 decodes to {len(raw)} bytes but shape {list(shape)} of "
            f"{dtype.name} needs {expected}",
            code="shape_mismatch",
        )
    if expected == 0:
        return torch.empty(shape, dtype=dtype.torch)
    return torch.frombuffer(bytearray(raw), dtype=dtype.torch).reshape(shape)


def _nonfinite_to_str(values: Any) -> Any:
    if isinstance(values, list):
        return [_nonfinite_to_str(v) for v in values]
    if isinstance(values, float) and not math.isfinite(values):
        return "NaN" if math.isnan(values) else ("Infinity" if values > 0 else "-Infinity")
    return values


def encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    """One response tensor: dtype, shape and nested-list data (a number for shape [])."""
    dtype = of_tensor(t)
    t = t.detach().cpu()
    data: Any
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        data = _nonfinite_to_str(t.tolist())
    else:
        # orjson writes numpy arrays and scalars natively (far faster than tolist() and
        # dumps), each float in the shortest form that reads back to the same value of
        # its dtype; bfloat16, which numpy lacks, goes as float32 (exact).
        array = t.numpy() if dtype.numpy is not None else t.float().numpy()
        data = array[()] if t.dim() == 0 else array
    return {"dtype": dtype.name, "shape": list(t.shape), "data": data}


def dumps(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
