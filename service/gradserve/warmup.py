"""A tiny valid request per op: run once at start so /readyz means "warm", and reused
by tests that walk every op."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradserve.ops.registry import OpSpec

Example = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _x() -> torch.Tensor:
    return torch.linspace(-2.0, 2.0, 12).reshape(3, 4)


def _activation() -> Example:
    return {"x": _x()}, {}


def _pair() -> Example:
    return {"input": _x(), "target": torch.linspace(-1.0, 1.0, 12).reshape(3, 4)}, {}


def _probabilities() -> Example:
    return {"input": torch.sigmoid(_x()), "target": torch.rand(3, 4).round()}, {}


def _logits_binary() -> Example:
    return {"input": _x(), "target": torch.rand(3, 4).round()}, {}


def _classes() -> Example:
    return {"input": _x(), "target": torch.tensor([0, 3, 1])}, {}


def _log_probs() -> Example:
    return {"input": torch.log_softmax(_x(), dim=1), "target": torch.tensor([0, 3, 1])}, {}


def _kl() -> Example:
    return {
        "input": torch.log_softmax(_x(), dim=1),
        "target": torch.softmax(_x().flip(1), dim=1),
    }, {}


def _maxout() -> Example:
    return {"x": _x(), "weight": torch.ones(2, 5, 4) * 0.1, "bias": torch.zeros(2, 5)}, {}


def _full_loss() -> Example:
    return {
        "x": _x(),
        "weight": torch.ones(5, 4) * 0.1,
        "bias": torch.zeros(5),
        "target": torch.tensor([0, 4, 2]),
    }, {"strength": 0.1}


def _init() -> Example:
    return {}, {"shape": [4, 3], "seed": 0}


# Ops whose example is their own; every other activation takes one x, and every init
# op a shape and a seed.
_BY_OP: dict[str, Callable[[], Example]] = {
    "maxout": _maxout,
    "l1": _pair,
    "mse": _pair,
    "huber": _pair,
    "smooth_l1": _pair,
    "bce_with_logits": _logits_binary,
    "bce": _probabilities,
    "cross_entropy": _classes,
    "nll": _log_probs,
    "kl_div": _kl,
    "hinge": _classes,
    "regularization": lambda: ({"weight": _x()}, {}),
    "full_loss": _full_loss,
    # A small net: the warm-up only needs every kernel of it to have run once.
    "activation_stats": lambda: ({}, {"depth": 2, "width": 8, "batch": 16}),
}


def example(spec: OpSpec) -> Example:
    """A small valid request (tensors, params) for ``spec``."""
    if spec.name in _BY_OP:
        return _BY_OP[spec.name]()
    return _init() if spec.family == "init" else _activation()
