"""The loss ops' elements functions: per-element losses of a whole batch and divisors.

Flow position: the loss runner (ops/reduction.py) calls the op's elements function on
the batch's tensors in compute precision; what it returns is what reduction="none"
answers, and autograd differentiates it for grad_input. The kernels are chosen so an
element's result does not depend on its place in the buffer (see ops/losses.py).
multiclass_hinge is shared with full_loss (ops/regularization.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gradserve.ops.reduction import ElementFn, Elements, count_denoms, segment_sums
from gradserve.ops.registry import Params

Tensor = torch.Tensor


def pointwise_elements(fn: Callable[[Tensor, Tensor, Params], Tensor]) -> ElementFn:
    """Losses with one loss per input element and a plain mean."""

    def elements(x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]) -> Elements:
        values = fn(x, tensors["target"], params)
        return Elements(values, count_denoms(values, rows))

    return elements


def l1_terms(x: Tensor, t: Tensor, p: Params) -> Tensor:
    return F.l1_loss(x, t, reduction="none")


def mse_terms(x: Tensor, t: Tensor, p: Params) -> Tensor:
    return F.mse_loss(x, t, reduction="none")


def huber_terms(x: Tensor, t: Tensor, p: Params) -> Tensor:
    # Written out rather than F.huber_loss: torch's float32 kernel computes its scalar
    # tail in double, so an element's bits would depend on its place in the batch.
    # Autograd of this form gives torch's gradient: clamp(x - t, -delta, delta).
    delta: float = p["delta"]
    diff = x - t
    dist = diff.abs()
    return torch.where(dist < delta, 0.5 * diff * diff, delta * (dist - 0.5 * delta))


def smooth_l1_terms(x: Tensor, t: Tensor, p: Params) -> Tensor:
    # Written out for the same reason as huber_terms; beta 0 is plain L1, as in torch.
    beta: float = p["beta"]
    diff = x - t
    dist = diff.abs()
    if beta == 0:
        return dist
    return torch.where(dist < beta, 0.5 * diff * diff / beta, dist - 0.5 * beta)


def bce_with_logits_elements(
    x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]
) -> Elements:
    # torch's own formula (stable for any |x|: log_sigmoid never exponentiates a
    # large positive number), but autograd differentiates log_sigmoid, not sigmoid.
    target = tensors["target"]
    pos_weight, weight = tensors.get("pos_weight"), tensors.get("weight")
    log_weight = 1 if pos_weight is None else (pos_weight - 1) * target + 1
    values = (1 - target) * x - log_weight * F.logsigmoid(x)
    if weight is not None:
        values = values * weight
    return Elements(values, count_denoms(values, rows))


def bce_elements(x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]) -> Elements:
    # torch clamps the logs at -100 and its backward divides by max(x(1-x), 1e-12):
    # finite answers at probabilities exactly 0 and 1.
    values = F.binary_cross_entropy(x, tensors["target"], weight=tensors.get("weight"), reduction="none")
    return Elements(values, count_denoms(values, rows))


def _target_weight_denoms(
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    rows: tuple[int, ...],
    dtype: torch.dtype,
) -> Tensor:
    """torch's "mean" divisor for class-index targets: the summed class weight of
    each request's targets that are not ignore_index (their count without weight)."""
    kept = target != ignore_index
    if weight is None:
        per_target = kept.to(dtype)
    else:
        per_target = weight[torch.where(kept, target, 0)].masked_fill(~kept, 0)
    return segment_sums(per_target, rows)


def cross_entropy_elements(
    x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]
) -> Elements:
    target, weight = tensors["target"], tensors.get("weight")
    values = F.cross_entropy(
        x,
        target,
        weight=weight,
        ignore_index=params["ignore_index"],
        reduction="none",
        label_smoothing=params["label_smoothing"],
    )
    if target.is_floating_point():
        # Class probabilities: torch's mean is over N * d1 * ..., weights or not.
        return Elements(values, count_denoms(values, rows))
    denoms = _target_weight_denoms(target, weight, params["ignore_index"], rows, values.dtype)
    return Elements(values, denoms)


def nll_elements(x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]) -> Elements:
    target, weight = tensors["target"], tensors.get("weight")
    values = F.nll_loss(x, target, weight=weight, ignore_index=params["ignore_index"], reduction="none")
    denoms = _target_weight_denoms(target, weight, params["ignore_index"], rows, values.dtype)
    return Elements(values, denoms)


def kl_div_elements(x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]) -> Elements:
    values = F.kl_div(x, tensors["target"], reduction="none", log_target=params["log_target"])
    if params["reduction"] == "batchmean" and values.dim() > 0:
        # sum / input.shape[0] of each request (a 0-d input divides by 1, as torch).
        denoms = torch.tensor(rows, dtype=values.dtype, device=values.device)
    else:
        denoms = count_denoms(values, rows)
    return Elements(values, denoms)


def multiclass_hinge(scores: Tensor, target: Tensor, margin: float) -> Tensor:
    """Per-sample multiclass SVM loss [N]: sum over k != y of max(0, s_k - s_y + margin).

    relu's backward at 0 is 0, so a term at exactly zero margin contributes no
    gradient (API.md), and the masked k == y term contributes none either.
    """
    picked = target.unsqueeze(1)
    correct = scores.gather(1, picked)
    terms = torch.relu(scores - correct + margin)
    is_target = torch.zeros_like(terms, dtype=torch.bool).scatter_(1, picked, True)
    return terms.masked_fill(is_target, 0).sum(dim=1)


def hinge_elements(x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]) -> Elements:
    values = multiclass_hinge(x, tensors["target"], params["margin"])
    return Elements(values, count_denoms(values, rows))
