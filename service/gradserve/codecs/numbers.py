"""JSON numbers and shapes -> arrays, with every cost bounded: shared by both JSON codecs.

Flow position: codecs/native.py and codecs/v2_rest.py (JSON tensors, shapes) -> **numbers**
-> numpy arrays that the codecs turn into tensors. The same shape check also serves
codecs/v2_grpc.py and the init ops' ``shape`` param (validation.py).

Why not ``np.asarray(values)`` on whatever the client sent: with one string among the
values numpy builds a unicode array whose item size is the longest string, so a single
16 MB string beside a million numbers asks for terabytes, and parsing one 16 MB digit
string took 20-35 s of the event loop. Here the nested lists become an object array
first (pointer copies, no parsing), the element types are looked at once, and only
then are the numbers converted, each string at most ``MAX_STRING_CHARS`` long.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from gradserve.errors import InvalidInput, RequestTooLarge

# torch refuses tensors of more than 64 dims: the codecs refuse them before torch does.
# The configurable, lower limit (Settings.max_tensor_dims) is checked by validation.py.
HARD_MAX_DIMS = 64
# Strings stand for non-finite values ("NaN", "Infinity", "-Infinity", the protobuf JSON
# spelling) or, leniently, a number written as a string; none needs more than this.
MAX_STRING_CHARS = 40
_NONFINITE = {
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
    "inf": math.inf,
    "-inf": -math.inf,
}
_INT64 = (-(2**63), 2**63 - 1)
# A number written as a string: JSON's own number syntax (a sign allowed), ASCII digits
# only. Python's float() and int() also take "1_000", surrounding spaces and other
# scripts' digits ("２"), which no JSON number is.
DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
INTEGER = re.compile(r"[+-]?\d+", re.ASCII)


def spanned_elements(shape: tuple[int, ...] | list[int]) -> int:
    """The elements a shape spans counting each zero dimension as 1.

    A shape with a zero dimension holds no element, but its JSON answer still has one
    empty list per index of the dims before it ([10**9, 0] is a billion ``[]``), and a
    zero beside dims near 2**63 overflows torch's stride arithmetic. Capping this
    count, not the element count, bounds both.
    """
    return math.prod(max(d, 1) for d in shape)


def check_shape_size(
    where: str, shape: tuple[int, ...] | list[int], max_elements: int, *, max_dims: int = HARD_MAX_DIMS
) -> int:
    """Refuse (413) a shape with too many dims or too many (spanned) elements; its element count."""
    if len(shape) > max_dims:
        raise RequestTooLarge(f"{where}: shape has {len(shape)} dimensions, over the limit of {max_dims}")
    count = math.prod(shape)
    if count > max_elements:
        raise RequestTooLarge(
            f"{where}: shape {list(shape)} has {count} elements, over the limit of {max_elements} per tensor"
        )
    spanned = spanned_elements(shape)
    if spanned > max_elements:
        raise RequestTooLarge(
            f"{where}: shape {list(shape)} spans {spanned} elements counting each zero dimension as 1 "
            f"(its answer would hold that many empty lists), over the limit of {max_elements} per tensor"
        )
    return count


def _ragged(where: str) -> InvalidInput:
    return InvalidInput(f"{where}: ragged nested list (rows of different lengths)", code="ragged_tensor")


# What a JSON encoder that allows NaN writes (Python's json.dumps by default), and
# the case-insensitive starts that other languages' printers use.
_NONFINITE_LITERALS = (b"nan", b"infinity", b"-infinity", b"inf", b"-inf")


def nonfinite_literal_hint(body: bytes | memoryview, pos: int) -> str:
    """A hint for a JSON parse error at ``pos`` that sits on a bare NaN or Infinity:
    what to send instead (the parser's own words only say "unexpected character")."""
    if pos < 0:
        return ""
    start = max(pos - 1, 0)
    near = bytes(body[start : pos + 9]).lower()
    if not any(near.startswith(w) or near[1:].startswith(w) for w in _NONFINITE_LITERALS):
        return ""
    return (
        '; JSON has no NaN or Infinity: send them as the strings "NaN", "Infinity" and '
        '"-Infinity" (Python: json.dumps writes bare NaN unless allow_nan=False)'
    )


def _string_value(where: str, text: str) -> float:
    if text in _NONFINITE:
        return _NONFINITE[text]
    if len(text) > MAX_STRING_CHARS:
        raise InvalidInput(
            f"{where}: a string of {len(text)} characters where a number should be; strings are "
            'only for "NaN", "Infinity" and "-Infinity"',
            code="bad_tensor",
        )
    if not DECIMAL.fullmatch(text):
        raise InvalidInput(
            f"{where}: elements must be numbers, got {text[:MAX_STRING_CHARS]!r}", code="bad_tensor"
        )
    value = float(text)
    if math.isinf(value):  # "1e400": finite as written, past float64 as read
        raise InvalidInput(f"{where}: {text!r} is beyond the float64 range", code="value_out_of_range")
    return value


def json_array(
    where: str,
    values: Any,
    *,
    strings: bool,
    max_elements: int | None,
) -> np.ndarray:
    """Nested JSON lists (or one number) -> an int64 or float64 array of their shape.

    All-integer data stays int64 (ints past int64 are 422); any float makes it float64.
    ``strings``: accept the non-finite spellings (float inputs). Booleans, nulls,
    objects and long strings are refused, naming ``where``.
    """
    scalar_ok = isinstance(values, (list, int, float)) or (strings and isinstance(values, str))
    if isinstance(values, bool) or not scalar_ok:
        raise InvalidInput(f"{where}: expected numbers, got {_describe(values)}", code="bad_tensor")
    try:
        objects = np.asarray(values, dtype=object)
    except ValueError:  # numpy >= 2 refuses some ragged lists even as objects
        raise _ragged(where) from None
    if max_elements is not None:
        check_shape_size(where, objects.shape, max_elements)
    flat = objects.reshape(-1)
    kinds = set(map(type, flat.tolist())) if flat.size else set()
    if kinds <= {int}:
        try:
            return flat.astype(np.int64).reshape(objects.shape)
        except OverflowError:
            raise InvalidInput(
                f"{where}: an integer is outside the int64 range [-2**63, 2**63 - 1]", code="bad_tensor"
            ) from None
    if kinds <= {int, float}:
        try:
            return flat.astype(np.float64).reshape(objects.shape)
        except OverflowError:  # an int past float64's range (more than ~308 digits)
            raise InvalidInput(f"{where}: a number is beyond the float64 range", code="bad_tensor") from None
    if list in kinds and objects.ndim >= HARD_MAX_DIMS:
        # numpy stops nesting at 64 dims and leaves the deeper lists as objects.
        raise RequestTooLarge(f"{where}: nested more than {HARD_MAX_DIMS} levels deep")
    if list in kinds:
        raise _ragged(where)
    bad = kinds - {int, float, str}
    if bad or (str in kinds and not strings):
        kind = next(iter(bad)) if bad else str
        example = next(v for v in flat.tolist() if type(v) is kind)
        raise InvalidInput(f"{where}: elements must be numbers, got {_describe(example)}", code="bad_tensor")
    out = np.empty(flat.size, dtype=np.float64)
    for i, v in enumerate(flat.tolist()):
        out[i] = _string_value(where, v) if isinstance(v, str) else v
    return out.reshape(objects.shape)


def _describe(value: Any) -> str:
    """A short, safe description of a JSON value for an error message (never its whole repr)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"a string of {len(value)} characters" if len(value) > 20 else repr(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value)[:40]


def to_torch(where: str, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A parsed array -> a tensor of ``dtype``, refusing (422) values the dtype cannot hold.

    Floats are rounded once, from float64 to the target dtype; a finite value that
    becomes infinite there (1e300 as float32) is out of range, not silently inf.
    Integers must be whole and within the dtype's range.
    """
    if dtype.is_floating_point:
        source = np.asarray(array, dtype=np.float64, order="C")
        # float32 and float16 round in numpy (cheaper than a torch cast of a small array);
        # bfloat16, which numpy lacks, rounds in torch.
        if dtype in (torch.float32, torch.float16):
            with np.errstate(over="ignore"):  # an overflow is refused just below
                out = torch.from_numpy(source.astype(np.float32 if dtype == torch.float32 else np.float16))
        else:
            out = torch.from_numpy(source).to(dtype)
        if dtype != torch.float64 and source.size:
            limit = torch.finfo(dtype).max
            # One reduction on the common path (NaN makes it False and takes the exact
            # check): a finite value that became infinite is out of the dtype's range.
            peak = np.max(np.abs(source))
            if not peak <= limit and bool(
                (torch.isinf(out) & torch.isfinite(torch.from_numpy(source))).any()
            ):
                raise InvalidInput(
                    f"{where}: a value is beyond the range of {str(dtype).removeprefix('torch.')} "
                    f"(largest {limit:.4g})",
                    code="value_out_of_range",
                )
        return out
    info = torch.iinfo(dtype)
    whole = not array.size or (bool(np.all(np.isfinite(array))) and bool(np.all(array == np.round(array))))
    if array.dtype.kind == "f" and not whole:
        raise InvalidInput(
            f"{where}: dtype {str(dtype).removeprefix('torch.')} needs integer values", code="bad_tensor"
        )
    # For a float array the top is exclusive: info.max (2**63 - 1) rounds to 2**63 in
    # float64, so "> info.max" let 2**63 through, and astype wrapped it to -2**63.
    top_exclusive = array.dtype.kind == "f"
    if array.size and (
        array.min() < info.min
        or (array.max() >= float(info.max) + 1 if top_exclusive else array.max() > info.max)
    ):
        raise InvalidInput(
            f"{where}: a value is outside the range of {str(dtype).removeprefix('torch.')} "
            f"[{info.min}, {info.max}]",
            code="value_out_of_range",
        )
    return torch.from_numpy(np.asarray(array, order="C").astype(str(dtype).removeprefix("torch.")))


def int64_range(value: int) -> bool:
    return _INT64[0] <= value <= _INT64[1]


def check_json_answer(outputs: Iterable[torch.Tensor], limit: int) -> int:
    """Refuse (413) an answer whose JSON would hold more than ``limit`` elements, before
    any of it is built; the count (zero dims counted as 1, as in ``spanned_elements``)."""
    total = sum(spanned_elements(tuple(t.shape)) for t in outputs)
    if total > limit:
        raise RequestTooLarge(
            f"the answer would hold {total} elements as JSON, over the limit of {limit}; ask for "
            "fewer outputs, or binary outputs (V2 binary_data_output, or gRPC)"
        )
    return total
