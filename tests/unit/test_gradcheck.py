"""Finite differences against every op's own VJP (torch.autograd.gradcheck, float64).

The kernels compute gradients themselves (aten backward ops, one autograd call per
loss batch, closed forms). Here each op is wrapped in an autograd.Function whose
backward is that VJP, with the upstream gradient passed through the op's
``grad_<output>`` input, and gradcheck compares it with numerical derivatives. This
checks the gradient code independently of torch's own analytic gradients, which the
per-op tests compare against.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gradserve.config import Settings
from gradserve.executor import Executor
from gradserve.ops import build_registry
from gradserve.ops.registry import OpSpec
from gradserve.validation import Limits, validate_params

REGISTRY = build_registry()
EXECUTOR = Executor(Settings(device="cpu"))
UPSTREAM = {"activations": "grad_y", "losses": "grad_loss"}


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_g(seed), dtype=torch.float64)


def _run(spec: OpSpec, tensors: dict[str, torch.Tensor], params: dict[str, Any], want: str) -> torch.Tensor:
    full = validate_params(spec, params, lenient=False, ignore_unknown=False, limits=Limits(1 << 30, 16))
    [out] = EXECUTOR.run_sync(spec, [tensors], full, frozenset({want}))
    return out[want]


def _check(op: str, tensors: dict[str, torch.Tensor], wrt: str, params: dict[str, Any] | None = None) -> None:
    spec = REGISTRY.get(op)
    params = params or {}
    output = spec.outputs[0].name
    upstream = "grad_penalty" if spec.kind == "regularization" else UPSTREAM[spec.family]

    class Op(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, value: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(value)
            return _run(spec, {**tensors, wrt: value.detach()}, params, output)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            (value,) = ctx.saved_tensors
            inputs = {**tensors, wrt: value.detach(), upstream: grad.detach()}
            return _run(spec, inputs, params, f"grad_{wrt}")

    value = tensors[wrt].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(Op.apply, (value,), eps=1e-6, atol=1e-6, rtol=1e-4)


POINTWISE = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "softplus", "mish"]


@pytest.mark.parametrize("op", POINTWISE)
def test_pointwise_activations(op: str) -> None:
    _check(op, {"x": _randn(3, 5) * 2}, "x")


@pytest.mark.parametrize(
    ("op", "params"),
    [
        ("gelu", {"approximate": "tanh"}),
        ("softplus", {"beta": 2.0, "threshold": 5.0}),
        ("leaky_relu", {"negative_slope": 0.2}),
        ("elu", {"alpha": 0.5}),
        ("softmax", {"dim": 1}),
        ("log_softmax", {"dim": 0}),
        ("softmax", {}),
        ("log_softmax", {}),
    ],
)
def test_activation_params(op: str, params: dict[str, Any]) -> None:
    _check(op, {"x": _randn(4, 6)}, "x", params)


@pytest.mark.parametrize("wrt", ["x", "alpha"])
def test_prelu(wrt: str) -> None:
    _check("prelu", {"x": _randn(4, 3, 2), "alpha": torch.tensor([0.1, 0.25, 0.5], dtype=torch.float64)}, wrt)


@pytest.mark.parametrize("wrt", ["x", "weight", "bias"])
def test_maxout(wrt: str) -> None:
    _check(
        "maxout", {"x": _randn(5, 4), "weight": _randn(3, 2, 4, seed=1), "bias": _randn(3, 2, seed=2)}, wrt
    )


def _classes(n: int, c: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=_g(seed))


LOSSES: list[tuple[str, dict[str, torch.Tensor], dict[str, Any]]] = [
    ("l1", {"input": _randn(4, 3), "target": _randn(4, 3, seed=1)}, {}),
    ("mse", {"input": _randn(4, 3), "target": _randn(4, 3, seed=1)}, {"reduction": "sum"}),
    ("huber", {"input": _randn(4, 3) * 2, "target": _randn(4, 3, seed=1)}, {"delta": 0.7}),
    (
        "smooth_l1",
        {"input": _randn(4, 3) * 2, "target": _randn(4, 3, seed=1)},
        {"beta": 0.5, "reduction": "none"},
    ),
    (
        "bce_with_logits",
        {
            "input": _randn(4, 3),
            "target": torch.rand(4, 3, generator=_g(1), dtype=torch.float64),
            "pos_weight": torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
        },
        {},
    ),
    (
        "bce",
        {
            "input": torch.rand(4, 3, generator=_g(0), dtype=torch.float64) * 0.8 + 0.1,
            "target": torch.rand(4, 3, generator=_g(1), dtype=torch.float64),
        },
        {},
    ),
    ("cross_entropy", {"input": _randn(5, 4), "target": _classes(5, 4)}, {"label_smoothing": 0.1}),
    (
        "cross_entropy",
        {
            "input": _randn(5, 4, 2),
            "target": torch.randint(0, 4, (5, 2), generator=_g(3)),
            "weight": torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64),
        },
        {"ignore_index": 1},
    ),
    ("cross_entropy", {"input": _randn(5, 4), "target": torch.softmax(_randn(5, 4, seed=1), 1)}, {}),
    ("nll", {"input": torch.log_softmax(_randn(5, 4), 1), "target": _classes(5, 4)}, {"reduction": "sum"}),
    (
        "kl_div",
        {"input": torch.log_softmax(_randn(5, 4), 1), "target": torch.softmax(_randn(5, 4, seed=1), 1)},
        {"reduction": "batchmean"},
    ),
    ("hinge", {"input": _randn(6, 4) * 3, "target": _classes(6, 4)}, {"margin": 1.0}),
]


@pytest.mark.parametrize(
    ("op", "tensors", "params"), LOSSES, ids=[f"{o}-{i}" for i, (o, _, _) in enumerate(LOSSES)]
)
def test_losses(op: str, tensors: dict[str, torch.Tensor], params: dict[str, Any]) -> None:
    _check(op, tensors, "input", params)


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_regularization(kind: str) -> None:
    _check("regularization", {"weight": _randn(3, 4)}, "weight", {"kind": kind, "strength": 0.3})


@pytest.mark.parametrize("wrt", ["x", "weight", "bias"])
@pytest.mark.parametrize("data_loss", ["cross_entropy", "hinge"])
def test_full_loss(wrt: str, data_loss: str) -> None:
    tensors = {
        "x": _randn(6, 4),
        "weight": _randn(3, 4, seed=1),
        "bias": _randn(3, seed=2),
        "target": _classes(6, 3),
    }
    params = {"data_loss": data_loss, "regularization": "l2", "strength": 0.05}
    _check("full_loss", tensors, wrt, params)
