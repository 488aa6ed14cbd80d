"""Activations with learnable parameters: prelu (slopes) and maxout (piece weights, biases).

Flow position: the executor calls ``OpSpec.run`` on a solo ``Batch`` (batch_mode
"solo": their parameters are per request, so requests are never joined); the checkers
run earlier, at validation time, on one request's CPU tensors. Besides grad_x they
answer the gradients wrt their parameters. ops/activations.py lists the specs.
"""

from __future__ import annotations

import torch

from gradserve.errors import InvalidInput
from gradserve.ops.activation_io import (
    GRAD_X,
    GRAD_Y,
    X,
    Y,
    check_grad_y,
    compute_precision,
    shape_of,
    to_dtype,
    upstream_grad,
)
from gradserve.ops.registry import Batch, OpSpec, Outputs, OutputSpec, Params, TensorSpec

Tensor = torch.Tensor

PRELU_DEFAULT_ALPHA = 0.25


# ---------------------------------------------------------------- prelu


def _check_prelu(tensors: dict[str, Tensor], params: Params) -> None:
    x = tensors["x"]
    alpha = tensors.get("alpha")
    if alpha is not None:
        if alpha.dim() > 1:
            raise InvalidInput(
                f"alpha: must have shape [], [1] or [C] with C = x.shape[1]; "
                f"got {alpha.dim()}-d shape {shape_of(alpha)}"
            )
        if alpha.dim() == 1 and alpha.shape[0] != 1:
            if x.dim() < 2:
                raise InvalidInput(
                    f"alpha: shape {shape_of(alpha)} needs a channel dim x.shape[1], "
                    f"but x has shape {shape_of(x)} (fewer than 2 dims); use shape [] or [1]"
                )
            if alpha.shape[0] != x.shape[1]:
                raise InvalidInput(
                    f"alpha: {alpha.shape[0]} slopes do not match x.shape[1] = {x.shape[1]} channels"
                )
    check_grad_y(tensors, x.shape)


def _prelu_slopes(alpha: Tensor, x: Tensor) -> Tensor:
    """alpha shaped to broadcast against x along the channel dim (dim 1)."""
    if alpha.numel() == 1 and alpha.dim() <= 1:
        return alpha.reshape(())
    return alpha.reshape((alpha.shape[0],) + (1,) * (x.dim() - 2))


def _run_prelu(batch: Batch) -> Outputs:
    x_in = batch.tensors["x"]
    x = compute_precision(x_in)
    given = batch.tensors.get("alpha")
    alpha = (
        torch.tensor(PRELU_DEFAULT_ALPHA, dtype=x.dtype, device=x.device)
        if given is None
        else compute_precision(given)
    )
    a = _prelu_slopes(alpha, x)
    positive = x > 0
    out: dict[str, Tensor] = {}
    if "y" in batch.want:
        out["y"] = to_dtype(torch.where(positive, x, a * x), x_in.dtype)
    want_x = "grad_x" in batch.want
    want_alpha = "grad_alpha" in batch.want
    if want_x or want_alpha:
        g = upstream_grad(batch, x)
        if want_x:
            # x == 0 takes the negative-side slope (API.md), as torch's prelu.
            out["grad_x"] = to_dtype(torch.where(positive, g, a * g), x_in.dtype)
        if want_alpha:
            per_elem = (x * g).masked_fill_(positive, 0)
            if a.dim() == 0:
                grad_alpha = per_elem.sum()
            else:
                # The checker guarantees x has >= 2 dims here: sum all but channels.
                grad_alpha = per_elem.sum(dim=[d for d in range(x.dim()) if d != 1])
            out["grad_alpha"] = to_dtype(grad_alpha.reshape(alpha.shape), x_in.dtype)
    return [out]


PRELU = OpSpec(
    name="prelu",
    family="activations",
    kind="activation",
    doc="x for x > 0, alpha * x otherwise, with learnable slopes alpha "
    "(one shared, or one per channel x.shape[1]).",
    inputs=(
        X,
        TensorSpec(
            "alpha",
            "float",
            "Slopes: shape [], [1] or [C] with C = x.shape[1]; 0.25 (scalar) when absent.",
            optional=True,
            per_row=False,
            default=0.25,
            rank=1,
        ),
        GRAD_Y,
    ),
    params=(),
    outputs=(Y,),
    grad_outputs=(GRAD_X, OutputSpec("grad_alpha", "VJP wrt alpha (alpha's shape).")),
    run=_run_prelu,
    batch_mode="solo",
    check=_check_prelu,
    upstream="grad_y",
)


# ---------------------------------------------------------------- maxout


def _check_rank(name: str, t: Tensor, rank: int, layout: str) -> None:
    if t.dim() != rank:
        raise InvalidInput(f"{name}: must be {rank}-D {layout}, got shape {shape_of(t)}")


def _check_maxout(tensors: dict[str, Tensor], params: Params) -> None:
    x, weight, bias = tensors["x"], tensors["weight"], tensors["bias"]
    _check_rank("x", x, 2, "[N, D]")
    _check_rank("weight", weight, 3, "[K, M, D]")
    _check_rank("bias", bias, 2, "[K, M]")
    k, m, d = weight.shape
    if d != x.shape[1]:
        raise InvalidInput(f"weight: last dim D = {d} does not match x's feature dim D = {x.shape[1]}")
    if k == 0:
        raise InvalidInput("weight: needs at least one piece (K = weight.shape[0] >= 1)")
    if tuple(bias.shape) != (k, m):
        raise InvalidInput(f"bias: shape {shape_of(bias)} does not match [K, M] = [{k}, {m}]")
    check_grad_y(tensors, (x.shape[0], m))


def _run_maxout(batch: Batch) -> Outputs:
    x_in = batch.tensors["x"]
    x = compute_precision(x_in)
    weight = compute_precision(batch.tensors["weight"])
    bias = compute_precision(batch.tensors["bias"])
    k, m, d = weight.shape
    n = x.shape[0]
    # All K*M pieces in one matmul: z[n, k, m] = x[n] . weight[k, m] + bias[k, m].
    w_flat = weight.reshape(k * m, d)
    z = torch.addmm(bias.reshape(k * m), x, w_flat.t()).reshape(n, k, m)
    # torch.max along a dim returns the first maximal index: ties go to the first piece.
    y, piece = z.max(dim=1)
    out: dict[str, Tensor] = {}
    if "y" in batch.want:
        out["y"] = to_dtype(y, x_in.dtype)
    grads = batch.want & {"grad_x", "grad_weight", "grad_bias"}
    if grads:
        g = upstream_grad(batch, y)
        grad_z = torch.zeros_like(z).scatter_(1, piece.unsqueeze(1), g.unsqueeze(1))
        grad_flat = grad_z.reshape(n, k * m)
        if "grad_x" in grads:
            out["grad_x"] = to_dtype(grad_flat @ w_flat, x_in.dtype)
        if "grad_weight" in grads:
            out["grad_weight"] = to_dtype((grad_flat.t() @ x).reshape(k, m, d), x_in.dtype)
        if "grad_bias" in grads:
            out["grad_bias"] = to_dtype(grad_z.sum(dim=0), x_in.dtype)
    return [out]


MAXOUT = OpSpec(
    name="maxout",
    family="activations",
    kind="activation",
    doc="y[n, m] = max_k (x[n] . weight[k, m] + bias[k, m]); gradients go to the first maximal piece.",
    inputs=(
        TensorSpec("x", "float", "Input [N, D]."),
        TensorSpec("weight", "float", "Piece weights [K, M, D].", rank=3),
        TensorSpec("bias", "float", "Piece biases [K, M]."),
        TensorSpec(
            "grad_y",
            "float",
            "Upstream gradient [N, M] (all ones when absent).",
            optional=True,
        ),
    ),
    params=(),
    outputs=(OutputSpec("y", "Maxout units [N, M]."),),
    grad_outputs=(
        OutputSpec("grad_x", "VJP wrt x [N, D]."),
        OutputSpec("grad_weight", "VJP wrt weight [K, M, D]."),
        OutputSpec("grad_bias", "VJP wrt bias [K, M]."),
    ),
    run=_run_maxout,
    batch_mode="solo",
    check=_check_maxout,
    upstream="grad_y",
)
