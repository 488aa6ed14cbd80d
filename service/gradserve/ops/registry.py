"""The op registry: the single source of truth for what each op takes and returns.

Each op is declared once, next to its kernel, as an ``OpSpec``. Validation, the
/v1/ops catalog, the per-op request models shown in /docs, the V2 model metadata and
the batcher's grouping rules are all derived from these declarations.

Flow position: engine -> validation (reads specs) -> batcher -> executor -> ``OpSpec.run``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from gradserve.near_miss import closest

# "lab": the lecture's experiments (ops/lab.py), served at /v1/lab/<op>.
Family = Literal["activations", "losses", "init", "lab"]
# How requests of an op may share one kernel call:
#   elementwise: every tensor is flattened and concatenated (any shapes batch together)
#   rows:        tensors are concatenated along dim 0 (trailing dims must match)
#   solo:        never batched (matmul-based or seeded ops: the answer would depend
#                on who shared the batch); still goes through the same queue
BatchMode = Literal["elementwise", "rows", "solo"]
# What dtypes a tensor input accepts:
#   float:  float32/float64/float16/bfloat16
#   index:  int64/int32 class indices
#   target: class indices (int) or class probabilities (float), decided by dtype
#   int:    int64 (init shape tensor on V2)
TensorKind = Literal["float", "index", "target", "int"]
ParamType = Literal["float", "int", "bool", "str", "shape"]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor input of an op."""

    name: str
    kind: TensorKind
    doc: str
    optional: bool = False
    # Whether this tensor is split along dim 0 with the op's primary input when
    # requests are batched (False: it must be identical across a batch, or absent).
    per_row: bool = True
    # For an optional input that has a value when absent (prelu's alpha = 0.25): the
    # gradient output for it is still produced.
    default: float | None = None
    # Its usual rank, for V2 metadata (each dim -1); None: 2 for float tensors, 1 for
    # class-index targets.
    rank: int | None = None


@dataclass(frozen=True)
class ParamSpec:
    """One named scalar param of an op, with its type, default and allowed values."""

    name: str
    type: ParamType
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    nullable: bool = False
    # Params the value of which must be finite (NaN/inf answer 422).
    finite: bool = True


@dataclass(frozen=True)
class OutputSpec:
    name: str
    doc: str
    # Its usual rank, for V2 metadata; None: a gradient's is its input's, others 2.
    rank: int | None = None
    # "float": the request's float dtype (FP32 in V2 metadata); "int64": always int64
    # (activation_stats' histogram counts).
    dtype: Literal["float", "int64"] = "float"


@dataclass(frozen=True)
class Work:
    """The cost of an op whose params, not its tensors, set what it computes (the lab).

    The engine refuses a request over the ``lab_max_work`` setting (413) before it is
    queued, and the executor never runs such an op inline on the event loop.
    """

    # Params (validated, defaults filled) -> the request's cost in multiply-adds.
    of: Callable[[Mapping[str, Any]], int]
    # How the cost is counted, for the 413 message ("depth * width^2 * batch").
    formula: str


@dataclass
class Batch:
    """What a kernel receives: one or more requests' tensors, already concatenated.

    ``rows`` holds, per request, how many rows (dim 0, for ``rows`` ops) or elements
    (for ``elementwise`` ops) of the concatenated tensors belong to it; a solo call has
    one entry. Params and wanted outputs are identical across the batch by construction.
    """

    tensors: dict[str, torch.Tensor]
    params: Mapping[str, Any]
    want: frozenset[str]
    rows: tuple[int, ...]


Params = Mapping[str, Any]
Outputs = list[dict[str, torch.Tensor]]  # one dict per request of a batch
Kernel = Callable[[Batch], Outputs]
# A private param the executor adds to init ops: the device to draw weights on.
DEVICE_PARAM = "__device__"
# Op-specific checks run at validation time, after generic dtype/param checks:
# relations between shapes, index ranges, value domains. They raise InvalidInput.
Checker = Callable[[dict[str, torch.Tensor], Mapping[str, Any]], None]
# Decides, per request, whether it may share a batch (e.g. softmax over dim 0 cannot).
Batchable = Callable[[dict[str, torch.Tensor], Mapping[str, Any]], bool]


@dataclass(frozen=True)
class OpSpec:
    """The declaration of one op."""

    name: str
    family: Family
    kind: str  # "activation", "loss", "regularization", "full_loss", "init"
    doc: str
    inputs: tuple[TensorSpec, ...]
    params: tuple[ParamSpec, ...]
    outputs: tuple[OutputSpec, ...]
    grad_outputs: tuple[OutputSpec, ...]
    run: Kernel
    batch_mode: BatchMode
    check: Checker | None = None
    batchable: Batchable | None = None
    # Name of the optional upstream-gradient input (grad_y, grad_loss, grad_penalty).
    upstream: str | None = None
    # Set for ops whose cost comes from their params (see Work).
    work: Work | None = None
    # Set for ops that build a tensor no input's size bounds (full_loss: scores [N, C]
    # from x [N, D] and weight [C, D], whatever D, zero included): validated tensors and
    # params -> (what it is, its element count). The engine caps it like an input.
    intermediate: Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], tuple[str, int]] | None = None
    param_index: dict[str, ParamSpec] = field(init=False, repr=False, compare=False)
    input_index: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_index", {p.name: p for p in self.params})
        object.__setattr__(self, "input_index", {t.name: t for t in self.inputs})

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def grad_output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.grad_outputs)

    @property
    def all_output_names(self) -> tuple[str, ...]:
        return self.output_names + self.grad_output_names


# What an op of each family is, for the error that sends a request to the right route.
_FAMILY_NOUN: dict[str, str] = {
    "activations": "an activation",
    "losses": "a loss",
    "init": "a weight initialization",
    "lab": "a lab experiment",
}


class Registry:
    """Name -> OpSpec; lookups raise rather than return None."""

    def __init__(self) -> None:
        self._ops: dict[str, OpSpec] = {}

    def register(self, spec: OpSpec) -> OpSpec:
        if spec.name in self._ops:
            raise ValueError(f"op {spec.name!r} registered twice")
        self._ops[spec.name] = spec
        return spec

    def get(self, name: str, family: Family | None = None) -> OpSpec:
        from gradserve.errors import OpNotFound

        spec = self._ops.get(name)
        if spec is not None and family is not None and spec.family != family:
            # Posted under the wrong family: say where it lives rather than "unknown".
            raise OpNotFound(
                f'"{name}" is {_FAMILY_NOUN[spec.family]}: POST /v1/{spec.family}/{name}, '
                f"not /v1/{family}/{name}"
            )
        if spec is None:
            where = f" under /{family}" if family else ""
            shown = repr(name[:64]) + ("..." if len(name) > 64 else "")  # names come from clients
            meant = closest(name, self._ops)
            hint = "" if meant is None else f"did you mean {meant!r}? "
            raise OpNotFound(f"unknown op {shown}{where}; {hint}GET /v1/ops lists the ops")
        return spec

    def __iter__(self) -> Iterator[OpSpec]:
        return iter(self._ops.values())

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def __len__(self) -> int:
        return len(self._ops)

    def names(self) -> list[str]:
        return list(self._ops)


def split_rows(t: torch.Tensor, rows: tuple[int, ...]) -> list[torch.Tensor]:
    """Split a batched tensor back into per-request pieces along dim 0."""
    if len(rows) == 1:
        return [t]
    return list(torch.split(t, list(rows), dim=0))
