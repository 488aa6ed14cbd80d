"""Loss ops against torch.nn.functional in float64: values, VJPs, dtypes, extremes,
batch invariance (bitwise) and the checkers' 422s."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gradserve.errors import InvalidInput
from gradserve.ops import losses
from gradserve.ops.layout import assemble, disassemble
from gradserve.ops.registry import Batch, OpSpec

# torch's kl_div warns that its "mean" will change; API.md pins today's behaviour.
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")

Tensor = torch.Tensor
Tensors = dict[str, Tensor]
SPECS = {spec.name: spec for spec in losses.SPECS}
F64 = torch.float64
RTOL, ATOL = 1e-10, 1e-12
WANT_ALL = frozenset({"loss", "grad_input"})


def run(
    spec: OpSpec, reqs: Sequence[Mapping[str, Tensor]], params: Mapping[str, Any], want: frozenset[str]
) -> list[Tensors]:
    b = assemble(spec, reqs, params, frozenset(want))
    return disassemble(spec, spec.run(b), reqs)


def full_params(spec: OpSpec, **overrides: Any) -> dict[str, Any]:
    params = {p.name: p.default for p in spec.params}
    params.update(overrides)
    return params


# ------------------------------------------------------------------ torch references


def reference(op: str, x: Tensor, t: Mapping[str, Tensor], p: Mapping[str, Any]) -> Tensor:
    """The loss as torch.nn.functional computes it (x may require grad)."""
    r, target = p["reduction"], t["target"]
    if op == "l1":
        return F.l1_loss(x, target, reduction=r)
    if op == "mse":
        return F.mse_loss(x, target, reduction=r)
    if op == "huber":
        return F.huber_loss(x, target, reduction=r, delta=p["delta"])
    if op == "smooth_l1":
        return F.smooth_l1_loss(x, target, reduction=r, beta=p["beta"])
    if op == "bce_with_logits":
        return F.binary_cross_entropy_with_logits(
            x, target, weight=t.get("weight"), pos_weight=t.get("pos_weight"), reduction=r
        )
    if op == "bce":
        return F.binary_cross_entropy(x, target, weight=t.get("weight"), reduction=r)
    if op == "cross_entropy":
        return F.cross_entropy(
            x,
            target,
            weight=t.get("weight"),
            ignore_index=p["ignore_index"],
            reduction=r,
            label_smoothing=p["label_smoothing"],
        )
    if op == "nll":
        return F.nll_loss(x, target, weight=t.get("weight"), ignore_index=p["ignore_index"], reduction=r)
    if op == "kl_div":
        return F.kl_div(x, target, reduction=r, log_target=p["log_target"])
    if op == "hinge":
        # torch divides by the class count; API.md's hinge does not.
        return F.multi_margin_loss(x, target, margin=p["margin"], reduction=r) * x.shape[1]
    raise AssertionError(op)


def reference_with_grad(
    op: str, tensors: Mapping[str, Tensor], p: Mapping[str, Any], grad_loss: Tensor | None
) -> tuple[Tensor, Tensor]:
    x = tensors["input"].detach().clone().requires_grad_()
    loss = reference(op, x, tensors, p)
    g = torch.ones_like(loss) if grad_loss is None else grad_loss
    (grad,) = torch.autograd.grad(loss, x, g)
    return loss.detach(), grad


# ------------------------------------------------------------------ request builders

Builder = Callable[[torch.Generator, int], Tensors]


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(shape, generator=g, dtype=F64)


def _rand(g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=g, dtype=F64)


def _randint(g: torch.Generator, high: int, *shape: int) -> Tensor:
    return torch.randint(0, high, shape, generator=g)


def regression(g: torch.Generator, n: int) -> Tensors:
    return {"input": _randn(g, n, 4, 3) * 2, "target": _randn(g, n, 4, 3) * 2}


def logits(weight: bool = False, pos_weight: bool = False) -> Builder:
    def build(g: torch.Generator, n: int) -> Tensors:
        t = {"input": _randn(g, n, 4) * 3, "target": _rand(g, n, 4)}
        if weight:
            t["weight"] = _rand(g, 4) + 0.5
        if pos_weight:
            t["pos_weight"] = _rand(g, 4) * 3
        return t

    return build


def probabilities(weight: bool = False) -> Builder:
    def build(g: torch.Generator, n: int) -> Tensors:
        t = {"input": _rand(g, n, 4) * 0.9 + 0.05, "target": _rand(g, n, 4)}
        if weight:
            t["weight"] = _rand(g, 1, 4) + 0.5
        return t

    return build


def class_indices(
    classes: int = 5, spatial: tuple[int, ...] = (), weight: bool = False, ignore: int | None = None
) -> Builder:
    def build(g: torch.Generator, n: int) -> Tensors:
        target = _randint(g, classes, n, *spatial)
        if ignore is not None:
            target.view(-1)[::3] = ignore
        t = {"input": _randn(g, n, classes, *spatial) * 3, "target": target}
        if weight:
            t["weight"] = _rand(g, classes) + 0.5
        return t

    return build


def class_probabilities(classes: int = 5, spatial: tuple[int, ...] = (), weight: bool = False) -> Builder:
    def build(g: torch.Generator, n: int) -> Tensors:
        t = {
            "input": _randn(g, n, classes, *spatial) * 3,
            "target": torch.softmax(_randn(g, n, classes, *spatial), dim=1),
        }
        if weight:
            t["weight"] = _rand(g, classes) + 0.5
        return t

    return build


def log_probabilities(
    classes: int = 5, spatial: tuple[int, ...] = (), weight: bool = False, ignore: int | None = None
) -> Builder:
    inner = class_indices(classes, spatial, weight, ignore)

    def build(g: torch.Generator, n: int) -> Tensors:
        t = inner(g, n)
        t["input"] = torch.log_softmax(t["input"], dim=1)
        return t

    return build


def kl_pair(log_target: bool) -> Builder:
    def build(g: torch.Generator, n: int) -> Tensors:
        target = torch.softmax(_randn(g, n, 6), dim=1)
        if log_target:
            target = target.log()
        return {"input": torch.log_softmax(_randn(g, n, 6), dim=1), "target": target}

    return build


def scores(classes: int = 3) -> Builder:
    def build(g: torch.Generator, n: int) -> Tensors:
        return {"input": _randn(g, n, classes) * 2, "target": _randint(g, classes, n)}

    return build


@dataclass(frozen=True)
class Case:
    op: str
    build: Builder
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.op}-{self.label}" if self.label else self.op

    @property
    def shares_tensors(self) -> bool:
        t = self.build(torch.Generator().manual_seed(0), 1)
        return any(not SPECS[self.op].input_index[name].per_row for name in t)


CASES = [
    Case("l1", regression),
    Case("mse", regression),
    Case("huber", regression),
    Case("huber", regression, {"delta": 0.4}, "delta0.4"),
    Case("smooth_l1", regression),
    Case("smooth_l1", regression, {"beta": 0.3}, "beta0.3"),
    Case("smooth_l1", regression, {"beta": 0.0}, "beta0"),
    Case("bce_with_logits", logits()),
    Case("bce_with_logits", logits(weight=True), label="weight"),
    Case("bce_with_logits", logits(pos_weight=True), label="pos_weight"),
    Case("bce_with_logits", logits(weight=True, pos_weight=True), label="both"),
    Case("bce", probabilities()),
    Case("bce", probabilities(weight=True), label="weight"),
    Case("cross_entropy", class_indices()),
    Case("cross_entropy", class_indices(weight=True), label="weight"),
    Case("cross_entropy", class_indices(ignore=-100), label="ignored"),
    Case("cross_entropy", class_indices(), {"ignore_index": 1}, "ignore_index1"),
    Case("cross_entropy", class_indices(), {"label_smoothing": 0.2}, "smoothing"),
    Case(
        "cross_entropy",
        class_indices(weight=True, ignore=-100),
        {"label_smoothing": 0.3},
        "smoothing-weight-ignored",
    ),
    Case("cross_entropy", class_indices(spatial=(2, 3), ignore=-100), label="spatial"),
    Case("cross_entropy", class_indices(classes=37), label="wide"),
    Case("cross_entropy", class_probabilities(), label="probs"),
    Case(
        "cross_entropy", class_probabilities(weight=True), {"label_smoothing": 0.1}, "probs-weight-smoothing"
    ),
    Case("cross_entropy", class_probabilities(spatial=(3,)), label="probs-spatial"),
    Case("nll", log_probabilities()),
    Case("nll", log_probabilities(weight=True, ignore=-100), label="weight-ignored"),
    Case("nll", log_probabilities(spatial=(2,)), {"ignore_index": 0}, "spatial-ignore0"),
    Case("kl_div", kl_pair(False)),
    Case("kl_div", kl_pair(True), {"log_target": True}, "log_target"),
    Case("hinge", scores()),
    Case("hinge", scores(classes=29), {"margin": 0.5}, "wide-margin0.5"),
]
CASE_REDUCTIONS = [
    pytest.param(case, reduction, id=f"{case.id}-{reduction}")
    for case in CASES
    for reduction in SPECS[case.op].param_index["reduction"].choices or ()
]
FIRST_CASES = [pytest.param(c, id=c.id) for c in {c.op: c for c in reversed(CASES)}.values()]


def none_shape(case: Case, tensors: Mapping[str, Tensor], params: Mapping[str, Any]) -> torch.Size:
    return reference(case.op, tensors["input"], tensors, {**params, "reduction": "none"}).shape


def make_request(
    case: Case, reduction: str, n: int, seed: int, grad_loss: bool = True
) -> tuple[Tensors, dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    params = full_params(SPECS[case.op], **case.params, reduction=reduction)
    tensors = case.build(g, n)
    if grad_loss:
        shape = none_shape(case, tensors, params) if reduction == "none" else ()
        tensors["grad_loss"] = _randn(g, *shape)
    return tensors, params


# ------------------------------------------------------------------ declarations


def test_every_loss_of_api_is_declared() -> None:
    assert set(SPECS) == {
        "l1",
        "mse",
        "huber",
        "smooth_l1",
        "bce_with_logits",
        "bce",
        "cross_entropy",
        "nll",
        "kl_div",
        "hinge",
    }
    for spec in losses.SPECS:
        assert (spec.family, spec.kind, spec.batch_mode) == ("losses", "loss", "rows")
        assert spec.inputs[0].name == "input" and spec.inputs[1].name == "target"
        assert spec.upstream == "grad_loss" and spec.input_index["grad_loss"].optional
        assert spec.output_names == ("loss",) and spec.grad_output_names == ("grad_input",)
        reduction = spec.param_index["reduction"]
        assert reduction.default == "mean"
        expected = ("mean", "batchmean", "sum", "none") if spec.name == "kl_div" else ("mean", "sum", "none")
        assert set(reduction.choices or ()) == set(expected)


def test_param_defaults_follow_api() -> None:
    defaults = {(s.name, p.name): p.default for s in losses.SPECS for p in s.params}
    assert defaults[("huber", "delta")] == 1.0
    assert defaults[("smooth_l1", "beta")] == 1.0
    assert defaults[("cross_entropy", "label_smoothing")] == 0.0
    assert defaults[("cross_entropy", "ignore_index")] == -100
    assert defaults[("nll", "ignore_index")] == -100
    assert defaults[("kl_div", "log_target")] is False
    assert defaults[("hinge", "margin")] == 1.0
    assert SPECS["cross_entropy"].input_index["target"].kind == "target"
    for op, name in [("cross_entropy", "weight"), ("nll", "weight"), ("bce", "weight")]:
        assert not SPECS[op].input_index[name].per_row
    assert not SPECS["bce_with_logits"].input_index["pos_weight"].per_row


def test_zero_dim_input_is_never_batched() -> None:
    for spec in losses.SPECS:
        assert spec.batchable is not None
        params = full_params(spec)
        assert not spec.batchable({"input": torch.tensor(1.0)}, params)
        assert spec.batchable({"input": torch.ones(2, 3)}, params)


# ------------------------------------------------------------------ lecture examples

CS231N_SCORES = torch.tensor([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]], dtype=F64)
CS231N_LABELS = torch.tensor([0, 1, 2])  # cat, car, frog


def test_lecture_hinge_example() -> None:
    spec = SPECS["hinge"]
    req = {"input": CS231N_SCORES, "target": CS231N_LABELS}
    (per_image,) = run(spec, [req], full_params(spec, reduction="none"), frozenset({"loss"}))
    torch.testing.assert_close(
        per_image["loss"], torch.tensor([2.9, 0.0, 12.9], dtype=F64), rtol=0, atol=1e-12
    )
    (mean,) = run(spec, [req], full_params(spec), frozenset({"loss"}))
    assert mean["loss"].item() == pytest.approx(15.8 / 3, abs=1e-12)
    assert round(mean["loss"].item(), 2) == 5.27


def test_lecture_softmax_example() -> None:
    spec = SPECS["cross_entropy"]
    req = {"input": CS231N_SCORES[:1], "target": CS231N_LABELS[:1]}
    (out,) = run(spec, [req], full_params(spec, reduction="none"), frozenset({"loss"}))
    cat_loss = out["loss"][0].item()
    scores = [3.2, 5.1, -1.7]
    exact = -math.log(math.exp(3.2) / sum(math.exp(s) for s in scores))
    assert cat_loss == pytest.approx(exact, rel=1e-14)
    assert math.exp(-cat_loss) == pytest.approx(0.13, abs=0.005)  # P(cat) of the slide
    assert cat_loss == pytest.approx(-math.log(0.13), abs=0.01)  # ~= 2.04
    assert round(cat_loss, 2) == 2.04


# ------------------------------------------------------------------ values and VJPs


@pytest.mark.parametrize(("case", "reduction"), CASE_REDUCTIONS)
def test_matches_torch_float64(case: Case, reduction: str) -> None:
    tensors, params = make_request(case, reduction, n=6, seed=1)
    (out,) = run(SPECS[case.op], [tensors], params, WANT_ALL)
    ref_loss, ref_grad = reference_with_grad(case.op, tensors, params, tensors["grad_loss"])
    assert out["loss"].dtype == F64 and out["loss"].shape == ref_loss.shape
    torch.testing.assert_close(out["loss"], ref_loss, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out["grad_input"], ref_grad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_plain_gradient_without_upstream(case: Case) -> None:
    tensors, params = make_request(case, "mean", n=4, seed=2, grad_loss=False)
    (out,) = run(SPECS[case.op], [tensors], params, frozenset({"grad_input"}))
    assert set(out) == {"grad_input"}
    _, ref_grad = reference_with_grad(case.op, tensors, params, None)
    torch.testing.assert_close(out["grad_input"], ref_grad, rtol=RTOL, atol=ATOL)


def test_only_loss_wanted_computes_no_gradient() -> None:
    spec = SPECS["mse"]
    tensors, params = make_request(CASES[1], "sum", n=3, seed=3)
    (out,) = run(spec, [tensors], params, frozenset({"loss"}))
    assert set(out) == {"loss"}
    assert not out["loss"].requires_grad


def test_hinge_zero_margin_subgradient_is_zero() -> None:
    # s_1 - s_0 + 1 == 0 exactly: that term contributes no gradient (as torch).
    x = torch.tensor([[2.0, 1.0, -5.0]], dtype=F64)
    t = torch.tensor([0])
    spec = SPECS["hinge"]
    (out,) = run(spec, [{"input": x, "target": t}], full_params(spec), WANT_ALL)
    assert out["loss"].item() == 0.0
    assert torch.equal(out["grad_input"], torch.zeros_like(x))
    _, ref_grad = reference_with_grad("hinge", {"input": x, "target": t}, full_params(spec), None)
    assert torch.equal(out["grad_input"], ref_grad)


def test_hinge_keeps_the_margin_when_huge_scores_tie() -> None:
    # s_1 == s_0 bitwise: the term is exactly max(0, 0 + margin) = 1. (torch's
    # multi_margin_loss sums (margin - s_y) + s_k and loses the margin here.)
    spec = SPECS["hinge"]
    x = torch.tensor([[1e30, 1e30]], dtype=F64)
    (out,) = run(spec, [{"input": x, "target": torch.tensor([0])}], full_params(spec), WANT_ALL)
    assert out["loss"].item() == 1.0
    assert torch.equal(out["grad_input"], torch.tensor([[-1.0, 1.0]], dtype=F64))


def test_l1_subgradient_at_zero_is_zero() -> None:
    x = torch.tensor([1.0, 2.0, -3.0], dtype=F64)
    spec = SPECS["l1"]
    (out,) = run(spec, [{"input": x, "target": x.clone()}], full_params(spec), frozenset({"grad_input"}))
    assert torch.equal(out["grad_input"], torch.zeros_like(x))


@pytest.mark.parametrize(("op", "param"), [("huber", "delta"), ("smooth_l1", "beta")])
@pytest.mark.parametrize("knee", [1.0, 0.25])
def test_huber_and_smooth_l1_at_the_knee(op: str, param: str, knee: float) -> None:
    # |input - target| exactly at delta/beta, at 0, and on both sides.
    target = torch.zeros(7, dtype=F64)
    x = torch.tensor([-knee, knee, 0.0, knee / 2, -3 * knee, 3 * knee, -1e30], dtype=F64)
    spec = SPECS[op]
    params = full_params(spec, reduction="sum", **{param: knee})
    (out,) = run(spec, [{"input": x, "target": target}], params, WANT_ALL)
    ref_loss, ref_grad = reference_with_grad(op, {"input": x, "target": target}, params, None)
    torch.testing.assert_close(out["loss"], ref_loss, rtol=RTOL, atol=ATOL)
    assert torch.equal(out["grad_input"], ref_grad)


def test_bce_at_probabilities_zero_and_one_is_finite_like_torch() -> None:
    x = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5], dtype=F64)
    t = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.3], dtype=F64)
    spec = SPECS["bce"]
    params = full_params(spec, reduction="sum")
    (out,) = run(spec, [{"input": x, "target": t}], params, WANT_ALL)
    ref_loss, ref_grad = reference_with_grad("bce", {"input": x, "target": t}, params, None)
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["grad_input"]).all()
    torch.testing.assert_close(out["loss"], ref_loss, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out["grad_input"], ref_grad, rtol=RTOL, atol=ATOL)


def test_all_targets_ignored_gives_nan_mean_like_torch() -> None:
    spec = SPECS["cross_entropy"]
    x = _randn(torch.Generator().manual_seed(4), 3, 4)
    t = torch.full((3,), -100)
    (out,) = run(spec, [{"input": x, "target": t}], full_params(spec), WANT_ALL)
    ref_loss, ref_grad = reference_with_grad(
        "cross_entropy", {"input": x, "target": t}, full_params(spec), None
    )
    assert torch.isnan(out["loss"]) and torch.isnan(ref_loss)
    torch.testing.assert_close(out["grad_input"], ref_grad, equal_nan=True)


@pytest.mark.parametrize("op", ["l1", "mse", "huber", "smooth_l1", "kl_div", "bce_with_logits", "bce"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_zero_dim_input(op: str, reduction: str) -> None:
    # A 0-d input runs alone as one row (rows=(1,)) with the input kept 0-d; its 0-d
    # upstream may arrive stacked to [1] or as sent: both work.
    spec = SPECS[op]
    x = torch.tensor(0.3, dtype=F64)
    t = torch.tensor(0.8, dtype=F64)
    params = full_params(spec, reduction=reduction)
    ref_loss, ref_grad = reference_with_grad(
        op, {"input": x, "target": t}, params, torch.tensor(1.7, dtype=F64)
    )
    for grad_loss in (torch.tensor(1.7, dtype=F64), torch.tensor([1.7], dtype=F64)):
        batch = Batch({"input": x, "target": t, "grad_loss": grad_loss}, params, WANT_ALL, (1,))
        (out,) = spec.run(batch)
        assert out["loss"].shape == () and out["grad_input"].shape == ()
        torch.testing.assert_close(out["loss"], ref_loss, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(out["grad_input"], ref_grad, rtol=RTOL, atol=ATOL)


def test_kl_div_batchmean_on_zero_dim_divides_by_one() -> None:
    spec = SPECS["kl_div"]
    x, t = torch.tensor(-0.5, dtype=F64), torch.tensor(0.4, dtype=F64)
    params = full_params(spec, reduction="batchmean")
    (out,) = spec.run(Batch({"input": x, "target": t}, params, WANT_ALL, (1,)))
    ref_loss, ref_grad = reference_with_grad("kl_div", {"input": x, "target": t}, params, None)
    torch.testing.assert_close(out["loss"], ref_loss, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out["grad_input"], ref_grad, rtol=RTOL, atol=ATOL)


def test_runs_under_inference_mode() -> None:
    case = CASES[13]  # cross_entropy
    with torch.inference_mode():
        tensors, params = make_request(case, "mean", n=3, seed=5)
        (out,) = run(SPECS[case.op], [tensors], params, WANT_ALL)
    plain = {k: v.clone() for k, v in tensors.items()}
    ref_loss, ref_grad = reference_with_grad(case.op, plain, params, plain["grad_loss"])
    torch.testing.assert_close(out["loss"], ref_loss, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out["grad_input"], ref_grad, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ dtypes

DTYPE_TOLERANCE = {
    torch.float32: (1e-5, 1e-6),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (4e-2, 4e-2),
}


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE), ids=str)
@pytest.mark.parametrize("case", FIRST_CASES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_every_dtype(case: Case, dtype: torch.dtype, reduction: str) -> None:
    tensors, params = make_request(case, reduction, n=5, seed=6)
    low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    (out,) = run(SPECS[case.op], [low], params, WANT_ALL)
    assert out["loss"].dtype == dtype and out["grad_input"].dtype == dtype
    # The reference sees exactly the (rounded) numbers the kernel saw.
    exact = {k: v.to(F64) if v.is_floating_point() else v for k, v in low.items()}
    ref_loss, ref_grad = reference_with_grad(case.op, exact, params, exact["grad_loss"])
    rtol, atol = DTYPE_TOLERANCE[dtype]
    torch.testing.assert_close(out["loss"].to(F64), ref_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(out["grad_input"].to(F64), ref_grad, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ extremes


def _extreme_request(op: str, magnitude: float, dtype: torch.dtype) -> Tensors:
    x = torch.tensor(
        [[magnitude, -magnitude, 0.0], [-magnitude, magnitude, 1.0], [0.5, 2.0, -magnitude]], dtype=dtype
    )
    if op == "bce_with_logits":
        return {
            "input": x,
            "target": torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5], [0.0, 1.0, 1.0]], dtype=dtype),
        }
    return {"input": x, "target": torch.tensor([1, 0, 2])}


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("magnitude", [1e4, 1e30])
@pytest.mark.parametrize("op", ["cross_entropy", "bce_with_logits", "hinge"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_extreme_scores_give_finite_answers(
    op: str, magnitude: float, dtype: torch.dtype, reduction: str
) -> None:
    spec = SPECS[op]
    params = full_params(spec, reduction=reduction)
    req = _extreme_request(op, magnitude, dtype)
    (out,) = run(spec, [req], params, WANT_ALL)
    assert torch.isfinite(out["loss"]).all() and torch.isfinite(out["grad_input"]).all()
    exact = {k: v.to(F64) if v.is_floating_point() else v for k, v in req.items()}
    ref_loss, ref_grad = reference_with_grad(op, exact, params, None)
    rtol = RTOL if dtype == F64 else 1e-6
    torch.testing.assert_close(out["loss"].to(F64), ref_loss, rtol=rtol, atol=ATOL)
    torch.testing.assert_close(out["grad_input"].to(F64), ref_grad, rtol=rtol, atol=1e-6)


# ------------------------------------------------------------------ batch invariance

_SAME_WIDTH_INT = {
    F64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def bitwise_equal(a: Tensor, b: Tensor) -> bool:
    """Same dtype, shape and bits (NaN included, unlike torch.equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_int = _SAME_WIDTH_INT[a.dtype]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


BATCHABLE = [
    pytest.param(case, reduction, id=f"{case.id}-{reduction}")
    for case in CASES
    if not case.shares_tensors
    for reduction in SPECS[case.op].param_index["reduction"].choices or ()
]


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("case", "reduction"), BATCHABLE)
def test_batched_equals_alone_bitwise(case: Case, reduction: str, dtype: torch.dtype) -> None:
    spec = SPECS[case.op]
    reqs = []
    for seed, n in enumerate((3, 1, 7, 2, 5)):
        tensors, params = make_request(case, reduction, n=n, seed=10 + seed)
        reqs.append({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()})
    batched = run(spec, reqs, params, WANT_ALL)
    assert len(batched) == len(reqs)
    for req, got in zip(reqs, batched, strict=True):
        (alone,) = run(spec, [req], params, WANT_ALL)
        for name in WANT_ALL:
            assert got[name].shape == alone[name].shape
            assert bitwise_equal(got[name], alone[name]), name


@pytest.mark.parametrize("rows", [(4, 4, 4), (8, 8), (3, 3, 3), (1, 1, 1, 1), (4, 3, 4)], ids=str)
@pytest.mark.parametrize(("case", "reduction"), [p for p in BATCHABLE if p.values[1] != "none"])
def test_same_size_batches_equal_alone_bitwise(case: Case, reduction: str, rows: tuple[int, ...]) -> None:
    # Requests of one size take the reduction's short paths (segment_sums sums a view
    # when the size is a power of two; the upstream gradient is a broadcast): each must
    # still answer bit for bit what it answers alone and beside requests of other sizes.
    spec = SPECS[case.op]
    reqs = []
    for seed, n in enumerate(rows):
        tensors, params = make_request(case, reduction, n=n, seed=50 + seed)
        reqs.append({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    odd, _ = make_request(case, reduction, n=5, seed=49)
    odd = {k: v.float() if v.is_floating_point() else v for k, v in odd.items()}
    batched = run(spec, reqs, params, WANT_ALL)
    mixed = run(spec, [odd, *reqs], params, WANT_ALL)[1:]
    for req, got, beside in zip(reqs, batched, mixed, strict=True):
        (alone,) = run(spec, [req], params, WANT_ALL)
        for name in WANT_ALL:
            assert bitwise_equal(got[name], alone[name]), name
            assert bitwise_equal(beside[name], alone[name]), name


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("op", ["huber", "bce_with_logits", "cross_entropy", "kl_div", "bce"])
def test_large_requests_batched_equal_alone_bitwise(op: str, reduction: str) -> None:
    # Big enough for torch to split elementwise kernels across threads.
    case = next(c for c in CASES if c.op == op)
    spec = SPECS[op]
    reqs = []
    for seed, n in enumerate((9001, 3, 17003)):
        tensors, params = make_request(case, reduction, n=n, seed=30 + seed)
        reqs.append({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    batched = run(spec, reqs, params, WANT_ALL)
    for req, got in zip(reqs, batched, strict=True):
        (alone,) = run(spec, [req], params, WANT_ALL)
        assert all(bitwise_equal(got[name], alone[name]) for name in WANT_ALL)


# ------------------------------------------------------------------ checkers


def _reject(op: str, tensors: Tensors, match: str, **params: Any) -> None:
    spec = SPECS[op]
    assert spec.check is not None
    with pytest.raises(InvalidInput, match=match):
        spec.check(tensors, full_params(spec, **params))


def _accept(op: str, tensors: Tensors, **params: Any) -> None:
    spec = SPECS[op]
    assert spec.check is not None
    spec.check(tensors, full_params(spec, **params))


def test_checker_accepts_valid_requests() -> None:
    for case in CASES:
        for reduction in SPECS[case.op].param_index["reduction"].choices or ():
            tensors, params = make_request(case, reduction, n=3, seed=20)
            check = SPECS[case.op].check
            assert check is not None
            check(tensors, params)


@pytest.mark.parametrize("op", ["l1", "mse", "huber", "smooth_l1", "bce_with_logits", "bce", "kl_div"])
def test_checker_target_shape_mismatch(op: str) -> None:
    _reject(
        op, {"input": torch.full((2, 3), 0.5), "target": torch.full((2, 4), 0.5)}, r"^target: shape \[2, 4\]"
    )


@pytest.mark.parametrize(
    ("reduction", "shape"), [("mean", (1,)), ("sum", (2,)), ("none", ()), ("none", (3, 2))]
)
def test_checker_grad_loss_shape(reduction: str, shape: tuple[int, ...]) -> None:
    tensors = {"input": torch.zeros(2, 3), "target": torch.zeros(2, 3), "grad_loss": torch.ones(shape)}
    _reject("mse", tensors, r"^grad_loss: shape", reduction=reduction)
    ce = {"input": torch.zeros(2, 3), "target": torch.tensor([0, 1]), "grad_loss": torch.ones(shape)}
    _reject("cross_entropy", ce, r"^grad_loss: shape", reduction=reduction)
    _reject("hinge", ce, r"^grad_loss: shape", reduction=reduction)


def test_checker_grad_loss_shapes_accepted() -> None:
    _accept(
        "mse",
        {"input": torch.zeros(2, 3), "target": torch.zeros(2, 3), "grad_loss": torch.ones(2, 3)},
        reduction="none",
    )
    ce = {
        "input": torch.zeros(2, 3, 4),
        "target": torch.zeros(2, 4, dtype=torch.long),
        "grad_loss": torch.ones(2, 4),
    }
    _accept("cross_entropy", ce, reduction="none")
    _accept(
        "kl_div",
        {"input": torch.zeros(2, 3), "target": torch.zeros(2, 3), "grad_loss": torch.ones(())},
        reduction="batchmean",
    )


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan])
def test_checker_bce_probabilities_outside_unit_interval(bad: float) -> None:
    ok = torch.tensor([0.0, 0.5, 1.0])
    _reject(
        "bce",
        {"input": torch.tensor([0.0, bad, 1.0]), "target": ok},
        r"^input: probabilities must lie in \[0, 1\]",
    )
    _reject("bce", {"input": ok, "target": torch.tensor([bad, 0.5, 1.0])}, r"^target: .*\[0, 1\]")


def test_checker_broadcast_weights() -> None:
    x = torch.zeros(2, 4)
    _accept("bce", {"input": x.fill_(0.5), "target": x, "weight": torch.ones(4)})
    _accept(
        "bce_with_logits", {"input": x, "target": x, "weight": torch.ones(2, 1), "pos_weight": torch.ones(4)}
    )
    _reject(
        "bce", {"input": x, "target": x, "weight": torch.ones(3)}, r"^weight: shape \[3\] does not broadcast"
    )
    _reject("bce_with_logits", {"input": x, "target": x, "weight": torch.ones(3, 2, 4)}, r"^weight:")
    _reject("bce_with_logits", {"input": x, "target": x, "pos_weight": torch.ones(5)}, r"^pos_weight:")


@pytest.mark.parametrize("op", ["cross_entropy", "nll"])
def test_checker_class_index_out_of_range(op: str) -> None:
    x = torch.zeros(3, 5)
    _reject(
        op, {"input": x, "target": torch.tensor([0, 5, 1])}, r"^target: class index 5 out of range \[0, 5\)"
    )
    _reject(op, {"input": x, "target": torch.tensor([-1, 0, 1])}, r"^target: class index -1 out of range")
    _accept(op, {"input": x, "target": torch.tensor([-100, 4, 0])})
    _reject(
        op, {"input": x, "target": torch.tensor([-100, 4, 0])}, r"^target: class index -100", ignore_index=2
    )
    _accept(op, {"input": x, "target": torch.tensor([7, 4, 0])}, ignore_index=7)


@pytest.mark.parametrize("op", ["cross_entropy", "nll", "hinge"])
def test_checker_class_shapes(op: str) -> None:
    _reject(op, {"input": torch.zeros(5), "target": torch.tensor(1)}, r"^input: must be")
    _reject(
        op,
        {"input": torch.zeros(3, 0), "target": torch.zeros(3, dtype=torch.long)},
        r"^input: needs at least one class",
    )
    _reject(
        op, {"input": torch.zeros(3, 4), "target": torch.zeros(2, dtype=torch.long)}, r"^target: shape \[2\]"
    )
    if op != "hinge":
        _reject(
            op,
            {"input": torch.zeros(3, 4), "target": torch.zeros(3, dtype=torch.long), "weight": torch.ones(3)},
            r"^weight: shape \[3\]",
        )
        spatial = {"input": torch.zeros(3, 4, 2), "target": torch.zeros(3, 3, dtype=torch.long)}
        _reject(op, spatial, r"^target: shape \[3, 3\]")


def test_checker_hinge_needs_two_dims_and_range() -> None:
    _reject(
        "hinge",
        {"input": torch.zeros(2, 3, 4), "target": torch.zeros(2, 4, dtype=torch.long)},
        r"^input: must be \[N, C\]",
    )
    _reject(
        "hinge",
        {"input": torch.zeros(2, 3), "target": torch.tensor([0, 3])},
        r"^target: class index 3 out of range \[0, 3\)$",
    )
    _reject(
        "hinge", {"input": torch.zeros(2, 3), "target": torch.tensor([-100, 0])}, r"^target: class index -100"
    )


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_checker_class_probabilities(bad: float) -> None:
    x = torch.zeros(2, 3)
    target = torch.tensor([[0.2, 0.8, 0.0], [0.5, bad, 0.5]])
    _reject(
        "cross_entropy",
        {"input": x, "target": target},
        r"^target: class probabilities must be finite and >= 0",
    )
    _reject(
        "cross_entropy", {"input": x, "target": torch.zeros(2, 4)}, r"^target: shape \[2, 4\] does not match"
    )
