"""The loss ops' input checks: shapes, class indices, value domains and grad_loss.

Flow position: validation calls each loss's ``OpSpec.check`` (declared in ops/losses.py)
on one request's CPU tensors, after the generic checks and before any compute, so a
kernel (ops/reduction.py + ops/loss_elements.py) never fails on its input.
"""

from __future__ import annotations

import torch

from gradserve.errors import InvalidInput
from gradserve.ops.reduction import GRAD_LOSS
from gradserve.ops.registry import Params

Tensor = torch.Tensor


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


def check_pointwise(tensors: dict[str, Tensor], params: Params) -> None:
    _check_same_shape(tensors, "target")
    _check_grad_loss(tensors, params, tuple(tensors["input"].shape))


def check_bce_with_logits(tensors: dict[str, Tensor], params: Params) -> None:
    check_pointwise(tensors, params)
    _check_broadcastable(tensors, "weight")
    _check_broadcastable(tensors, "pos_weight")


def check_bce(tensors: dict[str, Tensor], params: Params) -> None:
    check_pointwise(tensors, params)
    _check_broadcastable(tensors, "weight")
    _check_unit_interval(tensors["input"], "input", "probabilities")
    _check_unit_interval(tensors["target"], "target", "targets")


def check_cross_entropy(tensors: dict[str, Tensor], params: Params) -> None:
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


def check_nll(tensors: dict[str, Tensor], params: Params) -> None:
    input_ = tensors["input"]
    classes = _check_classes(input_, "[N, C] or [N, C, d1, ...]")
    sample_shape = (input_.shape[0], *input_.shape[2:])
    _check_class_indices(tensors["target"], classes, sample_shape, params["ignore_index"])
    _check_class_weight(tensors, classes)
    _check_grad_loss(tensors, params, sample_shape)


def check_hinge(tensors: dict[str, Tensor], params: Params) -> None:
    input_ = tensors["input"]
    classes = _check_classes(input_, "[N, C]", exact_dim=2)
    _check_class_indices(tensors["target"], classes, (input_.shape[0],), None)
    _check_grad_loss(tensors, params, (input_.shape[0],))
