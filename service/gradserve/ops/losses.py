"""Loss ops (API.md section 1.2): their declarations (``SPECS``).

Flow position: the executor calls ``OpSpec.run`` on a ``Batch`` built by
``layout.assemble`` (batch_mode "rows": requests concatenated along dim 0); the
checkers run earlier, at validation time, on one request's CPU tensors. The parts live
by role: the shared runner and its reduction in ops/reduction.py, the checkers in
ops/loss_checks.py, the per-op elements functions in ops/loss_elements.py; this module
declares each op from them.

Each loss is split into what differs per op and what every loss shares:
- the op's *elements* function gives the per-element losses of the whole batch (what
  reduction="none" returns) and each request's divisor for "mean";
- ``_run_reduction``, the one runner, reduces per request (per segment of rows) and
  gets ``grad_input`` from ONE autograd call on the per-element losses, feeding every
  element its own request's upstream gradient (none: grad_loss itself; sum: g_i;
  mean: g_i / denom_i).
A lone request is just the batch ``rows=(N,)`` through the same code, so its answer is
bitwise the one it gets in any batch. That also needs per-element kernels whose result
does not depend on where an element sits in the buffer. Some torch kernels compute
the tail of a buffer with scalar code that rounds differently from their vector body
(sigmoid, softplus; huber and smooth_l1 in float32), so bce_with_logits is written
with log_sigmoid and huber/smooth_l1 with plain arithmetic; the tests check this
bitwise on batches large enough to be split across threads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gradserve.ops.loss_checks import (
    check_bce,
    check_bce_with_logits,
    check_cross_entropy,
    check_hinge,
    check_nll,
    check_pointwise,
)
from gradserve.ops.loss_elements import (
    bce_elements,
    bce_with_logits_elements,
    cross_entropy_elements,
    hinge_elements,
    huber_terms,
    kl_div_elements,
    l1_terms,
    mse_terms,
    nll_elements,
    pointwise_elements,
    smooth_l1_terms,
)
from gradserve.ops.reduction import (
    GRAD_INPUT,
    GRAD_LOSS,
    LOSS,
    ElementFn,
    not_zero_dim,
    reduction_kernel,
)
from gradserve.ops.registry import OpSpec, Params, ParamSpec, TensorSpec

Tensor = torch.Tensor

REDUCTIONS = ("mean", "sum", "none")
KL_REDUCTIONS = ("mean", "batchmean", "sum", "none")
DEFAULT_IGNORE_INDEX = -100


def _reduction_param(choices: tuple[str, ...] = REDUCTIONS) -> ParamSpec:
    return ParamSpec(
        "reduction",
        "str",
        "mean",
        "How per-element losses are reduced per request: " + ", ".join(choices) + ".",
        choices=choices,
    )


def _loss_spec(
    name: str,
    doc: str,
    elements_fn: ElementFn,
    check: Callable[[dict[str, Tensor], Params], None],
    target: TensorSpec,
    extra_inputs: tuple[TensorSpec, ...] = (),
    params: tuple[ParamSpec, ...] = (),
    reduction: ParamSpec | None = None,
) -> OpSpec:
    return OpSpec(
        name=name,
        family="losses",
        kind="loss",
        doc=doc,
        inputs=(
            TensorSpec("input", "float", _INPUT_DOCS.get(name, "Predictions.")),
            target,
            *extra_inputs,
            GRAD_LOSS,
        ),
        params=(*params, reduction or _reduction_param()),
        outputs=(LOSS,),
        grad_outputs=(GRAD_INPUT,),
        run=reduction_kernel(elements_fn),
        batch_mode="rows",
        check=check,
        batchable=not_zero_dim,
        upstream=GRAD_LOSS.name,
    )


_INPUT_DOCS = {
    "bce_with_logits": "Logits, any shape.",
    "bce": "Probabilities in [0, 1], any shape.",
    "cross_entropy": "Unnormalized scores [N, C] or [N, C, d1, ...].",
    "nll": "Log-probabilities [N, C] or [N, C, d1, ...].",
    "kl_div": "Log-probabilities, any shape.",
    "hinge": "Class scores [N, C].",
}
_FLOAT_TARGET = TensorSpec("target", "float", "Targets with input's shape.")
_INDEX_TARGET = TensorSpec("target", "index", "Class indices [N, d1, ...] in [0, C) or ignore_index.")
_IGNORE_INDEX = ParamSpec(
    "ignore_index",
    "int",
    DEFAULT_IGNORE_INDEX,
    "Target value that is skipped (no loss, no gradient, not counted by mean).",
)
_CLASS_WEIGHT = TensorSpec(
    "weight", "float", "Per-class rescaling weight [C].", optional=True, per_row=False, rank=1
)
_BROADCAST_WEIGHT = TensorSpec(
    "weight",
    "float",
    "Per-element rescaling weight, broadcastable to input's shape.",
    optional=True,
    per_row=False,
)

L1 = _loss_spec(
    "l1",
    "Absolute differences |input - target|.",
    pointwise_elements(l1_terms),
    check_pointwise,
    _FLOAT_TARGET,
)
MSE = _loss_spec(
    "mse",
    "Squared differences (input - target)^2; reduction sum is the SSD.",
    pointwise_elements(mse_terms),
    check_pointwise,
    _FLOAT_TARGET,
)
HUBER = _loss_spec(
    "huber",
    "Huber loss: quadratic within delta of the target, linear beyond.",
    pointwise_elements(huber_terms),
    check_pointwise,
    _FLOAT_TARGET,
    params=(ParamSpec("delta", "float", 1.0, "Where quadratic turns linear.", gt=0),),
)
SMOOTH_L1 = _loss_spec(
    "smooth_l1",
    "Smooth L1 loss: Huber divided by beta (beta 0 is plain L1).",
    pointwise_elements(smooth_l1_terms),
    check_pointwise,
    _FLOAT_TARGET,
    params=(ParamSpec("beta", "float", 1.0, "Where quadratic turns linear.", ge=0),),
)
BCE_WITH_LOGITS = _loss_spec(
    "bce_with_logits",
    "Sigmoid + binary cross-entropy, computed stably from logits.",
    bce_with_logits_elements,
    check_bce_with_logits,
    _FLOAT_TARGET,
    extra_inputs=(
        _BROADCAST_WEIGHT,
        TensorSpec(
            "pos_weight",
            "float",
            "Weight of positive examples, broadcastable to input's shape (e.g. [C]).",
            optional=True,
            per_row=False,
            rank=1,
        ),
    ),
)
BCE = _loss_spec(
    "bce",
    "Binary cross-entropy on probabilities in [0, 1] (logs clamped at -100).",
    bce_elements,
    check_bce,
    TensorSpec("target", "float", "Targets in [0, 1] with input's shape."),
    extra_inputs=(_BROADCAST_WEIGHT,),
)
CROSS_ENTROPY = _loss_spec(
    "cross_entropy",
    "Softmax + cross-entropy (via log-sum-exp) against class indices or probabilities.",
    cross_entropy_elements,
    check_cross_entropy,
    TensorSpec(
        "target",
        "target",
        "Class indices [N, d1, ...] (integer dtype) or class probabilities with input's shape (float dtype).",
    ),
    extra_inputs=(_CLASS_WEIGHT,),
    params=(
        ParamSpec(
            "label_smoothing",
            "float",
            0.0,
            "Mix of the target with the uniform distribution.",
            ge=0,
            le=1,
        ),
        _IGNORE_INDEX,
    ),
)
NLL = _loss_spec(
    "nll",
    "Negative log-likelihood of log-probabilities.",
    nll_elements,
    check_nll,
    _INDEX_TARGET,
    extra_inputs=(_CLASS_WEIGHT,),
    params=(_IGNORE_INDEX,),
)
KL_DIV = _loss_spec(
    "kl_div",
    "Kullback-Leibler divergence of target from input (input: log-probabilities).",
    kl_div_elements,
    check_pointwise,
    TensorSpec("target", "float", "Probabilities (log-probabilities with log_target)."),
    params=(ParamSpec("log_target", "bool", False, "Whether target is given as logs."),),
    reduction=_reduction_param(KL_REDUCTIONS),
)
HINGE = _loss_spec(
    "hinge",
    "Multiclass SVM loss: sum over k != y of max(0, s_k - s_y + margin), not divided by the class count.",
    hinge_elements,
    check_hinge,
    TensorSpec("target", "index", "Class indices [N] in [0, C)."),
    params=(ParamSpec("margin", "float", 1.0, "The margin Delta."),),
)

SPECS: tuple[OpSpec, ...] = (
    L1,
    MSE,
    HUBER,
    SMOOTH_L1,
    BCE_WITH_LOGITS,
    BCE,
    CROSS_ENTROPY,
    NLL,
    KL_DIV,
    HINGE,
)
