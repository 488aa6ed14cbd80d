"""Per-op request models for /docs, generated from the op registry.

They document each op's inputs, params and defaults in the OpenAPI schema. Bodies
are parsed from raw bytes by the native codec and checked by validation.py, so the
spec stays the only source of the rules; these models only describe them.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model

from gradserve.ops.registry import OpSpec, ParamSpec
from gradserve.warmup import example


class TensorData(BaseModel):
    """A tensor as dtype, shape and a flat row-major list."""

    dtype: Literal["float32", "float64", "float16", "bfloat16", "int64", "int32"] | None = None
    shape: list[int]
    data: list[Any]


class TensorB64(BaseModel):
    """A tensor as dtype, shape and base64 of little-endian row-major bytes."""

    dtype: Literal["float32", "float64", "float16", "bfloat16", "int64", "int32"] = "float32"
    shape: list[int]
    b64: str


Tensor = list[Any] | float | TensorData | TensorB64

_PY_TYPES: dict[str, Any] = {"float": float, "int": int, "bool": bool, "str": str, "shape": list[int]}


def _param_field(p: ParamSpec) -> tuple[Any, Any]:
    annotation: Any = _PY_TYPES[p.type]
    if p.choices is not None:
        annotation = Literal[p.choices]
    if p.nullable:
        annotation = annotation | None
    required = p.default is None and not p.nullable
    field = Field(
        ... if required else p.default,
        description=p.doc,
        ge=p.ge,
        gt=p.gt,
        le=p.le,
    )
    return annotation, field


def _model_name(spec: OpSpec) -> str:
    return "".join(part.capitalize() for part in spec.name.split("_")) + "Request"


def request_model(spec: OpSpec) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for t in spec.inputs:
        fields[t.name] = (
            Tensor | None if t.optional else Tensor,
            Field(None if t.optional else ..., description=t.doc),
        )
    for p in spec.params:
        fields[p.name] = _param_field(p)
    if spec.grad_outputs:
        fields["grad"] = (
            bool,
            Field(False, description="Also return " + ", ".join(spec.grad_output_names) + "."),
        )
    model = create_model(
        _model_name(spec),
        __config__=ConfigDict(extra="forbid"),
        __doc__=spec.doc,
        **fields,
    )
    return model


# The lecture's example (a cat scored 3.2, car 5.1, frog -1.7; the cat is right) for the
# ops that take it, rather than the warm-up's generic tensors.
_LECTURE = {"input": [[3.2, 5.1, -1.7]], "target": [0]}
_EXAMPLES: dict[str, dict[str, Any]] = {"cross_entropy": _LECTURE, "hinge": _LECTURE}


def _rounded(value: Any) -> Any:
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return round(value, 4) if isinstance(value, float) else value


def request_example(spec: OpSpec) -> dict[str, Any]:
    """A small valid body for ``POST /v1/<family>/<op>``: the example /docs shows and its
    "Try it out" sends. The warm-up's request (warmup.py, already run against every op
    at start), as JSON, with gradients asked for where the op has them."""
    if spec.name in _EXAMPLES:
        body = dict(_EXAMPLES[spec.name])
    else:
        # Some examples draw random targets: seeded, so the served schema is the same
        # from one start to the next, without touching the process's own generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            tensors, params = example(spec)
        body = {name: _rounded(t.tolist()) for name, t in tensors.items()} | dict(params)
    if spec.grad_outputs:
        body["grad"] = True
    return body
