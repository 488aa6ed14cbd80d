"""Pointwise activations (sigmoid ... mish): one forward and one aten backward each.

Flow position: the executor calls ``OpSpec.run`` on a ``Batch`` built by
``layout.assemble`` in batch_mode "elementwise" (flat padded tensors); ``_check_like_x``
runs earlier, at validation time. One kernel (``_pointwise_kernel``) serves all of them;
each op is a ``_Pointwise`` row of what differs. ops/activations.py lists the specs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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

# torch.nn.functional.selu's constants (selu is elu with these alpha and scale).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
# Beyond this |x| the tanh-approximated gelu's derivative is exactly 1 (or 0) in every
# compute dtype, but torch's backward cubes x and gives inf * 0 = NaN in float32 from
# |x| ~ 1e13 on; clamping first keeps those gradients finite without changing a bit below.
GELU_TANH_GRAD_CLAMP = 1e6


def _check_like_x(tensors: dict[str, Tensor], params: Params) -> None:
    check_grad_y(tensors, tensors["x"].shape)


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
        x = compute_precision(x_in)
        want_grad = "grad_x" in batch.want
        y = None
        if "y" in batch.want or (want_grad and op.backward_uses_y):
            y = op.forward(x, batch.params)
        out: dict[str, Tensor] = {}
        if y is not None and "y" in batch.want:
            out["y"] = to_dtype(y, x_in.dtype)
        if want_grad:
            grad = op.backward(upstream_grad(batch, x), x, y, batch.params)
            out["grad_x"] = to_dtype(grad, x_in.dtype)
        return split_outputs(out, batch.rows)

    return run


def _need(y: Tensor | None) -> Tensor:
    # backward_uses_y guarantees y was computed; this narrows the type.
    assert y is not None
    return y


def _sigmoid_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return aten(torch.ops.aten.sigmoid_backward, g, _need(y))


def _tanh_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return aten(torch.ops.aten.tanh_backward, g, _need(y))


def _relu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    # Reads x rather than y so grad-only calls skip the forward; x <= 0 gives 0
    # (API.md: ReLU at 0 -> 0), exactly as torch's threshold_backward on y.
    return aten(torch.ops.aten.threshold_backward, g, x, 0)


def _leaky_relu_fwd(x: Tensor, p: Params) -> Tensor:
    return F.leaky_relu(x, p["negative_slope"])


def _leaky_relu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    # x > 0 ? g : g * slope, so x == 0 takes the negative-side slope (API.md).
    return aten(torch.ops.aten.leaky_relu_backward, g, x, p["negative_slope"], False)


def _elu_fwd(x: Tensor, p: Params) -> Tensor:
    return F.elu(x, p["alpha"])


def _elu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return aten(torch.ops.aten.elu_backward, g, p["alpha"], 1, 1, False, x)


def _selu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return aten(torch.ops.aten.elu_backward, g, SELU_ALPHA, SELU_SCALE, 1, False, x)


def _gelu_fwd(x: Tensor, p: Params) -> Tensor:
    return F.gelu(x, approximate=p["approximate"])


def _gelu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    if p["approximate"] == "tanh":
        # Finite inputs only: at +-inf the derivative is inf * 0 = NaN, as IEEE
        # arithmetic (API.md) and torch's own backward (both gelu forms) give it.
        x = torch.where(x.isinf(), x, x.clamp(-GELU_TANH_GRAD_CLAMP, GELU_TANH_GRAD_CLAMP))
    return aten(torch.ops.aten.gelu_backward, g, x, approximate=p["approximate"])


def _silu_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return aten(torch.ops.aten.silu_backward, g, x)


def _softplus_fwd(x: Tensor, p: Params) -> Tensor:
    return F.softplus(x, p["beta"], p["threshold"])


def _softplus_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return aten(torch.ops.aten.softplus_backward, g, x, p["beta"], p["threshold"])


def _mish_bwd(g: Tensor, x: Tensor, y: Tensor | None, p: Params) -> Tensor:
    return aten(torch.ops.aten.mish_backward, g, x)


def _plain(fn: Callable[[Tensor], Tensor]) -> Forward:
    def forward(x: Tensor, p: Params) -> Tensor:
        return fn(x)

    return forward


POINTWISE = (
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


def pointwise_spec(op: _Pointwise) -> OpSpec:
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
