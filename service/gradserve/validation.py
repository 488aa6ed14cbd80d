"""Validation: one decoded request against its op's declaration -> clear 4xx errors.

Generic checks live here (names, dtypes, param types, ranges and choices, limits); the
relations that only an op knows (shapes that must agree, index ranges, value domains)
are its ``OpSpec.check``. After both pass, a kernel must not fail on the input.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradserve.codecs.numbers import DECIMAL, INTEGER, check_shape_size, int64_range
from gradserve.errors import InvalidInput, RequestTooLarge
from gradserve.near_miss import first_near_miss
from gradserve.ops.registry import OpSpec, ParamSpec, TensorSpec

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32)


def _show(value: Any) -> str:
    """A param value for an error message: short whatever the client sent (a deeply
    nested list's repr would recurse past Python's limit, a huge one fill the answer)."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int of more than 4300 digits has no repr
        return "a very large integer"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 6, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 40
# Float params reach kernels as C floats or doubles beside float32/16 tensors: a value
# past float32's range overflows inside torch ("cannot be converted to type float").
_FLOAT_PARAM_MAX = float(torch.finfo(torch.float32).max)


def _coerce_param(spec: ParamSpec, value: Any, lenient: bool, limits: Limits) -> Any:
    """Type-check one param value. ``lenient`` accepts numbers spelled as strings, as V2
    and gRPC clients (grpcurl, string parameters) often send them."""
    name = f"param {spec.name!r}"
    if value is None:
        if spec.nullable:
            return None
        raise InvalidInput(f"{name}: must not be null", code="bad_param")
    if spec.type == "shape":
        return _coerce_shape(spec, value, limits)
    if spec.type == "bool":
        if isinstance(value, bool):
            return value
        if lenient and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise InvalidInput(f"{name}: expected true or false, got {_show(value)}", code="bad_param")
    if spec.type == "str":
        if not isinstance(value, str):
            raise InvalidInput(f"{name}: expected a string, got {_show(value)}", code="bad_param")
        if spec.choices is not None and value not in spec.choices:
            raise InvalidInput(
                f"{name}: {_show(value)} is not one of {', '.join(map(repr, spec.choices))}",
                code="bad_param",
            )
        return value
    number = _coerce_number(spec, value, lenient)
    if spec.type == "float" and spec.finite and not math.isfinite(number):
        raise InvalidInput(f"{name}: must be finite, got {_show(number)}", code="bad_param")
    if spec.type == "float" and math.isfinite(number) and abs(number) > _FLOAT_PARAM_MAX:
        raise InvalidInput(
            f"{name}: {_show(number)} is beyond the float32 range (largest magnitude {_FLOAT_PARAM_MAX:.4g})",
            code="bad_param",
        )
    if spec.type == "int" and not int64_range(int(number)):
        raise InvalidInput(
            f"{name}: {_show(number)} is outside the int64 range [-2**63, 2**63 - 1]", code="bad_param"
        )
    if spec.ge is not None and not number >= spec.ge:
        raise InvalidInput(f"{name}: must be at least {spec.ge}, got {_show(number)}", code="bad_param")
    if spec.gt is not None and not number > spec.gt:
        raise InvalidInput(f"{name}: must be greater than {spec.gt}, got {_show(number)}", code="bad_param")
    if spec.le is not None and not number <= spec.le:
        raise InvalidInput(f"{name}: must be at most {spec.le}, got {_show(number)}", code="bad_param")
    return number


def _coerce_number(spec: ParamSpec, value: Any, lenient: bool) -> float | int:
    name = f"param {spec.name!r}"
    kind = "an integer" if spec.type == "int" else "a number"
    if lenient and isinstance(value, str):
        try:
            if len(value) > 40:  # int() of a long digit string is quadratic
                raise ValueError
            # "3.0" for an int param goes the way JSON's 3.0 does (below): accepted.
            # JSON's number syntax only: not "1_000" or "２", which int() and float() take.
            text = value.strip()
            if not DECIMAL.fullmatch(text):
                raise ValueError
            value = int(text) if spec.type == "int" and INTEGER.fullmatch(text) else float(text)
        except ValueError:
            raise InvalidInput(f"{name}: expected {kind}, got {_show(value)}", code="bad_param") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name}: expected {kind}, got {_show(value)}", code="bad_param")
    if spec.type == "int":
        if isinstance(value, float):
            # Past 2**53 a float is no longer every integer: a value there came from a
            # number the JSON parser could not keep exact (below -2**63, say).
            if not value.is_integer():
                raise InvalidInput(f"{name}: expected an integer, got {_show(value)}", code="bad_param")
            if abs(value) > 2**53:
                raise InvalidInput(
                    f"{name}: {_show(value)} is not an exact integer (past 2**53, or outside the int64 "
                    "range, a JSON number loses digits)",
                    code="bad_param",
                )
            value = int(value)
        return int(value)
    return float(value)


def _coerce_shape(spec: ParamSpec, value: Any, limits: Limits) -> tuple[int, ...]:
    name = f"param {spec.name!r}"
    if isinstance(value, str):
        # V2 clients send "500,500"; an empty string is the 0-d shape.
        parts = [p.strip() for p in value.split(",", limits.max_dims + 1)] if value.strip() else []
        if len(parts) > limits.max_dims:
            raise RequestTooLarge(f"{name}: more than {limits.max_dims} dimensions")
        try:
            # Each part is short: int() of a huge digit string costs quadratic time.
            if any(len(p) > 20 or not INTEGER.fullmatch(p) for p in parts):
                raise ValueError
            value = [int(p) for p in parts]
        except ValueError:
            raise InvalidInput(
                f'{name}: expected comma-separated integers such as "500,500", got {_show(value)}',
                code="bad_shape",
            ) from None
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidInput(f"{name}: expected a list of integers, got {_show(value)}", code="bad_shape")
    if any(d < 0 for d in value):
        raise InvalidInput(
            f"{name}: dimensions must be non-negative, got {_show(list(value))}", code="bad_shape"
        )
    check_shape_size(name, list(value), limits.max_elements, max_dims=limits.max_dims)
    return tuple(value)


@dataclass(frozen=True)
class Limits:
    """The request limits validation enforces (from Settings)."""

    max_elements: int
    max_dims: int


def _refuse_near_misses(spec: OpSpec, raw: Mapping[str, Any]) -> None:
    """422 for an unknown param that is a near miss of one of the op's own ("reducton",
    "Reduction"): V2 and gRPC ignore unknown params, as clients add their own, but a
    typo must not fall back to the default without a word."""
    miss = first_near_miss(raw, spec.param_index)
    if miss is not None:
        key, meant = miss
        raise InvalidInput(
            f"op {spec.name!r}: unknown param {_show(key)}; did you mean {meant!r}? (its params "
            f"are {', '.join(map(repr, spec.param_index))}; other unknown params are ignored)",
            code="unknown_field",
        )


def validate_params(
    spec: OpSpec, raw: Mapping[str, Any], *, lenient: bool, ignore_unknown: bool, limits: Limits
) -> dict[str, Any]:
    """Fill defaults and type-check every param of ``spec``."""
    if ignore_unknown:
        if any(k not in spec.param_index for k in raw):
            _refuse_near_misses(spec, raw)
    else:
        unknown = [k for k in raw if k not in spec.param_index]
        if unknown:
            raise InvalidInput(
                f"op {spec.name!r}: unknown param(s) {', '.join(map(_show, unknown[:8]))}; "
                f"its params are {', '.join(map(repr, spec.param_index)) or 'none'}",
                code="unknown_field",
            )
    params: dict[str, Any] = {}
    for p in spec.params:
        if p.name in raw:
            params[p.name] = _coerce_param(p, raw[p.name], lenient, limits)
        elif p.default is None and not p.nullable:
            raise InvalidInput(f"op {spec.name!r}: param {p.name!r} is required", code="missing_param")
        else:
            params[p.name] = p.default
    return params


def _check_dtype(spec: OpSpec, t: TensorSpec, tensor: torch.Tensor) -> torch.Tensor:
    where = f"input {t.name!r}"
    if t.kind == "float":
        if tensor.dtype not in FLOAT_DTYPES:
            raise InvalidInput(
                f"{where}: dtype {str(tensor.dtype).removeprefix('torch.')} is not a float dtype "
                "(float32, float64, float16, bfloat16)",
                code="bad_dtype",
            )
        return tensor
    if t.kind in ("index", "int") or (t.kind == "target" and not tensor.is_floating_point()):
        if t.kind == "index" and tensor.is_floating_point():
            # Float class labels are a common slip (numpy float arrays, "1.0"): name it.
            raise InvalidInput(
                f"{where}: class indices are expected, as integers (int64 or int32), got dtype "
                f"{str(tensor.dtype).removeprefix('torch.')}",
                code="bad_dtype",
            )
        if tensor.dtype not in INDEX_DTYPES:
            raise InvalidInput(
                f"{where}: dtype {str(tensor.dtype).removeprefix('torch.')} is not an index dtype "
                "(int64 or int32)",
                code="bad_dtype",
            )
        return tensor.to(torch.int64)
    if tensor.dtype not in FLOAT_DTYPES:
        raise InvalidInput(f"{where}: unsupported dtype {tensor.dtype}", code="bad_dtype")
    return tensor


def validate_tensors(
    spec: OpSpec, raw: Mapping[str, torch.Tensor], *, limits: Limits, unify: bool = True
) -> dict[str, torch.Tensor]:
    """Names, dtypes and limits; float inputs are cast to the primary input's dtype
    (``unify_float_dtypes``) unless ``unify`` is False: the engine runs the op's value
    checks on the tensors as sent first, then unifies."""
    unknown = [k for k in raw if k not in spec.input_index]
    if unknown:
        raise InvalidInput(
            f"op {spec.name!r}: unknown input(s) {', '.join(map(_show, unknown[:8]))}; "
            f"its inputs are {', '.join(map(repr, spec.input_index)) or 'none'}",
            code="unknown_field",
        )
    tensors: dict[str, torch.Tensor] = {}
    for t in spec.inputs:
        if t.name not in raw:
            if not t.optional:
                raise InvalidInput(f"op {spec.name!r}: input {t.name!r} is required", code="missing_input")
            continue
        tensor = raw[t.name]
        check_shape_size(
            f"input {t.name!r}", list(tensor.shape), limits.max_elements, max_dims=limits.max_dims
        )
        tensors[t.name] = _check_dtype(spec, t, tensor)
    return unify_float_dtypes(tensors) if unify else tensors


def unify_float_dtypes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One float dtype per request: the primary (first float) input's. Mixed float
    dtypes are cast to it rather than refused, as torch's type promotion would not keep
    "same dtype out" otherwise. A finite value that the cast makes infinite (70000 in a
    float64 target beside a float16 input) is out of range, as the codecs say of any
    value beyond its dtype: 422, never a silent inf."""
    floats = [n for n, v in tensors.items() if v.is_floating_point()]
    if not floats:
        return tensors
    first = floats[0]
    primary = tensors[first].dtype
    for n in floats[1:]:
        tensor = tensors[n]
        if tensor.dtype == primary:
            continue
        cast = tensor.to(primary)
        if torch.finfo(primary).max < torch.finfo(tensor.dtype).max and bool(
            (torch.isinf(cast) & torch.isfinite(tensor)).any()
        ):
            raise InvalidInput(
                f"input {n!r}: a value is beyond the range of {str(primary).removeprefix('torch.')}, "
                f"the dtype of input {first!r} (a request's float inputs are computed in its "
                "first float input's dtype)",
                code="value_out_of_range",
            )
        tensors[n] = cast
    return tensors


def resolve_outputs(
    spec: OpSpec, tensors: Mapping[str, torch.Tensor], requested: Sequence[str] | None, grad: bool
) -> tuple[str, ...]:
    """The outputs to compute, in answer order.

    With none requested: the plain outputs, plus the gradients when ``grad``; a
    gradient for an optional input that was not given (full_loss without bias) is left
    out. Named outputs must exist, and a named gradient needs its input.
    """
    if requested is None:
        names = list(spec.output_names)
        if grad:
            names += [g for g in spec.grad_output_names if _grad_available(spec, g, tensors)]
        return tuple(names)
    known = set(spec.all_output_names)
    seen: set[str] = set()
    for name in requested:
        if name not in known:
            raise InvalidInput(
                f"op {spec.name!r}: unknown output {_show(name)}; its outputs are "
                f"{', '.join(map(repr, spec.all_output_names))}",
                code="unknown_output",
            )
        if name in seen:
            raise InvalidInput(
                f"op {spec.name!r}: output {_show(name)} requested twice", code="unknown_output"
            )
        seen.add(name)
        if not _grad_available(spec, name, tensors):
            raise InvalidInput(
                f"op {spec.name!r}: output {name!r} needs input {name.removeprefix('grad_')!r}",
                code="unknown_output",
            )
    return tuple(requested)


def _grad_available(spec: OpSpec, output: str, tensors: Mapping[str, torch.Tensor]) -> bool:
    source = spec.input_index.get(output.removeprefix("grad_"))
    if source is None or not output.startswith("grad_"):
        return True
    return source.name in tensors or not source.optional or source.default is not None
