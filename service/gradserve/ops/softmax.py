"""softmax and log_softmax: normalized along one dim, computed stably.

Flow position: the executor calls ``OpSpec.run`` on a ``Batch`` built by
``layout.assemble`` in batch_mode "rows" (requests joined along dim 0, unless the op
normalizes over dim 0: then it runs alone); ``_check_softmax`` runs earlier, at
validation time. ops/activations.py lists the specs.
"""

from __future__ import annotations

import torch

from gradserve.errors import InvalidInput
from gradserve.ops.activation_io import (
    GRAD_X,
    GRAD_Y,
    X,
    Y,
    aten,
    check_grad_y,
    compute_precision,
    split_outputs,
    to_dtype,
    upstream_grad,
)
from gradserve.ops.registry import Batch, Kernel, OpSpec, Outputs, Params, ParamSpec

Tensor = torch.Tensor

DIM = ParamSpec("dim", "int", -1, "Dimension the softmax normalizes over (negative counts back).")


def _resolve_dim(dim: int, ndim: int) -> int:
    """dim in [0, ndim) or -1 when out of range; a 0-d tensor has one usable dim, as torch."""
    size = max(ndim, 1)
    return dim + size if -size <= dim < 0 else (dim if 0 <= dim < size else -1)


def _check_softmax(tensors: dict[str, Tensor], params: Params) -> None:
    x = tensors["x"]
    dim = params["dim"]
    if _resolve_dim(dim, x.dim()) < 0:
        size = max(x.dim(), 1)
        raise InvalidInput(
            f"dim: {dim} is out of range for x with {x.dim()} dims "
            f"(expected a value in [{-size}, {size - 1}])"
        )
    check_grad_y(tensors, x.shape)


def _softmax_batchable(tensors: dict[str, Tensor], params: Params) -> bool:
    # Rows are joined along dim 0, so normalizing over dim 0 would mix requests.
    x = tensors["x"]
    return x.dim() > 0 and _resolve_dim(params["dim"], x.dim()) != 0


def _softmax_family_kernel(log: bool) -> Kernel:
    forward = torch.log_softmax if log else torch.softmax
    backward = torch.ops.aten._log_softmax_backward_data if log else torch.ops.aten._softmax_backward_data

    def run(batch: Batch) -> Outputs:
        x_in = batch.tensors["x"]
        x = compute_precision(x_in)
        dim = batch.params["dim"]
        # torch's kernels subtract the row max (log-sum-exp), so large |x| stays finite.
        y = forward(x, dim)
        out: dict[str, Tensor] = {}
        if "y" in batch.want:
            out["y"] = to_dtype(y, x_in.dtype)
        if "grad_x" in batch.want:
            grad = aten(backward, upstream_grad(batch, x), y, dim, x.dtype)
            out["grad_x"] = to_dtype(grad, x_in.dtype)
        return split_outputs(out, batch.rows)

    return run


def _softmax_spec(name: str, doc: str, log: bool) -> OpSpec:
    return OpSpec(
        name=name,
        family="activations",
        kind="activation",
        doc=doc,
        inputs=(X, GRAD_Y),
        params=(DIM,),
        outputs=(Y,),
        grad_outputs=(GRAD_X,),
        run=_softmax_family_kernel(log),
        batch_mode="rows",
        check=_check_softmax,
        batchable=_softmax_batchable,
        upstream="grad_y",
    )


def softmax_specs() -> tuple[OpSpec, ...]:
    return (
        _softmax_spec("softmax", "exp(x) / sum(exp(x)) along dim, computed stably.", log=False),
        _softmax_spec("log_softmax", "x - logsumexp(x) along dim, computed stably.", log=True),
    )
