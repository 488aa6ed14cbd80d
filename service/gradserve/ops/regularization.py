"""Regularization and the full loss (API.md section 1.3): declarations and kernels.

Flow position: the executor calls ``OpSpec.run`` on a solo ``Batch`` (both ops are
batch_mode "solo": regularization reduces its whole input to one number and
full_loss is matmul-based, so neither is joined with other requests); the checkers
run earlier, at validation time, on one request's CPU tensors.

full_loss assembles the lecture's compute graph: scores = x W^T + b, the data loss
(mean over N of the per-sample cross-entropy or multiclass hinge, the same per-sample
functions the loss ops use) plus strength * R(W); its gradients come from one
autograd call on ``loss``.

``strength`` (the lecture's lambda) must be >= 0: a negative one would reward large
weights, which no regularizer means, so it answers 422 rather than a silent surprise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradserve.errors import InvalidInput
from gradserve.ops.loss_elements import multiclass_hinge
from gradserve.ops.numerics import upcast
from gradserve.ops.reduction import autograd_ready
from gradserve.ops.registry import Batch, OpSpec, Outputs, OutputSpec, Params, ParamSpec, TensorSpec

Tensor = torch.Tensor

PENALTY_KINDS = ("l2", "l1")


def penalty(weight: Tensor, kind: str) -> Tensor:
    """R(w): "l2" is sum w^2, "l1" is sum |w| (abs's backward at 0 is sign(0) = 0)."""
    if kind == "l2":
        return weight.square().sum()
    if kind == "l1":
        return weight.abs().sum()
    raise ValueError(f"unknown penalty kind {kind!r}")


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _check_scalar_upstream(tensors: dict[str, Tensor], name: str, of: str) -> None:
    upstream = tensors.get(name)
    if upstream is not None and upstream.dim() != 0:
        raise InvalidInput(f"{name}: must have {of}'s shape [] (a scalar), got {_shape(upstream)}")


def _strength_param(default: float) -> ParamSpec:
    return ParamSpec(
        "strength",
        "float",
        default,
        "The regularization strength lambda (>= 0).",
        ge=0,
    )


# ------------------------------------------------------------- regularization


def _check_regularization(tensors: dict[str, Tensor], params: Params) -> None:
    _check_scalar_upstream(tensors, "grad_penalty", "penalty")


def _run_regularization(batch: Batch) -> Outputs:
    weight_in = batch.tensors["weight"]
    want_grad = "grad_weight" in batch.want
    with torch.inference_mode(False), torch.enable_grad():
        weight = autograd_ready(upcast(weight_in)).detach().requires_grad_(want_grad)
        value = batch.params["strength"] * penalty(weight, batch.params["kind"])
        out: dict[str, Tensor] = {}
        if want_grad:
            upstream = batch.tensors.get("grad_penalty")
            g = torch.ones_like(value) if upstream is None else upcast(upstream)
            (grad,) = torch.autograd.grad(value, weight, g)
            out["grad_weight"] = grad.to(weight_in.dtype)
    if "penalty" in batch.want:
        out["penalty"] = value.detach().to(weight_in.dtype)
    return [out]


REGULARIZATION = OpSpec(
    name="regularization",
    family="losses",
    kind="regularization",
    doc="Weight penalty strength * R(w), with R = sum w^2 (l2) or sum |w| (l1).",
    inputs=(
        TensorSpec("weight", "float", "The weights to penalize, any shape."),
        TensorSpec(
            "grad_penalty",
            "float",
            "Upstream gradient of penalty, shape [] (1 when absent).",
            optional=True,
            rank=0,
        ),
    ),
    params=(
        ParamSpec(
            "kind",
            "str",
            "l2",
            "l2: sum of w^2; l1: sum of |w|.",
            choices=PENALTY_KINDS,
        ),
        _strength_param(1.0),
    ),
    outputs=(OutputSpec("penalty", "strength * R(weight), shape [].", rank=0),),
    grad_outputs=(OutputSpec("grad_weight", "Gradient wrt weight (its shape)."),),
    run=_run_regularization,
    batch_mode="solo",
    check=_check_regularization,
    upstream="grad_penalty",
)


# ----------------------------------------------------------------- full_loss

_LEAVES = ("weight", "bias", "x")


def _check_full_loss(tensors: dict[str, Tensor], params: Params) -> None:
    x, weight = tensors["x"], tensors["weight"]
    if x.dim() != 2:
        raise InvalidInput(f"x: must be 2-D [N, D], got shape {_shape(x)}")
    if weight.dim() != 2:
        raise InvalidInput(f"weight: must be 2-D [C, D], got shape {_shape(weight)}")
    classes, features = weight.shape
    if features != x.shape[1]:
        raise InvalidInput(f"weight: feature dim D = {features} does not match x's D = {x.shape[1]}")
    if classes < 1:
        raise InvalidInput("weight: needs at least one class (C = weight.shape[0] >= 1)")
    bias = tensors.get("bias")
    if bias is not None and tuple(bias.shape) != (classes,):
        raise InvalidInput(f"bias: shape {_shape(bias)} must be [C] = [{classes}]")
    target = tensors["target"]
    if tuple(target.shape) != (x.shape[0],):
        raise InvalidInput(f"target: shape {_shape(target)} must be [N] = [{x.shape[0]}]")
    bad = (target < 0) | (target >= classes)
    if bool(bad.any()):
        value = int(target[bad].reshape(-1)[0].item())
        raise InvalidInput(f"target: class index {value} out of range [0, {classes})")
    _check_scalar_upstream(tensors, "grad_loss", "loss")


def _data_losses(scores: Tensor, target: Tensor, params: Params) -> Tensor:
    """Per-sample L_i [N]."""
    if params["data_loss"] == "hinge":
        return multiclass_hinge(scores, target, params["margin"])
    # log-softmax inside: stable for scores of any magnitude.
    return F.cross_entropy(scores, target, reduction="none")


def _run_full_loss(batch: Batch) -> Outputs:
    tensors, params = batch.tensors, batch.params
    out_dtype = tensors["x"].dtype
    wanted_grads = [name for name in _LEAVES if f"grad_{name}" in batch.want and name in tensors]
    with torch.inference_mode(False), torch.enable_grad():
        leaves = {
            name: autograd_ready(upcast(tensors[name])).detach().requires_grad_(name in wanted_grads)
            for name in _LEAVES
            if name in tensors
        }
        scores = F.linear(leaves["x"], leaves["weight"], leaves.get("bias"))
        target = autograd_ready(tensors["target"])
        data_loss = _data_losses(scores, target, params).mean()
        if params["regularization"] == "none":
            reg_loss = torch.zeros_like(data_loss)
        else:
            reg = penalty(leaves["weight"], params["regularization"])
            reg_loss = params["strength"] * reg
        loss = data_loss + reg_loss
        out: dict[str, Tensor] = {}
        if wanted_grads:
            upstream = tensors.get("grad_loss")
            g = torch.ones_like(loss) if upstream is None else upcast(upstream)
            grads = torch.autograd.grad(loss, [leaves[n] for n in wanted_grads], g)
            for name, grad in zip(wanted_grads, grads, strict=True):
                out[f"grad_{name}"] = grad.to(out_dtype)
    values = {
        "loss": loss,
        "data_loss": data_loss,
        "reg_loss": reg_loss,
        "scores": scores,
    }
    for name, value in values.items():
        if name in batch.want:
            out[name] = value.detach().to(out_dtype)
    return [out]


FULL_LOSS = OpSpec(
    name="full_loss",
    family="losses",
    kind="full_loss",
    doc="Linear scores, mean data loss and weight penalty: L = mean_i L_i + strength * R(weight).",
    inputs=(
        TensorSpec("x", "float", "Samples [N, D]."),
        TensorSpec("weight", "float", "Class weights [C, D]."),
        TensorSpec("bias", "float", "Class biases [C] (not regularized).", optional=True, rank=1),
        TensorSpec("target", "index", "Class indices [N] in [0, C)."),
        TensorSpec(
            "grad_loss",
            "float",
            "Upstream gradient of loss, shape [] (1 when absent).",
            optional=True,
        ),
    ),
    params=(
        ParamSpec(
            "data_loss",
            "str",
            "cross_entropy",
            "Per-sample loss L_i: softmax cross-entropy or multiclass hinge.",
            choices=("cross_entropy", "hinge"),
        ),
        ParamSpec("margin", "float", 1.0, "The hinge margin Delta (hinge only)."),
        ParamSpec(
            "regularization",
            "str",
            "l2",
            "R(weight): l2 (sum w^2), l1 (sum |w|) or none.",
            choices=(*PENALTY_KINDS, "none"),
        ),
        _strength_param(0.0),
    ),
    outputs=(
        OutputSpec("loss", "data_loss + reg_loss, shape []."),
        OutputSpec("data_loss", "Mean over N of the per-sample losses, shape [].", rank=0),
        OutputSpec("reg_loss", "strength * R(weight), shape [].", rank=0),
        OutputSpec("scores", "x weight^T + bias, [N, C]."),
    ),
    grad_outputs=(
        OutputSpec("grad_weight", "Gradient of loss wrt weight [C, D]."),
        OutputSpec("grad_bias", "Gradient of loss wrt bias [C] (only with a bias)."),
        OutputSpec("grad_x", "Gradient of loss wrt x [N, D]."),
    ),
    run=_run_full_loss,
    batch_mode="solo",
    check=_check_full_loss,
    upstream="grad_loss",
    intermediate=lambda tensors, params: (
        "scores [N, C]",
        tensors["x"].shape[0] * tensors["weight"].shape[0],
    ),
)

SPECS: tuple[OpSpec, ...] = (REGULARIZATION, FULL_LOSS)
