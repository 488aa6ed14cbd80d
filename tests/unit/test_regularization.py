"""regularization and full_loss against torch autograd in float64: values, VJPs,
dtypes, extremes, the lecture's full-loss example and the checkers' 422s."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gradserve.errors import InvalidInput
from gradserve.ops import regularization
from gradserve.ops.layout import assemble, disassemble
from gradserve.ops.registry import OpSpec

Tensor = torch.Tensor
Tensors = dict[str, Tensor]
SPECS = {spec.name: spec for spec in regularization.SPECS}
REG, FULL = SPECS["regularization"], SPECS["full_loss"]
F64 = torch.float64
RTOL, ATOL = 1e-10, 1e-12
FULL_WANT = frozenset({"loss", "data_loss", "reg_loss", "scores", "grad_weight", "grad_bias", "grad_x"})
LOW_DTYPES = {
    torch.float32: (1e-5, 1e-6),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (4e-2, 4e-2),
}


def run(
    spec: OpSpec, reqs: Sequence[Mapping[str, Tensor]], params: Mapping[str, Any], want: frozenset[str]
) -> list[Tensors]:
    b = assemble(spec, reqs, params, frozenset(want))
    return disassemble(spec, spec.run(b), reqs)


def full_params(spec: OpSpec, **overrides: Any) -> dict[str, Any]:
    params = {p.name: p.default for p in spec.params}
    params.update(overrides)
    return params


def _randn(seed: int, *shape: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------ declarations


def test_declarations_follow_api() -> None:
    assert set(SPECS) == {"regularization", "full_loss"}
    assert (REG.family, REG.kind, REG.batch_mode, REG.upstream) == (
        "losses",
        "regularization",
        "solo",
        "grad_penalty",
    )
    assert [t.name for t in REG.inputs] == ["weight", "grad_penalty"]
    assert REG.output_names == ("penalty",) and REG.grad_output_names == ("grad_weight",)
    assert {p.name: p.default for p in REG.params} == {"kind": "l2", "strength": 1.0}
    assert set(REG.param_index["kind"].choices or ()) == {"l2", "l1"}
    assert (FULL.family, FULL.kind, FULL.batch_mode, FULL.upstream) == (
        "losses",
        "full_loss",
        "solo",
        "grad_loss",
    )
    assert [t.name for t in FULL.inputs] == ["x", "weight", "bias", "target", "grad_loss"]
    assert FULL.input_index["bias"].optional and FULL.input_index["target"].kind == "index"
    assert FULL.output_names == ("loss", "data_loss", "reg_loss", "scores")
    assert FULL.grad_output_names == ("grad_weight", "grad_bias", "grad_x")
    assert {p.name: p.default for p in FULL.params} == {
        "data_loss": "cross_entropy",
        "margin": 1.0,
        "regularization": "l2",
        "strength": 0.0,
    }
    assert set(FULL.param_index["regularization"].choices or ()) == {"l2", "l1", "none"}
    assert set(FULL.param_index["data_loss"].choices or ()) == {"cross_entropy", "hinge"}
    # A negative lambda is refused by generic validation (documented choice).
    assert REG.param_index["strength"].ge == 0 and FULL.param_index["strength"].ge == 0


# ------------------------------------------------------------------ regularization


def reg_reference(
    weight: Tensor, kind: str, strength: float, grad_penalty: Tensor | None
) -> tuple[Tensor, Tensor]:
    w = weight.detach().clone().requires_grad_()
    r = (w**2).sum() if kind == "l2" else w.abs().sum()
    penalty = strength * r
    g = torch.ones_like(penalty) if grad_penalty is None else grad_penalty
    (grad,) = torch.autograd.grad(penalty, w, g)
    return penalty.detach(), grad


@pytest.mark.parametrize("kind", ["l2", "l1"])
@pytest.mark.parametrize("strength", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 2)], ids=str)
@pytest.mark.parametrize("upstream", [True, False])
def test_regularization_matches_torch(
    kind: str, strength: float, shape: tuple[int, ...], upstream: bool
) -> None:
    req = {"weight": _randn(1, *shape) * 2}
    if upstream:
        req["grad_penalty"] = _randn(2)
    params = full_params(REG, kind=kind, strength=strength)
    (out,) = run(REG, [req], params, frozenset({"penalty", "grad_weight"}))
    ref, ref_grad = reg_reference(req["weight"], kind, strength, req.get("grad_penalty"))
    assert out["penalty"].shape == () and out["grad_weight"].shape == shape
    torch.testing.assert_close(out["penalty"], ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out["grad_weight"], ref_grad, rtol=RTOL, atol=ATOL)


def test_lecture_penalties() -> None:
    w = torch.tensor([[1.0, -2.0], [0.0, 3.0]], dtype=F64)
    (l2,) = run(REG, [{"weight": w}], full_params(REG), frozenset({"penalty", "grad_weight"}))
    assert l2["penalty"].item() == 14.0  # 1 + 4 + 0 + 9
    assert torch.equal(l2["grad_weight"], 2 * w)
    (l1,) = run(
        REG, [{"weight": w}], full_params(REG, kind="l1", strength=0.5), frozenset({"penalty", "grad_weight"})
    )
    assert l1["penalty"].item() == 3.0  # 0.5 * (1 + 2 + 0 + 3)
    # L1 at 0 -> 0 (sign).
    assert torch.equal(l1["grad_weight"], torch.tensor([[0.5, -0.5], [0.0, 0.5]], dtype=F64))


def test_regularization_only_penalty_wanted() -> None:
    (out,) = run(REG, [{"weight": _randn(3, 4)}], full_params(REG), frozenset({"penalty"}))
    assert set(out) == {"penalty"}


@pytest.mark.parametrize("dtype", list(LOW_DTYPES), ids=str)
@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_regularization_dtypes(dtype: torch.dtype, kind: str) -> None:
    req = {"weight": (_randn(4, 6, 5) * 0.5).to(dtype), "grad_penalty": _randn(5).to(dtype)}
    params = full_params(REG, kind=kind, strength=0.7)
    (out,) = run(REG, [req], params, frozenset({"penalty", "grad_weight"}))
    assert out["penalty"].dtype == dtype and out["grad_weight"].dtype == dtype
    ref, ref_grad = reg_reference(req["weight"].to(F64), kind, 0.7, req["grad_penalty"].to(F64))
    rtol, atol = LOW_DTYPES[dtype]
    torch.testing.assert_close(out["penalty"].to(F64), ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(out["grad_weight"].to(F64), ref_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize(("dtype", "magnitude"), [(F64, 1e30), (torch.float32, 1e4), (torch.float32, 1e18)])
@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_regularization_extremes_are_finite(dtype: torch.dtype, magnitude: float, kind: str) -> None:
    w = torch.tensor([magnitude, -magnitude, 0.0], dtype=dtype)
    (out,) = run(REG, [{"weight": w}], full_params(REG, kind=kind), frozenset({"penalty", "grad_weight"}))
    assert torch.isfinite(out["penalty"]) and torch.isfinite(out["grad_weight"]).all()
    ref, ref_grad = reg_reference(w.to(F64), kind, 1.0, None)
    torch.testing.assert_close(out["penalty"].to(F64), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(out["grad_weight"].to(F64), ref_grad, rtol=1e-6, atol=0)


def test_regularization_under_inference_mode() -> None:
    with torch.inference_mode():
        w = _randn(6, 3, 3)
        (out,) = run(REG, [{"weight": w}], full_params(REG), frozenset({"penalty", "grad_weight"}))
    torch.testing.assert_close(out["grad_weight"], 2 * w.clone(), rtol=RTOL, atol=ATOL)


def test_regularization_checker() -> None:
    assert REG.check is not None
    REG.check({"weight": torch.ones(3), "grad_penalty": torch.tensor(2.0)}, full_params(REG))
    with pytest.raises(InvalidInput, match=r"^grad_penalty: must have penalty's shape \[\]"):
        REG.check({"weight": torch.ones(3), "grad_penalty": torch.ones(1)}, full_params(REG))


# ------------------------------------------------------------------ full_loss


def full_reference(tensors: Mapping[str, Tensor], params: Mapping[str, Any]) -> dict[str, Tensor]:
    """The lecture's L = mean_i L_i + lambda R(W) with torch autograd."""
    leaves = {
        n: tensors[n].detach().clone().requires_grad_() for n in ("x", "weight", "bias") if n in tensors
    }
    scores = leaves["x"] @ leaves["weight"].T
    if "bias" in leaves:
        scores = scores + leaves["bias"]
    target = tensors["target"]
    if params["data_loss"] == "hinge":
        data = F.multi_margin_loss(scores, target, margin=params["margin"]) * scores.shape[1]
    else:
        data = F.cross_entropy(scores, target)
    w = leaves["weight"]
    reg_kind = params["regularization"]
    r = (
        (w**2).sum()
        if reg_kind == "l2"
        else w.abs().sum()
        if reg_kind == "l1"
        else torch.zeros((), dtype=w.dtype)
    )
    reg = params["strength"] * r
    loss = data + reg
    g = tensors.get("grad_loss", torch.ones_like(loss))
    grads = torch.autograd.grad(loss, list(leaves.values()), g)
    out = {"loss": loss, "data_loss": data, "reg_loss": reg, "scores": scores}
    out = {k: v.detach() for k, v in out.items()}
    out.update({f"grad_{n}": grad for n, grad in zip(leaves, grads, strict=True)})
    return out


def full_request(n: int, d: int, c: int, seed: int, bias: bool = True, upstream: bool = True) -> Tensors:
    req = {
        "x": _randn(seed, n, d),
        "weight": _randn(seed + 1, c, d) * 0.7,
        "target": torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed + 2)),
    }
    if bias:
        req["bias"] = _randn(seed + 3, c)
    if upstream:
        req["grad_loss"] = _randn(seed + 4)
    return req


def assert_full_close(out: Tensors, ref: Tensors, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert set(out) == set(ref)
    for name, value in ref.items():
        assert out[name].shape == value.shape, name
        torch.testing.assert_close(out[name].to(F64), value, rtol=rtol, atol=atol, msg=name)


def test_lecture_full_loss_example() -> None:
    # x = I makes the scores the weights' columns: W^T is the CS231n score table.
    scores = torch.tensor([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]], dtype=F64)
    req = {"x": torch.eye(3, dtype=F64), "weight": scores.T.contiguous(), "target": torch.tensor([0, 1, 2])}
    strength = 0.1
    params = full_params(FULL, data_loss="hinge", regularization="l2", strength=strength)
    (out,) = run(FULL, [req], params, FULL_WANT)
    assert torch.equal(out["scores"], scores)
    assert out["data_loss"].item() == pytest.approx((2.9 + 0.0 + 12.9) / 3, abs=1e-12)
    assert round(out["data_loss"].item(), 2) == 5.27
    r2 = float((scores**2).sum())
    assert out["reg_loss"].item() == pytest.approx(strength * r2, rel=1e-14)
    assert out["loss"].item() == pytest.approx((2.9 + 12.9) / 3 + strength * r2, rel=1e-14)
    assert "grad_bias" not in out
    assert_full_close(out, full_reference(req, params))

    ce = full_params(FULL, strength=strength)
    (out,) = run(FULL, [req], ce, FULL_WANT)
    per_image = [
        -torch.log_softmax(row, 0)[int(y)].item() for row, y in zip(scores, req["target"], strict=True)
    ]
    assert round(per_image[0], 2) == 2.04
    assert out["data_loss"].item() == pytest.approx(sum(per_image) / 3, rel=1e-14)
    assert_full_close(out, full_reference(req, ce))


@pytest.mark.parametrize("data_loss", ["cross_entropy", "hinge"])
@pytest.mark.parametrize(("reg", "strength"), [("l2", 0.0), ("l2", 0.05), ("l1", 0.3), ("none", 0.7)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("upstream", [True, False])
def test_full_loss_matches_torch(
    data_loss: str, reg: str, strength: float, bias: bool, upstream: bool
) -> None:
    req = full_request(7, 4, 5, seed=11, bias=bias, upstream=upstream)
    params = full_params(FULL, data_loss=data_loss, regularization=reg, strength=strength, margin=0.8)
    (out,) = run(FULL, [req], params, FULL_WANT)
    assert ("grad_bias" in out) == bias
    assert_full_close(out, full_reference(req, params))


def test_full_loss_reg_none_ignores_strength() -> None:
    req = full_request(4, 3, 3, seed=12)
    (out,) = run(FULL, [req], full_params(FULL, regularization="none", strength=5.0), FULL_WANT)
    assert out["reg_loss"].item() == 0.0 and torch.equal(out["loss"], out["data_loss"])


def test_full_loss_only_scores_wanted() -> None:
    req = full_request(4, 3, 3, seed=13)
    (out,) = run(FULL, [req], full_params(FULL), frozenset({"scores"}))
    assert set(out) == {"scores"}
    torch.testing.assert_close(out["scores"], req["x"] @ req["weight"].T + req["bias"], rtol=RTOL, atol=ATOL)


def test_full_loss_partial_gradients() -> None:
    req = full_request(5, 3, 4, seed=14)
    params = full_params(FULL, strength=0.2)
    (out,) = run(FULL, [req], params, frozenset({"grad_x"}))
    assert set(out) == {"grad_x"}
    torch.testing.assert_close(out["grad_x"], full_reference(req, params)["grad_x"], rtol=RTOL, atol=ATOL)


def test_full_loss_hinge_zero_margin_subgradient() -> None:
    # Score gap exactly equals the margin: no gradient from that term (relu at 0 -> 0).
    req = {
        "x": torch.eye(2, dtype=F64),
        "weight": torch.tensor([[2.0, 0.0], [1.0, 0.0]], dtype=F64),
        "target": torch.tensor([0, 0]),
    }
    params = full_params(FULL, data_loss="hinge", regularization="none")
    (out,) = run(FULL, [req], params, FULL_WANT)
    ref = full_reference(req, params)
    assert_full_close(out, ref)
    assert out["grad_weight"][:, 0].abs().sum().item() == 0.0


@pytest.mark.parametrize("dtype", list(LOW_DTYPES), ids=str)
@pytest.mark.parametrize("data_loss", ["cross_entropy", "hinge"])
def test_full_loss_dtypes(dtype: torch.dtype, data_loss: str) -> None:
    req = full_request(6, 4, 3, seed=15)
    low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in req.items()}
    params = full_params(FULL, data_loss=data_loss, strength=0.1)
    (out,) = run(FULL, [low], params, FULL_WANT)
    assert all(v.dtype == dtype for v in out.values())
    exact = {k: v.to(F64) if v.is_floating_point() else v for k, v in low.items()}
    rtol, atol = LOW_DTYPES[dtype]
    # Scores are rounded to the dtype before the loss in neither computation, so
    # low precision is only compared loosely (inputs are the same rounded numbers).
    assert_full_close(out, full_reference(exact, params), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("magnitude", [1e4, 1e30])
@pytest.mark.parametrize("data_loss", ["cross_entropy", "hinge"])
def test_full_loss_extreme_scores_are_finite(dtype: torch.dtype, magnitude: float, data_loss: str) -> None:
    req = {
        "x": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=dtype),
        "weight": torch.tensor([[magnitude, 0.0], [-magnitude, 1.0], [0.0, -magnitude]], dtype=dtype),
        "bias": torch.zeros(3, dtype=dtype),
        # No wrong class ties the right one: at 1e30, torch's multi_margin_loss sums
        # (margin - s_y) + s_k and loses the margin where s_k == s_y; we keep it.
        "target": torch.tensor([1, 0, 0]),
    }
    params = full_params(FULL, data_loss=data_loss, regularization="l1", strength=1e-3)
    (out,) = run(FULL, [req], params, FULL_WANT)
    assert all(torch.isfinite(v).all() for v in out.values())
    exact = {k: v.to(F64) if v.is_floating_point() else v for k, v in req.items()}
    ref = full_reference(exact, params)
    # grad_x sums terms of size ~magnitude that cancel: absolute noise scales with it.
    grad_x, ref_grad_x = out.pop("grad_x"), ref.pop("grad_x")
    torch.testing.assert_close(grad_x.to(F64), ref_grad_x, rtol=1e-6, atol=1e-6 * magnitude)
    assert_full_close(out, ref, rtol=1e-6, atol=1e-6)


def test_full_loss_under_inference_mode() -> None:
    with torch.inference_mode():
        req = full_request(3, 2, 4, seed=16)
        (out,) = run(FULL, [req], full_params(FULL, strength=0.5), FULL_WANT)
    plain = {k: v.clone() for k, v in req.items()}
    assert_full_close(out, full_reference(plain, full_params(FULL, strength=0.5)))


def _full_reject(tensors: Tensors, match: str) -> None:
    assert FULL.check is not None
    with pytest.raises(InvalidInput, match=match):
        FULL.check(tensors, full_params(FULL))


def test_full_loss_checker() -> None:
    ok = full_request(3, 4, 5, seed=17)
    assert FULL.check is not None
    FULL.check(ok, full_params(FULL))
    _full_reject({**ok, "x": torch.zeros(3, 4, 1)}, r"^x: must be 2-D \[N, D\]")
    _full_reject({**ok, "weight": torch.zeros(5 * 4)}, r"^weight: must be 2-D \[C, D\]")
    _full_reject({**ok, "weight": torch.zeros(5, 3)}, r"^weight: feature dim D = 3 does not match x's D = 4")
    _full_reject(
        {**ok, "weight": torch.zeros(0, 4), "bias": torch.zeros(0)}, r"^weight: needs at least one class"
    )
    _full_reject({**ok, "bias": torch.zeros(4)}, r"^bias: shape \[4\] must be \[C\] = \[5\]")
    _full_reject(
        {**ok, "target": torch.zeros(2, dtype=torch.long)}, r"^target: shape \[2\] must be \[N\] = \[3\]"
    )
    _full_reject({**ok, "target": torch.tensor([0, 5, 1])}, r"^target: class index 5 out of range \[0, 5\)")
    _full_reject({**ok, "target": torch.tensor([0, -1, 1])}, r"^target: class index -1 out of range")
    _full_reject({**ok, "grad_loss": torch.ones(3)}, r"^grad_loss: must have loss's shape \[\]")


def test_full_loss_mean_of_no_samples_is_nan_not_an_error() -> None:
    req = {
        "x": torch.zeros(0, 2, dtype=F64),
        "weight": torch.ones(3, 2, dtype=F64),
        "target": torch.zeros(0, dtype=torch.long),
    }
    (out,) = run(FULL, [req], full_params(FULL), FULL_WANT)
    assert math.isnan(out["data_loss"].item()) and out["scores"].shape == (0, 3)
