"""Loss ops (API.md section 1.2): their declarations and kernels.

Flow position: the executor calls ``OpSpec.run`` on a ``Batch`` built by
``layout.assemble`` (batch_mode "rows": requests concatenated along dim 0); the
checkers here run earlier, at validation time, on one request's CPU tensors.

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

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gradserve.errors import InvalidInput
from gradserve.ops.numerics import upcast
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

REDUCTIONS = ("mean", "sum", "none")
KL_REDUCTIONS = ("mean", "batchmean", "sum", "none")
DEFAULT_IGNORE_INDEX = -100

LOSS = OutputSpec("loss", "The loss: [] for mean/sum/batchmean, per element for none.")
GRAD_INPUT = OutputSpec("grad_input", "Vector-Jacobian product wrt input (its shape).")
GRAD_LOSS = TensorSpec(
    "grad_loss",
    "float",
    "Upstream gradient with loss's shape (all ones when absent).",
    optional=True,
)


# ------------------------------------------------------------------ the runner


@dataclass(frozen=True)
class Elements:
    """An op's per-element losses for a whole batch and its per-request divisors."""

    # What reduction="none" answers, for all requests at once; dim 0 is the row dim
    # (0-d for a 0-d input, which is never batched).
    values: Tensor
    # [len(rows)]: the divisor of each request's sum for "mean" (or "batchmean").
    denoms: Tensor


# (input in compute precision, maybe requiring grad; every batch tensor in compute
# precision; params; rows) -> Elements
ElementFn = Callable[[Tensor, dict[str, Tensor], Params, tuple[int, ...]], Elements]


def segment_sizes(values: Tensor, rows: tuple[int, ...]) -> list[int]:
    """How many of ``values``' elements (flattened) belong to each request."""
    if values.dim() == 0:
        return [1]
    per_row = math.prod(values.shape[1:])
    return [r * per_row for r in rows]


def segment_sums(values: Tensor, rows: tuple[int, ...]) -> Tensor:
    """Per-request sums as a [len(rows)] vector, by a pairwise tree of elementwise adds.

    Each request's elements go in one row of a [requests, P] buffer (P a power of two
    at least the largest request's size) padded with -0.0, which halves P times with
    ``left + right``. An elementwise add rounds each element alone, and adding -0.0
    is exact for every value (0.0 and -0.0 included), so halvings over padding change
    nothing: a request's sum is bitwise the same whatever else shares the batch, and
    the whole batch is summed in log2(P) kernel calls instead of one per request.
    """
    sizes = segment_sizes(values, rows)
    flat = values.reshape(-1)
    width = 1 << max(max(sizes) - 1, 0).bit_length()
    buf = flat.new_full((len(sizes), width), -0.0)
    if len(sizes) == 1 or all(size == sizes[0] for size in sizes):
        buf[:, : sizes[0]] = flat.reshape(len(sizes), sizes[0])
    else:
        lengths = torch.tensor(sizes, device=flat.device)
        starts = torch.cumsum(lengths, 0) - lengths
        row = torch.repeat_interleave(torch.arange(len(sizes), device=flat.device), lengths)
        column = torch.arange(flat.numel(), device=flat.device) - starts[row]
        buf[row, column] = flat
    while width > 1:
        width //= 2
        buf = buf[:, :width] + buf[:, width:]
    return buf.reshape(-1)


def count_denoms(values: Tensor, rows: tuple[int, ...]) -> Tensor:
    """Divisors for a plain mean over each request's elements."""
    sizes = segment_sizes(values, rows)
    return torch.tensor(sizes, dtype=values.dtype, device=values.device)


def autograd_ready(t: Tensor) -> Tensor:
    # The executor may run under inference_mode; its tensors cannot be saved for
    # backward, a copy made outside it can.
    return t.clone() if t.is_inference() else t


def _element_upstream(
    grad_loss: Tensor | None,
    reduction: str,
    elements: Elements,
    rows: tuple[int, ...],
) -> Tensor:
    """The upstream gradient of every per-element loss."""
    values = elements.values
    if reduction == "none":
        if grad_loss is None:
            return torch.ones_like(values)
        return grad_loss.reshape(values.shape)
    # mean/sum/batchmean: one scalar per request (stacked by layout.assemble).
    ones = torch.ones_like(elements.denoms)
    per_request = ones if grad_loss is None else grad_loss.reshape(-1)
    if reduction != "sum":
        per_request = per_request / elements.denoms
    sizes = torch.tensor(segment_sizes(values, rows), device=values.device)
    return torch.repeat_interleave(per_request, sizes).reshape(values.shape)


def _reduce(elements: Elements, reduction: str, rows: tuple[int, ...]) -> list[Tensor]:
    values = elements.values.detach()
    if reduction == "none":
        return split_rows(values, rows) if values.dim() > 0 else [values]
    sums = segment_sums(values, rows)
    per_request = sums if reduction == "sum" else sums / elements.denoms
    return list(per_request.unbind(0))


def _run_reduction(elements_fn: ElementFn, batch: Batch) -> Outputs:
    reduction: str = batch.params["reduction"]
    out_dtype = batch.tensors["input"].dtype
    want_loss = LOSS.name in batch.want
    want_grad = GRAD_INPUT.name in batch.want
    with torch.inference_mode(False), torch.enable_grad():
        tensors = {n: autograd_ready(upcast(t)) for n, t in batch.tensors.items()}
        x = tensors["input"].detach().requires_grad_(want_grad)
        elements = elements_fn(x, tensors, batch.params, batch.rows)
        grads: list[Tensor] = []
        if want_grad:
            upstream = _element_upstream(tensors.get(GRAD_LOSS.name), reduction, elements, batch.rows)
            (grad,) = torch.autograd.grad(elements.values, x, upstream)
            grads = split_rows(grad, batch.rows) if grad.dim() > 0 else [grad]
    losses = _reduce(elements, reduction, batch.rows) if want_loss else []
    outputs: Outputs = [{} for _ in batch.rows]
    for i, out in enumerate(outputs):
        if want_loss:
            out[LOSS.name] = losses[i].to(out_dtype)
        if want_grad:
            out[GRAD_INPUT.name] = grads[i].to(out_dtype)
    return outputs


def reduction_kernel(elements_fn: ElementFn) -> Kernel:
    """The kernel of a loss: its elements function run through the shared runner."""

    def run(batch: Batch) -> Outputs:
        return _run_reduction(elements_fn, batch)

    return run


def not_zero_dim(tensors: dict[str, Tensor], params: Params) -> bool:
    """A 0-d input has no row dim to concatenate along: it always runs alone."""
    return tensors["input"].dim() > 0


# ------------------------------------------------------------------- checkers


def _shape(t: Tensor | torch.Size | tuple[int, ...]) -> list[int]:
    return list(t.shape) if isinstance(t, Tensor) else list(t)


def _check_grad_loss(tensors: dict[str, Tensor], params: Params, loss_shape: tuple[int, ...]) -> None:
    grad_loss = tensors.get(GRAD_LOSS.name)
    if grad_loss is None:
        return
    reduction = params["reduction"]
    expected = loss_shape if reduction == "none" else ()
    if tuple(grad_loss.shape) != tuple(expected):
        raise InvalidInput(
            f"grad_loss: shape {_shape(grad_loss)} does not match loss's shape "
            f"{_shape(expected)} for reduction={reduction!r}"
        )


def _check_same_shape(tensors: dict[str, Tensor], name: str) -> None:
    other, ref = tensors[name], tensors["input"]
    if other.shape != ref.shape:
        raise InvalidInput(f"{name}: shape {_shape(other)} does not match input's shape {_shape(ref)}")


def _check_broadcastable(tensors: dict[str, Tensor], name: str) -> None:
    t, ref = tensors.get(name), tensors["input"]
    if t is None:
        return
    # Broadcasting may stretch t but must not grow input's shape.
    trailing = ref.shape[ref.dim() - t.dim() :] if t.dim() <= ref.dim() else None
    fits = trailing is not None and all(
        size in (1, full) for size, full in zip(t.shape, trailing, strict=True)
    )
    if not fits:
        raise InvalidInput(f"{name}: shape {_shape(t)} does not broadcast to input's shape {_shape(ref)}")


def _check_unit_interval(t: Tensor, name: str, what: str) -> None:
    bad = ~((t >= 0) & (t <= 1))  # NaN fails both comparisons
    if bool(bad.any()):
        value = t[bad].reshape(-1)[0].item()
        raise InvalidInput(f"{name}: {what} must lie in [0, 1], got {value}")


def _check_classes(input_: Tensor, layout: str, exact_dim: int | None = None) -> int:
    if input_.dim() < 2 or (exact_dim is not None and input_.dim() != exact_dim):
        raise InvalidInput(f"input: must be {layout}, got shape {_shape(input_)}")
    classes = input_.shape[1]
    if classes < 1:
        raise InvalidInput(f"input: needs at least one class (C = input.shape[1] = {classes})")
    return classes


def _check_class_indices(
    target: Tensor, classes: int, expected_shape: tuple[int, ...], ignore_index: int | None
) -> None:
    if tuple(target.shape) != expected_shape:
        raise InvalidInput(
            f"target: shape {_shape(target)} does not match {_shape(expected_shape)} "
            "(input's shape without the class dim 1)"
        )
    if target.numel() == 0:
        return
    low, high = torch.aminmax(target)
    if int(low) >= 0 and int(high) < classes:  # the common case, in one pass
        return
    bad = (target < 0) | (target >= classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        value = int(target[bad].reshape(-1)[0].item())
        aside = f" (ignore_index {ignore_index} aside)" if ignore_index is not None else ""
        raise InvalidInput(f"target: class index {value} out of range [0, {classes}){aside}")


def _check_class_weight(tensors: dict[str, Tensor], classes: int) -> None:
    weight = tensors.get("weight")
    if weight is not None and tuple(weight.shape) != (classes,):
        raise InvalidInput(f"weight: shape {_shape(weight)} must be [C] = [{classes}] (one per class)")


def _check_pointwise(tensors: dict[str, Tensor], params: Params) -> None:
    _check_same_shape(tensors, "target")
    _check_grad_loss(tensors, params, tuple(tensors["input"].shape))


def _check_bce_with_logits(tensors: dict[str, Tensor], params: Params) -> None:
    _check_pointwise(tensors, params)
    _check_broadcastable(tensors, "weight")
    _check_broadcastable(tensors, "pos_weight")


def _check_bce(tensors: dict[str, Tensor], params: Params) -> None:
    _check_pointwise(tensors, params)
    _check_broadcastable(tensors, "weight")
    _check_unit_interval(tensors["input"], "input", "probabilities")
    _check_unit_interval(tensors["target"], "target", "targets")


def _check_cross_entropy(tensors: dict[str, Tensor], params: Params) -> None:
    input_, target = tensors["input"], tensors["target"]
    classes = _check_classes(input_, "[N, C] or [N, C, d1, ...]")
    sample_shape = (input_.shape[0], *input_.shape[2:])
    if target.is_floating_point():
        if tuple(target.shape) == sample_shape:
            # A float target is read as class probabilities; one shaped like class indices
            # is almost always indices sent as floats, so say that rather than "shape".
            raise InvalidInput(
                f"target: class indices are expected (integers of shape {_shape(sample_shape)}, "
                f"dtype int64 or int32), got float values of shape {_shape(target)}; to send "
                f"class probabilities instead, give a float target of input's shape {_shape(input_)}"
            )
        _check_same_shape(tensors, "target")
        bad = ~((target >= 0) & torch.isfinite(target))
        if bool(bad.any()):
            value = target[bad].reshape(-1)[0].item()
            raise InvalidInput(f"target: class probabilities must be finite and >= 0, got {value}")
    else:
        _check_class_indices(target, classes, sample_shape, params["ignore_index"])
    _check_class_weight(tensors, classes)
    _check_grad_loss(tensors, params, sample_shape)


def _check_nll(tensors: dict[str, Tensor], params: Params) -> None:
    input_ = tensors["input"]
    classes = _check_classes(input_, "[N, C] or [N, C, d1, ...]")
    sample_shape = (input_.shape[0], *input_.shape[2:])
    _check_class_indices(tensors["target"], classes, sample_shape, params["ignore_index"])
    _check_class_weight(tensors, classes)
    _check_grad_loss(tensors, params, sample_shape)


def _check_hinge(tensors: dict[str, Tensor], params: Params) -> None:
    input_ = tensors["input"]
    classes = _check_classes(input_, "[N, C]", exact_dim=2)
    _check_class_indices(tensors["target"], classes, (input_.shape[0],), None)
    _check_grad_loss(tensors, params, (input_.shape[0],))


# ------------------------------------------------------------ element functions


def _pointwise(fn: Callable[[Tensor, Tensor, Params], Tensor]) -> ElementFn:
    """Losses with one loss per input element and a plain mean."""

    def elements(x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]) -> Elements:
        values = fn(x, tensors["target"], params)
        return Elements(values, count_denoms(values, rows))

    return elements


def _l1(x: Tensor, t: Tensor, p: Params) -> Tensor:
    return F.l1_loss(x, t, reduction="none")


def _mse(x: Tensor, t: Tensor, p: Params) -> Tensor:
    return F.mse_loss(x, t, reduction="none")


def _huber(x: Tensor, t: Tensor, p: Params) -> Tensor:
    # Written out rather than F.huber_loss: torch's float32 kernel computes its scalar
    # tail in double, so an element's bits would depend on its place in the batch.
    # Autograd of this form gives torch's gradient: clamp(x - t, -delta, delta).
    delta: float = p["delta"]
    diff = x - t
    dist = diff.abs()
    return torch.where(dist < delta, 0.5 * diff * diff, delta * (dist - 0.5 * delta))


def _smooth_l1(x: Tensor, t: Tensor, p: Params) -> Tensor:
    # Written out for the same reason as _huber; beta 0 is plain L1, as in torch.
    beta: float = p["beta"]
    diff = x - t
    dist = diff.abs()
    if beta == 0:
        return dist
    return torch.where(dist < beta, 0.5 * diff * diff / beta, dist - 0.5 * beta)


def _bce_with_logits_elements(
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


def _bce_elements(x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]) -> Elements:
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


def _cross_entropy_elements(
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


def _nll_elements(x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]) -> Elements:
    target, weight = tensors["target"], tensors.get("weight")
    values = F.nll_loss(x, target, weight=weight, ignore_index=params["ignore_index"], reduction="none")
    denoms = _target_weight_denoms(target, weight, params["ignore_index"], rows, values.dtype)
    return Elements(values, denoms)


def _kl_div_elements(
    x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]
) -> Elements:
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


def _hinge_elements(x: Tensor, tensors: dict[str, Tensor], params: Params, rows: tuple[int, ...]) -> Elements:
    values = multiclass_hinge(x, tensors["target"], params["margin"])
    return Elements(values, count_denoms(values, rows))


# ------------------------------------------------------------------ the specs


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
    _pointwise(_l1),
    _check_pointwise,
    _FLOAT_TARGET,
)
MSE = _loss_spec(
    "mse",
    "Squared differences (input - target)^2; reduction sum is the SSD.",
    _pointwise(_mse),
    _check_pointwise,
    _FLOAT_TARGET,
)
HUBER = _loss_spec(
    "huber",
    "Huber loss: quadratic within delta of the target, linear beyond.",
    _pointwise(_huber),
    _check_pointwise,
    _FLOAT_TARGET,
    params=(ParamSpec("delta", "float", 1.0, "Where quadratic turns linear.", gt=0),),
)
SMOOTH_L1 = _loss_spec(
    "smooth_l1",
    "Smooth L1 loss: Huber divided by beta (beta 0 is plain L1).",
    _pointwise(_smooth_l1),
    _check_pointwise,
    _FLOAT_TARGET,
    params=(ParamSpec("beta", "float", 1.0, "Where quadratic turns linear.", ge=0),),
)
BCE_WITH_LOGITS = _loss_spec(
    "bce_with_logits",
    "Sigmoid + binary cross-entropy, computed stably from logits.",
    _bce_with_logits_elements,
    _check_bce_with_logits,
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
    _bce_elements,
    _check_bce,
    TensorSpec("target", "float", "Targets in [0, 1] with input's shape."),
    extra_inputs=(_BROADCAST_WEIGHT,),
)
CROSS_ENTROPY = _loss_spec(
    "cross_entropy",
    "Softmax + cross-entropy (via log-sum-exp) against class indices or probabilities.",
    _cross_entropy_elements,
    _check_cross_entropy,
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
    _nll_elements,
    _check_nll,
    _INDEX_TARGET,
    extra_inputs=(_CLASS_WEIGHT,),
    params=(_IGNORE_INDEX,),
)
KL_DIV = _loss_spec(
    "kl_div",
    "Kullback-Leibler divergence of target from input (input: log-probabilities).",
    _kl_div_elements,
    _check_pointwise,
    TensorSpec("target", "float", "Probabilities (log-probabilities with log_target)."),
    params=(ParamSpec("log_target", "bool", False, "Whether target is given as logs."),),
    reduction=_reduction_param(KL_REDUCTIONS),
)
HINGE = _loss_spec(
    "hinge",
    "Multiclass SVM loss: sum over k != y of max(0, s_k - s_y + margin), not divided by the class count.",
    _hinge_elements,
    _check_hinge,
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
