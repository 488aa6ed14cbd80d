"""activation_stats' kernel (ops/lab.py) against references: torch autograd in float64
for the forward statistics and every layer's weight gradient, numpy for histograms,
the init ops for the weights it draws."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradserve.ops import build_registry, lab
from gradserve.ops.registry import Batch
from gradserve.validation import Limits, validate_params

REGISTRY = build_registry()
SPEC = REGISTRY.get("activation_stats")

# The 1.1 activations with their default params, as torch.nn.functional spells them.
REFERENCE = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "mish": F.mish,
}


def _params(**given: Any) -> dict[str, Any]:
    params = validate_params(SPEC, given, lenient=False, ignore_unknown=False, limits=Limits(1 << 24, 16))
    assert SPEC.check is not None
    SPEC.check({}, params)
    return params


def test_declaration() -> None:
    assert (SPEC.family, SPEC.kind, SPEC.batch_mode) == ("lab", "lab", "solo")
    assert SPEC.inputs == () and SPEC.grad_outputs == ()
    assert SPEC.output_names == ("mean", "std", "saturated", "dead", "hist", "edges", "grad_std")
    assert set(lab.ACTIVATIONS) == set(REFERENCE)
    assert "zeros" not in lab.INITS and "constant" not in lab.INITS and "xavier_normal" in lab.INITS
    defaults = {p.name: p.default for p in SPEC.params}
    assert {k: defaults[k] for k in ("depth", "width", "batch", "activation", "init", "seed", "bins")} == {
        "depth": 10,
        "width": 500,
        "batch": 1000,
        "activation": "tanh",
        "init": "normal",
        "seed": 0,
        "bins": 50,
    }
    init_params = {"std", "mean", "mode", "gain", "nonlinearity", "negative_slope", "low", "high", "a", "b"}
    assert init_params <= set(SPEC.param_index)
    assert all(SPEC.param_index[n].default is None for n in init_params)


@pytest.mark.parametrize("activation", sorted(REFERENCE))
def test_statistics_and_weight_gradients_match_autograd_float64(activation: str) -> None:
    g = torch.Generator().manual_seed(3)
    depth, width, batch = 4, 7, 6
    x = torch.randn(batch, width, generator=g, dtype=torch.float64)
    weights = [torch.randn(width, width, generator=g, dtype=torch.float64) * 0.6 for _ in range(depth)]
    upstream = torch.randn(batch, width, generator=g, dtype=torch.float64)

    got = lab.statistics(x, weights, upstream, activation, bins=5)

    leaves = [w.clone().requires_grad_(True) for w in weights]
    a, layers = x, []
    for w in leaves:
        a = REFERENCE[activation](a @ w.t())
        layers.append(a)
    (a * upstream).sum().backward()
    acts = torch.stack([t.detach().reshape(-1) for t in layers])
    expected = {
        "mean": acts.mean(dim=1),
        "std": acts.std(dim=1, correction=0),
        "saturated": (acts.abs() > 0.99).double().mean(dim=1),
        "dead": (acts == 0).double().mean(dim=1),
        "grad_std": torch.stack([w.grad.std(correction=0) for w in leaves if w.grad is not None]),
    }
    for name, value in expected.items():
        assert got[name].dtype == torch.float64
        torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12, msg=name)
    assert got["hist"].dtype == torch.int64 and got["hist"].shape == (depth, 5)
    assert got["edges"].shape == (depth, 6)
    for layer in range(depth):
        counts, edges = np.histogram(acts[layer].numpy(), bins=5)
        np.testing.assert_array_equal(got["hist"][layer].numpy(), counts)
        np.testing.assert_allclose(got["edges"][layer].numpy(), edges, rtol=1e-12, atol=1e-12)


def test_only_wanted_outputs_and_no_backward_without_grad_std() -> None:
    x, weights, upstream = torch.randn(3, 4), [torch.randn(4, 4)], torch.randn(3, 4)
    got = lab.statistics(x, weights, upstream, "tanh", 3, frozenset({"mean", "hist"}))
    assert set(got) == {"mean", "hist"}
    # Gradients of the upstream do not matter when grad_std is not asked for.
    assert torch.equal(
        lab.statistics(x, weights, upstream * 0, "tanh", 3, frozenset({"mean"}))["mean"], got["mean"]
    )


def test_histogram_of_non_finite_and_constant_values() -> None:
    counts, edges = lab._histogram(
        torch.tensor([1.0, float("nan"), 3.0, float("inf"), -float("inf"), 2.0]), 2
    )
    assert counts.tolist() == [1, 2] and edges.tolist() == [1.0, 2.0, 3.0]
    counts, edges = lab._histogram(torch.full((4,), 2.0), 4)
    np_counts, np_edges = np.histogram(np.full(4, 2.0), bins=4)
    assert counts.tolist() == np_counts.tolist()
    np.testing.assert_allclose(edges.numpy(), np_edges)
    counts, edges = lab._histogram(torch.tensor([float("nan")]), 2)
    assert counts.tolist() == [0, 0] and edges.tolist() == [-0.5, 0.0, 0.5]


def test_weights_are_the_init_ops_draws_with_the_layer_seeds() -> None:
    params = _params(depth=3, width=6, batch=2, init="kaiming_uniform", mode="fan_out", seed=11)
    _, weights, _ = lab.draw(params, torch.device("cpu"))
    seeds = lab.layer_seeds(11, 3)
    init = REGISTRY.get("kaiming_uniform")
    for weight, seed in zip(weights, seeds[1:], strict=True):
        init_params = validate_params(
            init,
            {"shape": [6, 6], "mode": "fan_out", "seed": seed},
            lenient=False,
            ignore_unknown=False,
            limits=Limits(1 << 24, 16),
        )
        [out] = init.run(Batch({}, init_params, frozenset({"weight"}), (1,)))
        assert torch.equal(weight, out["weight"])
    assert lab.layer_seeds(11, 5)[:4] == seeds  # a deeper net keeps the first layers


def test_init_defaults_follow_the_chosen_init() -> None:
    assert lab.init_params(_params(init="xavier_normal"))["mode"] == "fan_avg"
    assert lab.init_params(_params(init="kaiming_normal"))["mode"] == "fan_in"
    assert lab.init_params(_params(init="normal", std=0.01)) == {"mean": 0.0, "std": 0.01}
    assert lab.work(_params()) == 10 * 500**2 * 1000
