"""Activation ops (API.md section 1.1): their declarations and kernels.

Flow position: the executor calls ``OpSpec.run`` on a ``Batch`` built by
``layout.assemble``; the checkers here run earlier, at validation time, on one
request's CPU tensors. Pointwise ops are "elementwise" (flat padded tensors),
softmax/log_softmax are "rows", prelu and maxout are "solo".

Gradients use the aten backward ops autograd itself would call, so no autograd graph
is ever built, and the float64 answers match torch's own VJPs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gradserve.errors import InvalidInput
from gradserve.ops.numerics import LOW_PRECISION
from gradserve.ops.registry import (
    Batch,
    Kernel,
    OpSpec,
    Outputs,
    OutputSpec,
    Params,
    ParamSpec,
    TensorSpec,
    split_rows,
)

Tensor = torch.Tensor

# torch.nn.functional.selu's constants (selu is elu with these alpha and scale).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
PRELU_DEFAULT_ALPHA = 0.25
# Beyond this |x| the tanh-approximated gelu's derivative is exactly 1 (or 0) in every
# compute dtype, but torch's backward cubes x and gives inf * 0 = NaN in float32 from
# |x| ~ 1e13 on; clamping first keeps those gradients finite without changing a bit below.
GELU_TANH_GRAD_CLAMP = 1e6

X = TensorSpec("x", "float", "Input tensor, any shape.")
GRAD_Y = TensorSpec(
    "grad_y",
    "float",
    "Upstream gradient with y's shape (all ones when absent).",
    optional=True,
)
Y = OutputSpec("y", "The activation, with x's shape and dtype.")
GRAD_X = OutputSpec("grad_x", "Vector-Jacobian product wrt x (x's shape).")


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _check_grad_y(tensors: dict[str, Tensor], expected: torch.Size | tuple[int, ...]) -> None:
    grad_y = tensors.get("grad_y")
    if grad_y is not None and tuple(grad_y.shape) != tuple(expected):
        raise InvalidInput(f"grad_y: shape {_shape(grad_y)} does not match y's shape {list(expected)}")


def _check_like_x(tensors: dict[str, Tensor], params: Params) -> None:
    _check_grad_y(tensors, tensors["x"].shape)


def _up(t: Tensor) -> Tensor:
    """numerics.upcast without its ~1 us ``.to`` call when there is nothing to cast:
    these kernels are on the hot path of small requests."""
    return t.float() if t.dtype in LOW_PRECISION else t


def _down(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _upstream(batch: Batch, like: Tensor) -> Tensor:
    """The upstream gradient in compute precision; ones when the client sent none."""
    grad_y = batch.tensors.get("grad_y")
    return torch.ones_like(like) if grad_y is None else _up(grad_y)


def _split(outputs: dict[str, Tensor], rows: tuple[int, ...]) -> Outputs:
    pieces = {name: split_rows(t, rows) for name, t in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(rows))]


# ---------------------------------------------------------------- pointwise ops

Forward = Callable[[Tensor, Params], Tensor]
# (upstream gradient, x, y or None, params) -> grad_x, all in compute precision.
Backward = Callable[[Tensor, Tensor, Tensor | None, Params], Tensor]


@dataclass(frozen=True)
class _Pointwise:
    """What differs between the pointwise activations."""

    name: str
    doc: str
    forward: Forward
    backward: Backward
    # Whether backward reads y (then y is computed even when only grad_x is wanted).
    backward_uses_y: bool
    params: tuple[ParamSpec, ...] = ()


def _pointwise_kernel(op: _Pointwise) -> Kernel:
    def run(batch: Batch) -> Outputs:
        x_in = batch.tensors["x"]
        x = _up(x_in)
        want_grad = "grad_x" in batch.want
        y = None
        if "y" in batch.want or (want_grad and op.backward_uses_y):
            y = op.forward(x, batch.params)
        out: dict[str, Tensor] = {}
        if y is not None and "y" in batch.want:
            out["y"] = _down(y, x_in.dtype)
        if want_grad:
            grad = op.backward(_upstream(batch, x), x, y, batch.params)
            out["grad_x"] = _down(grad, x_in.dtype)
        return _split(out, batch.rows)

    return run


def _need(y: Tensor | None) -> Tensor:
    # backward_uses_y guarantees y was computed; this narrows the type.
    assert y is not None
    return y


def _aten(op: Any, *args: Any, **kwargs: Any) -> Tensor:
    """Call an aten op (typed Any by torch) and give mypy a Tensor back."""
    result: Tensor = op(*args, **kwargs)
    return result


def _sigmoid_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return _aten(torch.ops.aten.sigmoid_backward, g, _need(y))


def _tanh_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return _aten(torch.ops.aten.tanh_backward, g, _need(y))


def _relu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    # Reads x rather than y so grad-only calls skip the forward; x <= 0 gives 0
    # (API.md: ReLU at 0 -> 0), exactly as torch's threshold_backward on y.
    return _aten(torch.ops.aten.threshold_backward, g, x, 0)


def _leaky_relu_fwd(x: Tensor, p: Params) -> Tensor:
    return F.leaky_relu(x, p["negative_slope"])


def _leaky_relu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    # x > 0 ? g : g * slope, so x == 0 takes the negative-side slope (API.md).
    return _aten(torch.ops.aten.leaky_relu_backward, g, x, p["negative_slope"], False)


def _elu_fwd(x: Tensor, p: Params) -> Tensor:
    return F.elu(x, p["alpha"])


def _elu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return _aten(torch.ops.aten.elu_backward, g, p["alpha"], 1, 1, False, x)


def _selu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return _aten(torch.ops.aten.elu_backward, g, SELU_ALPHA, SELU_SCALE, 1, False, x)


def _gelu_fwd(x: Tensor, p: Params) -> Tensor:
    return F.gelu(x, approximate=p["approximate"])


def _gelu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    if p["approximate"] == "tanh":
        x = x.clamp(-GELU_TANH_GRAD_CLAMP, GELU_TANH_GRAD_CLAMP)
    return _aten(torch.ops.aten.gelu_backward, g, x, approximate=p["approximate"])


def _silu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return _aten(torch.ops.aten.silu_backward, g, x)


def _softplus_fwd(x: Tensor, p: Params) -> Tensor:
    return F.softplus(x, p["beta"], p["threshold"])


def _softplus_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return _aten(torch.ops.aten.softplus_backward, g, x, p["beta"], p["threshold"])


def _mish_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return _aten(torch.ops.aten.mish_backward, g, x)


def _plain(fn: Callable[[Tensor], Tensor]) -> Forward:
    def forward(x: Tensor, p: Params) -> Tensor:
        return fn(x)

    return forward


_POINTWISE = (
    _Pointwise(
        "sigmoid",
        "Logistic sigmoid 1 / (1 + exp(-x)).",
        _plain(torch.sigmoid),
        _sigmoid_bwd,
        True,
    ),
    _Pointwise("tanh", "Hyperbolic tangent.", _plain(torch.tanh), _tanh_bwd, True),
    _Pointwise(
        "relu",
        "max(0, x); the gradient at 0 is 0.",
        _plain(torch.relu),
        _relu_bwd,
        False,
    ),
    _Pointwise(
        "leaky_relu",
        "x for x > 0, negative_slope * x otherwise; at 0 the gradient is negative_slope.",
        _leaky_relu_fwd,
        _leaky_relu_bwd,
        False,
        (ParamSpec("negative_slope", "float", 0.01, "Slope for x <= 0."),),
    ),
    _Pointwise(
        "elu",
        "x for x > 0, alpha * (exp(x) - 1) otherwise.",
        _elu_fwd,
        _elu_bwd,
        False,
        (ParamSpec("alpha", "float", 1.0, "Scale of the negative side."),),
    ),
    _Pointwise(
        "selu",
        "scale * elu(x, alpha) with the self-normalizing constants of torch.nn.SELU.",
        _plain(F.selu),
        _selu_bwd,
        False,
    ),
    _Pointwise(
        "gelu",
        "x * Phi(x) (Gaussian CDF), exact or with the tanh approximation.",
        _gelu_fwd,
        _gelu_bwd,
        False,
        (
            ParamSpec(
                "approximate",
                "str",
                "none",
                '"none": exact erf form; "tanh": the tanh approximation.',
                choices=("none", "tanh"),
            ),
        ),
    ),
    _Pointwise("silu", "x * sigmoid(x) (swish).", _plain(F.silu), _silu_bwd, False),
    _Pointwise(
        "softplus",
        "log(1 + exp(beta * x)) / beta; linear where beta * x > threshold.",
        _softplus_fwd,
        _softplus_bwd,
        False,
        (
            ParamSpec("beta", "float", 1.0, "Sharpness; must be > 0.", gt=0.0),
            ParamSpec(
                "threshold",
                "float",
                20.0,
                "Above this value of beta * x the op is linear.",
            ),
        ),
    ),
    _Pointwise("mish", "x * tanh(softplus(x)).", _plain(F.mish), _mish_bwd, False),
)


def _pointwise_spec(op: _Pointwise) -> OpSpec:
    return OpSpec(
        name=op.name,
        family="activations",
        kind="activation",
        doc=op.doc,
        inputs=(X, GRAD_Y),
        params=op.params,
        outputs=(Y,),
        grad_outputs=(GRAD_X,),
        run=_pointwise_kernel(op),
        batch_mode="elementwise",
        check=_check_like_x,
        upstream="grad_y",
    )


# ---------------------------------------------------------------- softmax family

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
    _check_grad_y(tensors, x.shape)


def _softmax_batchable(tensors: dict[str, Tensor], params: Params) -> bool:
    # Rows are joined along dim 0, so normalizing over dim 0 would mix requests.
    x = tensors["x"]
    return x.dim() > 0 and _resolve_dim(params["dim"], x.dim()) != 0


def _softmax_family_kernel(log: bool) -> Kernel:
    forward = torch.log_softmax if log else torch.softmax
    backward = torch.ops.aten._log_softmax_backward_data if log else torch.ops.aten._softmax_backward_data

    def run(batch: Batch) -> Outputs:
        x_in = batch.tensors["x"]
        x = _up(x_in)
        dim = batch.params["dim"]
        # torch's kernels subtract the row max (log-sum-exp), so large |x| stays finite.
        y = forward(x, dim)
        out: dict[str, Tensor] = {}
        if "y" in batch.want:
            out["y"] = _down(y, x_in.dtype)
        if "grad_x" in batch.want:
            grad = _aten(backward, _upstream(batch, x), y, dim, x.dtype)
            out["grad_x"] = _down(grad, x_in.dtype)
        return _split(out, batch.rows)

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


# ---------------------------------------------------------------- prelu


def _check_prelu(tensors: dict[str, Tensor], params: Params) -> None:
    x = tensors["x"]
    alpha = tensors.get("alpha")
    if alpha is not None:
        if alpha.dim() > 1:
            raise InvalidInput(
                f"alpha: must have shape [], [1] or [C] with C = x.shape[1]; "
                f"got {alpha.dim()}-d shape {_shape(alpha)}"
            )
        if alpha.dim() == 1 and alpha.shape[0] != 1:
            if x.dim() < 2:
                raise InvalidInput(
                    f"alpha: shape {_shape(alpha)} needs a channel dim x.shape[1], "
                    f"but x has shape {_shape(x)} (fewer than 2 dims); use shape [] or [1]"
                )
            if alpha.shape[0] != x.shape[1]:
                raise InvalidInput(
                    f"alpha: {alpha.shape[0]} slopes do not match x.shape[1] = {x.shape[1]} channels"
                )
    _check_grad_y(tensors, x.shape)


def _prelu_slopes(alpha: Tensor, x: Tensor) -> Tensor:
    """alpha shaped to broadcast against x along the channel dim (dim 1)."""
    if alpha.numel() == 1 and alpha.dim() <= 1:
        return alpha.reshape(())
    return alpha.reshape((alpha.shape[0],) + (1,) * (x.dim() - 2))


def _run_prelu(batch: Batch) -> Outputs:
    x_in = batch.tensors["x"]
    x = _up(x_in)
    given = batch.tensors.get("alpha")
    alpha = torch.tensor(PRELU_DEFAULT_ALPHA, dtype=x.dtype, device=x.device) if given is None else _up(given)
    a = _prelu_slopes(alpha, x)
    positive = x > 0
    out: dict[str, Tensor] = {}
    if "y" in batch.want:
        out["y"] = _down(torch.where(positive, x, a * x), x_in.dtype)
    want_x = "grad_x" in batch.want
    want_alpha = "grad_alpha" in batch.want
    if want_x or want_alpha:
        g = _upstream(batch, x)
        if want_x:
            # x == 0 takes the negative-side slope (API.md), as torch's prelu.
            out["grad_x"] = _down(torch.where(positive, g, a * g), x_in.dtype)
        if want_alpha:
            per_elem = (x * g).masked_fill_(positive, 0)
            if a.dim() == 0:
                grad_alpha = per_elem.sum()
            else:
                # The checker guarantees x has >= 2 dims here: sum all but channels.
                grad_alpha = per_elem.sum(dim=[d for d in range(x.dim()) if d != 1])
            out["grad_alpha"] = _down(grad_alpha.reshape(alpha.shape), x_in.dtype)
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
        raise InvalidInput(f"{name}: must be {rank}-D {layout}, got shape {_shape(t)}")


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
        raise InvalidInput(f"bias: shape {_shape(bias)} does not match [K, M] = [{k}, {m}]")
    _check_grad_y(tensors, (x.shape[0], m))


def _run_maxout(batch: Batch) -> Outputs:
    x_in = batch.tensors["x"]
    x = _up(x_in)
    weight = _up(batch.tensors["weight"])
    bias = _up(batch.tensors["bias"])
    k, m, d = weight.shape
    n = x.shape[0]
    # All K*M pieces in one matmul: z[n, k, m] = x[n] . weight[k, m] + bias[k, m].
    w_flat = weight.reshape(k * m, d)
    z = torch.addmm(bias.reshape(k * m), x, w_flat.t()).reshape(n, k, m)
    # torch.max along a dim returns the first maximal index: ties go to the first piece.
    y, piece = z.max(dim=1)
    out: dict[str, Tensor] = {}
    if "y" in batch.want:
        out["y"] = _down(y, x_in.dtype)
    grads = batch.want & {"grad_x", "grad_weight", "grad_bias"}
    if grads:
        g = _upstream(batch, y)
        grad_z = torch.zeros_like(z).scatter_(1, piece.unsqueeze(1), g.unsqueeze(1))
        grad_flat = grad_z.reshape(n, k * m)
        if "grad_x" in grads:
            out["grad_x"] = _down(grad_flat @ w_flat, x_in.dtype)
        if "grad_weight" in grads:
            out["grad_weight"] = _down((grad_flat.t() @ x).reshape(k, m, d), x_in.dtype)
        if "grad_bias" in grads:
            out["grad_bias"] = _down(grad_z.sum(dim=0), x_in.dtype)
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


def _softmax_specs() -> tuple[OpSpec, ...]:
    return (
        _softmax_spec("softmax", "exp(x) / sum(exp(x)) along dim, computed stably.", log=False),
        _softmax_spec("log_softmax", "x - logsumexp(x) along dim, computed stably.", log=True),
    )


SPECS: tuple[OpSpec, ...] = (
    *(_pointwise_spec(op) for op in _POINTWISE),
    PRELU,
    *_softmax_specs(),
    MAXOUT,
)
