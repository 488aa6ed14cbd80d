"""What every activation kernel shares: its tensors' specs and the trip through them.

Flow position: the activation kernels (ops/pointwise_activations.py, ops/softmax.py,
ops/parametric_activations.py) read a ``Batch`` built by ``layout.assemble`` through
these helpers: ``x`` and ``grad_y`` in compute precision on the way in, ``y`` and the
gradients back in the request's dtype and split per request on the way out; their
checkers share the grad_y shape check. ``aten`` is how they call the aten backward ops (typed for mypy).
"""

from __future__ import annotations

from typing import Any

import torch

from gradserve.errors import InvalidInput
from gradserve.ops.numerics import LOW_PRECISION
from gradserve.ops.registry import Batch, Outputs, OutputSpec, TensorSpec, split_rows

Tensor = torch.Tensor

X = TensorSpec("x", "float", "Input tensor, any shape.")
GRAD_Y = TensorSpec(
    "grad_y",
    "float",
    "Upstream gradient with y's shape (all ones when absent).",
    optional=True,
)
Y = OutputSpec("y", "The activation, with x's shape and dtype.")
GRAD_X = OutputSpec("grad_x", "Vector-Jacobian product wrt x (x's shape).")


def shape_of(t: Tensor) -> list[int]:
    return list(t.shape)


def check_grad_y(tensors: dict[str, Tensor], expected: torch.Size | tuple[int, ...]) -> None:
    grad_y = tensors.get("grad_y")
    if grad_y is not None and tuple(grad_y.shape) != tuple(expected):
        raise InvalidInput(f"grad_y: shape {shape_of(grad_y)} does not match y's shape {list(expected)}")


def compute_precision(t: Tensor) -> Tensor:
    """numerics.upcast without its ~1 us ``.to`` call when there is nothing to cast:
    these kernels are on the hot path of small requests."""
    return t.float() if t.dtype in LOW_PRECISION else t


def to_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def upstream_grad(batch: Batch, like: Tensor) -> Tensor:
    """The upstream gradient in compute precision; ones when the client sent none."""
    grad_y = batch.tensors.get("grad_y")
    return torch.ones_like(like) if grad_y is None else compute_precision(grad_y)


def split_outputs(outputs: dict[str, Tensor], rows: tuple[int, ...]) -> Outputs:
    pieces = {name: split_rows(t, rows) for name, t in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(rows))]


def aten(op: Any, *args: Any, **kwargs: Any) -> Tensor:
    """Call an aten op (typed Any by torch) and give mypy a Tensor back."""
    result: Tensor = op(*args, **kwargs)
    return result
