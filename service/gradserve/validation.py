"""Validation: one decoded request against its op's declaration -> clear 4xx errors.

Generic checks live here (names, dtypes, param types, ranges and choices, limits); the
relations that only an op knows (shapes that must agree, index ranges, value domains)
are its ``OpSpec.check``. After both pass, a kernel must not fail on the input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from gradserve.errors import InvalidInput, RequestTooLarge
from gradserve.ops.registry import OpSpec, ParamSpec, TensorSpec

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32)


def _coerce_param(spec: ParamSpec, value: Any, lenient: bool, max_elements: int) -> Any:
    """Type-check one param value. ``lenient`` accepts numbers spelled as strings, as V2
    and gRPC clients (grpcurl, string parameters) often send them."""
    name = f"param {spec.name!r}"
    if value is None:
        if spec.nullable:
            return None
        raise InvalidInput(f"{name}: must not be null", code="bad_param")
    if spec.type == "shape":
        return _coerce_shape(spec, value, max_elements)
    if spec.type == "bool":
        if isinstance(value, bool):
            return value
        if lenient and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise InvalidInput(f"{name}: expected true or false, got {value!r}", code="bad_param")
    if spec.type == "str":
        if not isinstance(value, str):
            raise InvalidInput(f"{name}: expected a string, got {value!r}", code="bad_param")
        if spec.choices is not None and value not in spec.choices:
            raise InvalidInput(
                f"{name}: {value!r} is not one of {', '.join(map(repr, spec.choices))}",
                code="bad_param",
            )
        return value
    number = _coerce_number(spec, value, lenient)
    if spec.type == "float" and spec.finite and not math.isfinite(number):
        raise InvalidInput(f"{name}: must be finite, got {number!r}", code="bad_param")
    if spec.ge is not None and not number >= spec.ge:
        raise InvalidInput(f"{name}: must be at least {spec.ge}, got {number!r}", code="bad_param")
    if spec.gt is not None and not number > spec.gt:
        raise InvalidInput(f"{name}: must be greater than {spec.gt}, got {number!r}", code="bad_param")
    if spec.le is not None and not number <= spec.le:
        raise InvalidInput(f"{name}: must be at most {spec.le}, got {number!r}", code="bad_param")
    return number


def _coerce_number(spec: ParamSpec, value: Any, lenient: bool) -> float | int:
    name = f"param {spec.name!r}"
    if lenient and isinstance(value, str):
        try:
            value = int(value) if spec.type == "int" else float(value)
        except ValueError:
            raise InvalidInput(f"{name}: expected a number, got {value!r}", code="bad_param") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name}: expected a number, got {value!r}", code="bad_param")
    if spec.type == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise InvalidInput(f"{name}: expected an integer, got {value!r}", code="bad_param")
            value = int(value)
        return int(value)
    return float(value)


def _coerce_shape(spec: ParamSpec, value: Any, max_elements: int) -> tuple[int, ...]:
    name = f"param {spec.name!r}"
    if isinstance(value, str):
        # V2 clients send "500,500"; an empty string is the 0-d shape.
        parts = [p.strip() for p in value.split(",")] if value.strip() else []
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise InvalidInput(
                f'{name}: expected comma-separated integers such as "500,500", got {value!r}',
                code="bad_shape",
            ) from None
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidInput(f"{name}: expected a list of integers, got {value!r}", code="bad_shape")
    if any(d < 0 for d in value):
        raise InvalidInput(f"{name}: dimensions must be non-negative, got {list(value)}", code="bad_shape")
    if len(value) > 8:
        raise InvalidInput(f"{name}: at most 8 dimensions, got {len(value)}", code="bad_shape")
    count = math.prod(value)
    if count > max_elements:
        raise RequestTooLarge(f"{name}: {list(value)} has {count} elements, over the limit of {max_elements}")
    return tuple(value)


def validate_params(
    spec: OpSpec, raw: Mapping[str, Any], *, lenient: bool, ignore_unknown: bool, max_elements: int
) -> dict[str, Any]:
    """Fill defaults and type-check every param of ``spec``."""
    if not ignore_unknown:
        unknown = [k for k in raw if k not in spec.param_index]
        if unknown:
            raise InvalidInput(
                f"op {spec.name!r}: unknown param(s) {', '.join(map(repr, unknown))}; "
                f"its params are {', '.join(map(repr, spec.param_index)) or 'none'}",
                code="unknown_field",
            )
    params: dict[str, Any] = {}
    for p in spec.params:
        if p.name in raw:
            params[p.name] = _coerce_param(p, raw[p.name], lenient, max_elements)
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
    spec: OpSpec, raw: Mapping[str, torch.Tensor], *, max_elements: int
) -> dict[str, torch.Tensor]:
    """Names, dtypes and limits; float inputs are cast to the primary input's dtype."""
    unknown = [k for k in raw if k not in spec.input_index]
    if unknown:
        raise InvalidInput(
            f"op {spec.name!r}: unknown input(s) {', '.join(map(repr, unknown))}; "
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
        if tensor.numel() > max_elements:
            raise RequestTooLarge(
                f"input {t.name!r}: {tensor.numel()} elements is over the limit of {max_elements}"
            )
        tensors[t.name] = _check_dtype(spec, t, tensor)
    # One float dtype per request: the primary (first float) input's. Mixed float
    # dtypes are cast to it rather than refused, as torch's type promotion would not
    # keep "same dtype out" otherwise.
    floats = [n for n, v in tensors.items() if v.is_floating_point()]
    if floats:
        primary = tensors[floats[0]].dtype
        for n in floats[1:]:
            if tensors[n].dtype != primary:
                tensors[n] = tensors[n].to(primary)
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
                f"op {spec.name!r}: unknown output {name!r}; its outputs are "
                f"{', '.join(map(repr, spec.all_output_names))}",
                code="unknown_output",
            )
        if name in seen:
            raise InvalidInput(f"op {spec.name!r}: output {name!r} requested twice", code="unknown_output")
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
