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
from gradserve.errors import InvalidInput, RequestTooLarge
from gradserve.ops.registry import TensorKind

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def default_dtype(kind: TensorKind, array: np.ndarray) -> DType:
    """The dtype a plain nested list gets: float32 for floats, int64 for indices."""
    if kind in ("index", "int"):
        return BY_NAME["int64"]
    if kind == "target" and array.dtype.kind in "iu":
        return BY_NAME["int64"]
    return BY_NAME["float32"]


def _check_elements(name: str, count: int, max_elements: int) -> None:
    if count > max_elements:
        raise RequestTooLarge(
            f"input {name!r}: {count} elements is over the limit of {max_elements} per tensor"
        )


def _parse_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of integers", code="bad_shape")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: negative dimension in shape {shape}", code="bad_shape")
    return tuple(shape)


def _from_values(name: str, values: Any, kind: TensorKind) -> np.ndarray:
    """Nested list (or scalar) -> numpy array, refusing ragged and non-numeric data."""
    try:
        array = np.asarray(values)
    except ValueError as exc:
        if "inhomogeneous" in str(exc):
            raise InvalidInput(
                f"input {name!r}: ragged nested list (rows of different lengths)",
                code="ragged_tensor",
            ) from None
        raise InvalidInput(f"input {name!r}: not a numeric tensor", code="bad_tensor") from None
    if array.dtype.kind in "iuf":
        return array
    if array.dtype.kind in "US" and kind in ("float", "target"):
        # Non-finite values arrive as strings; numpy parses "NaN" and "Infinity".
        try:
            return array.astype(np.float64)
        except ValueError:
            pass
    if array.dtype == object and kind in ("float", "target"):
        try:
            return np.asarray(
                [_NONFINITE.get(v, v) if isinstance(v, str) else v for v in array.ravel()],
                dtype=np.float64,
            ).reshape(array.shape)
        except (ValueError, TypeError):
            pass
    raise InvalidInput(
        f"input {name!r}: elements must be numbers (got {array.dtype.kind!r} data)", code="bad_tensor"
    )


def _to_torch(name: str, array: np.ndarray, dtype: DType) -> torch.Tensor:
    if dtype.torch.is_floating_point:
        # Through float64 so JSON's doubles round once, to the target dtype.
        return torch.as_tensor(array.astype(np.float64, order="C")).to(dtype.torch)
    if array.dtype.kind == "f" and (not np.all(np.isfinite(array)) or not np.all(array == np.round(array))):
        raise InvalidInput(f"input {name!r}: dtype {dtype.name} needs integer values", code="bad_tensor")
    return torch.as_tensor(array.astype(dtype.numpy, order="C"))


def decode_tensor(name: str, value: Any, kind: TensorKind, max_elements: int) -> torch.Tensor:
    """Decode one request tensor of the native API."""
    if isinstance(value, dict):
        return _decode_object(name, value, kind, max_elements)
    if isinstance(value, bool) or not isinstance(value, (list, int, float, str)):
        raise InvalidInput(
            f"input {name!r}: expected a nested list or an object with dtype, shape and data or b64",
            code="bad_tensor",
        )
    array = _from_values(name, value, kind)
    _check_elements(name, array.size, max_elements)
    return _to_torch(name, array, default_dtype(kind, array))


def _decode_object(name: str, value: dict[str, Any], kind: TensorKind, max_elements: int) -> torch.Tensor:
    unknown = set(value) - {"dtype", "shape", "data", "b64"}
    if unknown:
        raise InvalidInput(
            f"input {name!r}: unknown key(s) {sorted(unknown)}; expected dtype, shape and data or b64",
            code="bad_tensor",
        )
    if "shape" not in value or ("data" in value) == ("b64" in value):
        raise InvalidInput(
            f"input {name!r}: an object tensor needs 'shape' and exactly one of 'data' or 'b64'",
            code="bad_tensor",
        )
    shape = _parse_shape(name, value["shape"])
    count = math.prod(shape)
    _check_elements(name, count, max_elements)
    if "b64" in value:
        dtype = by_name(value.get("dtype", "float32"), f"input {name!r}")
        return _decode_b64(name, value["b64"], dtype, shape, count)
    data = value["data"]
    array = _from_values(name, data if isinstance(data, list) else [data], kind)
    if array.ndim != 1:
        raise InvalidInput(f"input {name!r}: 'data' must be a flat list", code="bad_tensor")
    if array.size != count:
        raise InvalidInput(
            f"input {name!r}: data has {array.size} elements but shape {list(shape)} needs {count}",
            code="shape_mismatch",
        )
    dtype = by_name(value["dtype"], f"input {name!r}") if "dtype" in value else default_dtype(kind, array)
    return _to_torch(name, array, dtype).reshape(shape)


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
