"""Activation kernels (gradserve.ops.activations) against float64 torch autograd.

Every kernel is driven as the engine drives it: layout.assemble -> OpSpec.run ->
layout.disassemble. References are torch.nn.functional ops differentiated by
torch.autograd in float64, never the module's own code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gradserve.errors import InvalidInput
from gradserve.ops.activations import GELU_TANH_GRAD_CLAMP, SPECS
from gradserve.ops.layout import assemble, disassemble
from gradserve.ops.registry import Batch, OpSpec

Tensor = torch.Tensor
Reqs = Sequence[Mapping[str, Tensor]]
SPEC = {s.name: s for s in SPECS}
F64 = torch.float64
LOW = (torch.float32, torch.float16, torch.bfloat16)
# (rtol, atol) of each dtype against the float64 reference on the same (rounded) inputs.
TOL = {
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-2, 2e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


def full_params(spec: OpSpec, **overrides: Any) -> dict[str, Any]:
    params = {p.name: p.default for p in spec.params}
    params.update(overrides)
    return params


def run(spec: OpSpec, reqs: Reqs, params: Mapping[str, Any], want: Sequence[str]) -> list[dict[str, Tensor]]:
    b = assemble(spec, reqs, params, frozenset(want))
    return disassemble(spec, spec.run(b), reqs)


def run1(spec: OpSpec, req: Mapping[str, Tensor], want: Sequence[str], **p: Any) -> dict[str, Tensor]:
    return run(spec, [req], full_params(spec, **p), want)[0]


def vjp(
    fn: Callable[..., Tensor], inputs: Sequence[Tensor], grad_y: Tensor | None
) -> tuple[Tensor, list[Tensor]]:
    """float64 reference: y = fn(*inputs) and the VJP of every input."""
    leaves = [t.detach().to(F64).requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    g = torch.ones_like(y) if grad_y is None else grad_y.to(F64)
    grads = torch.autograd.grad(y, leaves, g)
    return y.detach(), [t.detach() for t in grads]


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    torch.testing.assert_close(actual.to(F64), expected.to(F64), rtol=rtol, atol=atol, equal_nan=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0, scale: float = 1.0, dtype: torch.dtype = F64) -> Tensor:
    return (torch.randn(shape, generator=gen(seed), dtype=F64) * scale).to(dtype)


# ------------------------------------------------------------------ pointwise ops

POINTWISE_REF: dict[str, Callable[..., Tensor]] = {
    "sigmoid": lambda x: torch.sigmoid(x),
    "tanh": lambda x: torch.tanh(x),
    "relu": lambda x: F.relu(x),
    "leaky_relu": lambda x, negative_slope: F.leaky_relu(x, negative_slope),
    "elu": lambda x, alpha: F.elu(x, alpha),
    "selu": lambda x: F.selu(x),
    "gelu": lambda x, approximate: F.gelu(x, approximate=approximate),
    "silu": lambda x: F.silu(x),
    "softplus": lambda x, beta, threshold: F.softplus(x, beta, threshold),
    "mish": lambda x: F.mish(x),
}

# Every pointwise op with its defaults, plus non-default values of every param.
POINTWISE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("sigmoid", {}),
    ("tanh", {}),
    ("relu", {}),
    ("leaky_relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("leaky_relu", {"negative_slope": -0.5}),
    ("elu", {}),
    ("elu", {"alpha": 0.3}),
    ("selu", {}),
    ("gelu", {}),
    ("gelu", {"approximate": "tanh"}),
    ("silu", {}),
    ("softplus", {}),
    ("softplus", {"beta": 2.0, "threshold": 5.0}),
    ("softplus", {"beta": 0.5, "threshold": 1.0}),
    ("mish", {}),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'default'}" for n, p in POINTWISE_CASES]


def pointwise_x(dtype: torch.dtype = F64) -> Tensor:
    x = randn(6, 9, seed=1, scale=3.0)
    # Kinks and thresholds: 0 (relu/leaky subgradients), softplus's beta*x == threshold.
    x[0, :6] = torch.tensor([0.0, -0.0, 2.5, 10.0, 20.0, 0.5])
    return x.to(dtype)


def pointwise_ref(name: str, params: Mapping[str, Any], x: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor]:
    fn = POINTWISE_REF[name]
    y, (gx,) = vjp(lambda t: fn(t, **params), [x], g)
    return y, gx


@pytest.mark.parametrize(("name", "overrides"), POINTWISE_CASES, ids=CASE_IDS)
def test_pointwise_values_and_vjp_float64(name: str, overrides: dict[str, Any]) -> None:
    spec = SPEC[name]
    params = full_params(spec, **overrides)
    x = pointwise_x()
    g = randn(*x.shape, seed=2)
    y_ref, gx_ref = pointwise_ref(name, params, x, g)
    out = run(spec, [{"x": x, "grad_y": g}], params, ["y", "grad_x"])[0]
    assert set(out) == {"y", "grad_x"}
    assert out["y"].shape == x.shape and out["grad_x"].shape == x.shape
    close(out["y"], y_ref)
    close(out["grad_x"], gx_ref)
    # Without grad_y the VJP is the plain derivative (upstream all ones).
    _, gx_plain = pointwise_ref(name, params, x, None)
    close(run(spec, [{"x": x}], params, ["grad_x"])[0]["grad_x"], gx_plain)
    only_y = run(spec, [{"x": x}], params, ["y"])[0]
    assert set(only_y) == {"y"}
    close(only_y["y"], y_ref)


def test_subgradients_at_zero() -> None:
    x = torch.tensor([0.0, -0.0, 1.0, -1.0], dtype=F64)
    relu = run1(SPEC["relu"], {"x": x}, ["grad_x"])["grad_x"]
    assert relu.tolist() == [0.0, 0.0, 1.0, 0.0]
    leaky = run1(SPEC["leaky_relu"], {"x": x}, ["grad_x"], negative_slope=0.2)["grad_x"]
    assert leaky.tolist() == [0.2, 0.2, 1.0, 0.2]
    prelu = run1(SPEC["prelu"], {"x": x}, ["grad_x"])["grad_x"]
    assert prelu.tolist() == [0.25, 0.25, 1.0, 0.25]


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize(("name", "overrides"), POINTWISE_CASES, ids=CASE_IDS)
def test_pointwise_dtypes(name: str, overrides: dict[str, Any], dtype: torch.dtype) -> None:
    spec = SPEC[name]
    params = full_params(spec, **overrides)
    x = pointwise_x(dtype)
    g = randn(*x.shape, seed=3, dtype=dtype)
    y_ref, gx_ref = pointwise_ref(name, params, x, g)
    out = run(spec, [{"x": x, "grad_y": g}], params, ["y", "grad_x"])[0]
    rtol, atol = TOL[dtype]
    for key, ref in (("y", y_ref), ("grad_x", gx_ref)):
        assert out[key].dtype == dtype
        close(out[key], ref, rtol=rtol, atol=atol * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("magnitude", [1e4, 1e30])
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("name", "overrides"), POINTWISE_CASES, ids=CASE_IDS)
def test_pointwise_extremes_finite(
    name: str, overrides: dict[str, Any], dtype: torch.dtype, magnitude: float
) -> None:
    spec = SPEC[name]
    x = torch.tensor([magnitude, -magnitude, 0.5 * magnitude, -0.5 * magnitude], dtype=dtype)
    out = run1(spec, {"x": x}, ["y", "grad_x"], **overrides)
    assert torch.isfinite(out["grad_x"]).all(), out["grad_x"]
    # 1e30 is representable in all three dtypes, so every value must stay finite.
    assert torch.isfinite(out["y"]).all(), out["y"]


def test_float16_extremes_finite() -> None:
    x = torch.tensor([1e4, -1e4, 6e4, -6e4], dtype=torch.float16)
    for name, overrides in POINTWISE_CASES:
        out = run1(SPEC[name], {"x": x}, ["y", "grad_x"], **overrides)
        assert torch.isfinite(out["grad_x"]).all(), name
        assert torch.isfinite(out["y"]).all(), name


def test_gelu_tanh_clamp_changes_no_finite_gradient() -> None:
    # The clamp must only replace NaNs from overflow: wherever torch's own backward is
    # finite, the kernel gives the same bits.
    for dtype in (F64, torch.float32):
        mags = torch.logspace(-3, 30, 400, dtype=F64)
        x = torch.cat([mags, -mags, torch.tensor([GELU_TANH_GRAD_CLAMP, 0.0], dtype=F64)]).to(dtype)
        ours = run1(SPEC["gelu"], {"x": x}, ["grad_x"], approximate="tanh")["grad_x"]
        theirs = torch.ops.aten.gelu_backward(torch.ones_like(x), x, approximate="tanh")
        finite = torch.isfinite(theirs)
        assert torch.equal(ours[finite], theirs[finite])
        assert torch.isfinite(ours).all()
        assert ours[x > 1e3].eq(1).all() and ours[x < -1e3].eq(0).all()


@pytest.mark.parametrize(("name", "overrides"), POINTWISE_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [F64, *LOW])
def test_nan_and_inf_follow_torch(name: str, overrides: dict[str, Any], dtype: torch.dtype) -> None:
    """Values and gradients at NaN and +-inf, in every dtype, are torch autograd's in
    the precision the op computes in (float32 for the 16-bit dtypes).

    torch's own answer at these points can depend on where the value sits: its
    vectorized loop and its scalar tail take different branches (elu's and selu's
    gradient at NaN: NaN in the loop, the positive slope in the tail; float32 gelu at
    +inf: NaN in the loop, inf in the tail). The reference is the loop's answer (a
    tensor of 64 copies), which is what torch gives for all but a few elements of any
    real tensor; ours is the same wherever the value sits (next test), which batch
    invariance needs."""
    compute = F64 if dtype == F64 else torch.float32
    params = full_params(SPEC[name], **overrides)

    def torch_in_compute(x: Tensor) -> tuple[Tensor, Tensor]:
        leaf = x.to(compute).requires_grad_(True)
        y = POINTWISE_REF[name](leaf, **params)
        (gx,) = torch.autograd.grad(y, [leaf], torch.ones_like(y))
        return y.detach(), gx

    specials = [float("nan"), float("inf"), -float("inf")]
    x = torch.tensor([*specials, 1.0, -1.0], dtype=dtype)
    y_ref, gx_ref = torch_in_compute(x)
    for i, value in enumerate(specials):
        y_loop, gx_loop = torch_in_compute(torch.full((64,), value))
        y_ref[i], gx_ref[i] = y_loop[0], gx_loop[0]
    out = run(SPEC[name], [{"x": x}], params, ["y", "grad_x"])[0]
    assert out["y"].dtype == dtype and out["grad_x"].dtype == dtype
    rtol, atol = TOL.get(dtype, (1e-10, 1e-12))
    close(out["y"], y_ref.to(dtype), rtol, atol)
    close(out["grad_x"], gx_ref.to(dtype), rtol, atol)


def test_torch_answers_at_nan_and_inf_by_position() -> None:
    # The two cases named above: if torch ever agrees with itself, the reference of the
    # test above can become the plain one.
    def elu_grad(x: Tensor) -> Tensor:
        return pointwise_ref("elu", {"alpha": 1.0}, x, None)[1]

    nan = float("nan")
    assert elu_grad(torch.full((64,), nan, dtype=F64)).isnan().all()
    assert elu_grad(torch.tensor([nan], dtype=F64)).eq(1).all()
    assert F.gelu(torch.full((64,), float("inf"))).isnan().all()
    assert F.gelu(torch.tensor([float("inf")])).eq(float("inf")).all()


def test_gradient_at_nan_does_not_depend_on_its_place() -> None:
    """A NaN's gradient is the same at every position of every length (torch's own
    elu backward is not: see above), so batching cannot change it."""
    for name, overrides in POINTWISE_CASES:
        params = full_params(SPEC[name], **overrides)
        seen = set()
        for n in (1, 3, 4, 7, 8, 17, 33, 64, 65):
            for pos in range(n):
                x = torch.linspace(-2, 2, n, dtype=F64)
                x[pos] = float("nan")
                grad = run(SPEC[name], [{"x": x}], params, ["grad_x"])[0]["grad_x"][pos].item()
                seen.add("nan" if grad != grad else grad)
        assert len(seen) == 1, (name, overrides, seen)


POINTWISE_BATCH_SHAPES: list[tuple[int, ...]] = [
    (5,),
    (3, 4),
    (),
    (0,),
    (70,),
    (2, 3, 5),
]


@pytest.mark.parametrize("with_grad_y", [True, False])
@pytest.mark.parametrize(("name", "overrides"), POINTWISE_CASES, ids=CASE_IDS)
def test_pointwise_batch_invariance(name: str, overrides: dict[str, Any], with_grad_y: bool) -> None:
    spec = SPEC[name]
    params = full_params(spec, **overrides)
    for dtype in (torch.float32, torch.bfloat16):
        reqs = []
        for i, shape in enumerate(POINTWISE_BATCH_SHAPES):
            req = {"x": randn(*shape, seed=10 + i, scale=4.0, dtype=dtype)}
            if with_grad_y:
                req["grad_y"] = randn(*shape, seed=20 + i, dtype=dtype)
            reqs.append(req)
        batched = run(spec, reqs, params, ["y", "grad_x"])
        for req, got in zip(reqs, batched, strict=True):
            alone = run(spec, [req], params, ["y", "grad_x"])[0]
            for key in ("y", "grad_x"):
                assert got[key].shape == req["x"].shape
                assert torch.equal(got[key], alone[key]), (name, key, req["x"].shape)


@pytest.mark.parametrize("name", sorted(POINTWISE_REF))
def test_pointwise_outputs_are_fresh(name: str) -> None:
    spec = SPEC[name]
    x = randn(4, 3, seed=5, dtype=torch.float32)
    g = randn(4, 3, seed=6, dtype=torch.float32)
    # A solo elementwise call still pads; check the kernel itself on unpadded inputs.
    out = spec.run(Batch({"x": x, "grad_y": g}, full_params(spec), frozenset({"y", "grad_x"}), (12,)))
    ins = {x.untyped_storage().data_ptr(), g.untyped_storage().data_ptr()}
    for t in out[0].values():
        assert t.untyped_storage().data_ptr() not in ins


# ------------------------------------------------------------------ softmax, log_softmax

SOFTMAX_REF: dict[str, Callable[[Tensor, int], Tensor]] = {
    "softmax": lambda x, dim: torch.softmax(x, dim),
    "log_softmax": lambda x, dim: torch.log_softmax(x, dim),
}
SOFTMAX_CASES = [
    ((4, 7), -1),
    ((4, 7), 1),
    ((4, 7), 0),
    ((4, 7), -2),
    ((3, 4, 5), 1),
    ((3, 4, 5), -1),
    ((6,), 0),
    ((6,), -1),
]


@pytest.mark.parametrize(("shape", "dim"), SOFTMAX_CASES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_values_and_vjp(name: str, shape: tuple[int, ...], dim: int) -> None:
    spec = SPEC[name]
    x = randn(*shape, seed=7, scale=3.0)
    g = randn(*shape, seed=8)
    y_ref, (gx_ref,) = vjp(lambda t: SOFTMAX_REF[name](t, dim), [x], g)
    out = run1(spec, {"x": x, "grad_y": g}, ["y", "grad_x"], dim=dim)
    close(out["y"], y_ref)
    close(out["grad_x"], gx_ref)
    _, (gx_plain,) = vjp(lambda t: SOFTMAX_REF[name](t, dim), [x], None)
    close(run1(spec, {"x": x}, ["grad_x"], dim=dim)["grad_x"], gx_plain, atol=1e-12)


def test_softmax_default_dim_is_last() -> None:
    assert SPEC["softmax"].param_index["dim"].default == -1
    x = randn(3, 4, seed=9)
    close(run1(SPEC["softmax"], {"x": x}, ["y"])["y"], torch.softmax(x, -1))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_zero_dim_input(name: str) -> None:
    # A 0-d x is never batched; drive the kernel with the solo Batch it gets.
    spec = SPEC[name]
    x = torch.tensor(3.0, dtype=F64)
    out = spec.run(Batch({"x": x}, {"dim": 0}, frozenset({"y", "grad_x"}), (1,)))[0]
    y_ref, (gx_ref,) = vjp(lambda t: SOFTMAX_REF[name](t, 0), [x], None)
    close(out["y"], y_ref)
    close(out["grad_x"], gx_ref)
    assert spec.batchable is not None and not spec.batchable({"x": x}, {"dim": -1})


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_dtypes(name: str, dtype: torch.dtype) -> None:
    x = randn(5, 8, seed=11, scale=3.0, dtype=dtype)
    g = randn(5, 8, seed=12, dtype=dtype)
    y_ref, (gx_ref,) = vjp(lambda t: SOFTMAX_REF[name](t, -1), [x], g)
    out = run1(SPEC[name], {"x": x, "grad_y": g}, ["y", "grad_x"])
    rtol, atol = TOL[dtype]
    for key, ref in (("y", y_ref), ("grad_x", gx_ref)):
        assert out[key].dtype == dtype
        close(out[key], ref, rtol=rtol, atol=atol * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_extremes(name: str, dtype: torch.dtype) -> None:
    rows = [[1e4, -1e4, 0.0], [1e4, 1e4, 1e4], [-1e4, -1e4, 1e4], [-1e4, 0.0, -1e4]]
    if dtype in (F64, torch.float32, torch.bfloat16):
        rows += [[1e30, -1e30, 0.0], [-1e30, -1e30, -1e30]]
    x = torch.tensor(rows, dtype=dtype)
    g = randn(*x.shape, seed=13, dtype=dtype)
    out = run1(SPEC[name], {"x": x, "grad_y": g}, ["y", "grad_x"])
    assert torch.isfinite(out["y"]).all() and torch.isfinite(out["grad_x"]).all()
    y_ref, (gx_ref,) = vjp(lambda t: SOFTMAX_REF[name](t, -1), [x], g)
    rtol, atol = TOL.get(dtype, (1e-10, 1e-12))
    close(out["y"], y_ref, rtol=rtol, atol=atol)
    close(out["grad_x"], gx_ref, rtol=rtol, atol=atol * 10)
    if name == "softmax":
        close(out["y"][0], torch.tensor([1.0, 0.0, 0.0]), rtol=0, atol=0)


SOFTMAX_BATCH = [
    ((3, 7), -1),
    ((2, 3, 5), 1),
    ((2, 3, 5), -1),
    ((2, 3, 5), 2),
    ((4, 70), 1),
]


@pytest.mark.parametrize("with_grad_y", [True, False])
@pytest.mark.parametrize(("shape", "dim"), SOFTMAX_BATCH)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_batch_invariance(name: str, shape: tuple[int, ...], dim: int, with_grad_y: bool) -> None:
    spec = SPEC[name]
    params = full_params(spec, dim=dim)
    for dtype in (torch.float32, F64):
        reqs = []
        for i, n in enumerate([1, 5, 0, 3, 17]):
            req = {"x": randn(n, *shape[1:], seed=30 + i, scale=5.0, dtype=dtype)}
            if with_grad_y:
                req["grad_y"] = randn(n, *shape[1:], seed=40 + i, dtype=dtype)
            assert spec.batchable is not None and spec.batchable(req, params)
            reqs.append(req)
        batched = run(spec, reqs, params, ["y", "grad_x"])
        assert len(batched) == len(reqs)
        for req, got in zip(reqs, batched, strict=True):
            alone = run(spec, [req], params, ["y", "grad_x"])[0]
            for key in ("y", "grad_x"):
                assert got[key].shape == req["x"].shape
                assert torch.equal(got[key], alone[key]), (name, key, req["x"].shape)


def test_softmax_batchable() -> None:
    for name in ("softmax", "log_softmax"):
        batchable = SPEC[name].batchable
        assert batchable is not None
        x2 = torch.zeros(3, 4)
        assert batchable({"x": x2}, {"dim": -1}) and batchable({"x": x2}, {"dim": 1})
        assert not batchable({"x": x2}, {"dim": 0}) and not batchable({"x": x2}, {"dim": -2})
        assert not batchable({"x": torch.zeros(5)}, {"dim": -1})
        assert not batchable({"x": torch.tensor(1.0)}, {"dim": 0})


# ------------------------------------------------------------------ prelu

PRELU_CASES: list[tuple[tuple[int, ...], tuple[int, ...] | None]] = [
    ((4, 3), None),
    ((4, 3), ()),
    ((4, 3), (1,)),
    ((4, 3), (3,)),
    ((2, 3, 5), (3,)),
    ((2, 3, 4, 2), (3,)),
    ((2, 3, 4, 2), ()),
    ((6,), (1,)),
    ((6,), ()),
    ((), ()),
    ((), None),
    ((2, 1, 3), (1,)),
]


def prelu_ref(x: Tensor, a: Tensor) -> Tensor:
    return F.prelu(x, a.reshape(-1) if a.dim() == 0 else a)


@pytest.mark.parametrize(("x_shape", "a_shape"), PRELU_CASES)
def test_prelu_values_and_vjp(x_shape: tuple[int, ...], a_shape: tuple[int, ...] | None) -> None:
    spec = SPEC["prelu"]
    x = randn(*x_shape, seed=50)
    if x.dim() > 0:
        x.view(-1)[0] = 0.0
    g = randn(*x_shape, seed=51)
    req: dict[str, Tensor] = {"x": x, "grad_y": g}
    if a_shape is not None:
        req["alpha"] = torch.rand(a_shape, generator=gen(52), dtype=F64) * 0.5
    alpha = req.get("alpha", torch.tensor(0.25, dtype=F64))
    y_ref, (gx_ref, ga_ref) = vjp(prelu_ref, [x, alpha], g)
    out = run1(spec, req, ["y", "grad_x", "grad_alpha"])
    close(out["y"], y_ref)
    close(out["grad_x"], gx_ref)
    assert out["grad_alpha"].shape == alpha.shape
    close(out["grad_alpha"], ga_ref)
    # Each output on its own, and no upstream gradient.
    del req["grad_y"]
    _, (gx1, ga1) = vjp(prelu_ref, [x, alpha], None)
    close(run1(spec, req, ["grad_alpha"])["grad_alpha"], ga1)
    close(run1(spec, req, ["grad_x"])["grad_x"], gx1)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_prelu_dtypes(dtype: torch.dtype) -> None:
    x = randn(4, 3, 5, seed=53, dtype=dtype)
    a = torch.tensor([0.1, 0.25, -0.3], dtype=dtype)
    g = randn(4, 3, 5, seed=54, dtype=dtype)
    y_ref, (gx_ref, ga_ref) = vjp(prelu_ref, [x, a], g)
    out = run1(SPEC["prelu"], {"x": x, "alpha": a, "grad_y": g}, ["y", "grad_x", "grad_alpha"])
    rtol, atol = TOL[dtype]
    for key, ref in (("y", y_ref), ("grad_x", gx_ref), ("grad_alpha", ga_ref)):
        assert out[key].dtype == dtype
        close(out[key], ref, rtol=rtol, atol=atol * max(1.0, ref.abs().max().item()))


def test_prelu_extremes() -> None:
    for dtype, mag in (
        (F64, 1e30),
        (torch.float32, 1e30),
        (torch.float16, 1e4),
        (torch.bfloat16, 1e30),
    ):
        x = torch.tensor([[mag, -mag], [-mag, mag]], dtype=dtype)
        out = run1(
            SPEC["prelu"],
            {"x": x, "alpha": torch.tensor([0.5, 0.5], dtype=dtype)},
            ["y", "grad_x", "grad_alpha"],
        )
        for t in out.values():
            assert torch.isfinite(t).all()


# ------------------------------------------------------------------ maxout


def maxout_ref(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    z = torch.einsum("nd,kmd->nkm", x, w) + b
    return z.max(dim=1).values


def maxout_req(n: int, d: int, k: int, m: int, seed: int, dtype: torch.dtype = F64) -> dict[str, Tensor]:
    return {
        "x": randn(n, d, seed=seed, dtype=dtype),
        "weight": randn(k, m, d, seed=seed + 1, dtype=dtype),
        "bias": randn(k, m, seed=seed + 2, dtype=dtype),
        "grad_y": randn(n, m, seed=seed + 3, dtype=dtype),
    }


MAXOUT_WANT = ["y", "grad_x", "grad_weight", "grad_bias"]


@pytest.mark.parametrize(
    ("n", "d", "k", "m"),
    [(5, 4, 3, 2), (1, 1, 1, 1), (8, 6, 4, 7), (0, 3, 2, 2), (3, 0, 2, 2)],
)
def test_maxout_values_and_vjp(n: int, d: int, k: int, m: int) -> None:
    spec = SPEC["maxout"]
    req = maxout_req(n, d, k, m, seed=60)
    y_ref, (gx, gw, gb) = vjp(maxout_ref, [req["x"], req["weight"], req["bias"]], req["grad_y"])
    out = run1(spec, req, MAXOUT_WANT)
    close(out["y"], y_ref)
    close(out["grad_x"], gx)
    close(out["grad_x"], gx)
    close(out["grad_weight"], gw)
    close(out["grad_bias"], gb)
    del req["grad_y"]
    _, (gx1, gw1, gb1) = vjp(maxout_ref, [req["x"], req["weight"], req["bias"]], None)
    for key, ref in (("grad_x", gx1), ("grad_weight", gw1), ("grad_bias", gb1)):
        got = run1(spec, req, [key])
        assert set(got) == {key}
        close(got[key], ref)


def test_maxout_ties_go_to_first_piece() -> None:
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=F64)
    w = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]], [[0.0, 0.0]]], dtype=F64)  # K=3, M=1
    b = torch.zeros(3, 1, dtype=F64)
    out = run1(SPEC["maxout"], {"x": x, "weight": w, "bias": b}, MAXOUT_WANT)
    # Row 0: pieces 0 and 1 tie at 3; row 1: 0 and 1 tie at -0.5, piece 2 wins with 0.
    assert out["grad_bias"].tolist() == [[1.0], [0.0], [1.0]]
    assert out["grad_weight"].tolist() == [[[1.0, 2.0]], [[0.0, 0.0]], [[-1.0, 0.5]]]
    _, (gx, gw, gb) = vjp(maxout_ref, [x, w, b], None)
    close(out["grad_x"], gx)
    close(out["grad_weight"], gw)
    close(out["grad_bias"], gb)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_maxout_dtypes(dtype: torch.dtype) -> None:
    req = maxout_req(6, 5, 3, 4, seed=70, dtype=dtype)
    y_ref, grads = vjp(maxout_ref, [req["x"], req["weight"], req["bias"]], req["grad_y"])
    out = run1(SPEC["maxout"], req, MAXOUT_WANT)
    rtol, atol = TOL[dtype]
    for key, ref in zip(MAXOUT_WANT, [y_ref, *grads], strict=True):
        assert out[key].dtype == dtype
        # Low precision may pick a different near-tied piece; compare y tightly and the
        # gradients' sums, which do not depend on which piece won.
        if key == "y":
            close(out[key], ref, rtol=rtol, atol=atol * 10)
        elif key == "grad_x":
            close(out[key], ref, rtol=rtol * 5, atol=atol * 50)
        else:
            close(out[key].to(F64).sum(0), ref.sum(0), rtol=rtol * 5, atol=atol * 50)


def test_maxout_extremes() -> None:
    req = maxout_req(4, 3, 2, 2, seed=80)
    req["x"] = req["x"] * 1e4
    out = run1(SPEC["maxout"], req, MAXOUT_WANT)
    for t in out.values():
        assert torch.isfinite(t).all()


# ------------------------------------------------------------------ checkers


def reject(spec: OpSpec, tensors: dict[str, Tensor], match: str, **params: Any) -> None:
    assert spec.check is not None
    with pytest.raises(InvalidInput, match=match) as info:
        spec.check(tensors, full_params(spec, **params))
    assert info.value.http_status == 422


def accept(spec: OpSpec, tensors: dict[str, Tensor], **params: Any) -> None:
    assert spec.check is not None
    spec.check(tensors, full_params(spec, **params))


@pytest.mark.parametrize("name", [*sorted(POINTWISE_REF), "softmax", "log_softmax", "prelu"])
def test_check_grad_y_shape(name: str) -> None:
    spec = SPEC[name]
    x = torch.zeros(3, 4)
    accept(spec, {"x": x, "grad_y": torch.zeros(3, 4)})
    accept(spec, {"x": x})
    reject(spec, {"x": x, "grad_y": torch.zeros(4, 3)}, r"^grad_y: .*\[4, 3\].*\[3, 4\]")
    reject(spec, {"x": x, "grad_y": torch.zeros(12)}, r"^grad_y:")
    reject(spec, {"x": torch.zeros(()), "grad_y": torch.zeros(1)}, r"^grad_y:")


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_check_softmax_dim(name: str) -> None:
    spec = SPEC[name]
    x = torch.zeros(2, 3)
    for dim in (-2, -1, 0, 1):
        accept(spec, {"x": x}, dim=dim)
    reject(spec, {"x": x}, r"^dim: 2 is out of range .*\[-2, 1\]", dim=2)
    reject(spec, {"x": x}, r"^dim: -3", dim=-3)
    accept(spec, {"x": torch.tensor(1.0)}, dim=0)
    accept(spec, {"x": torch.tensor(1.0)}, dim=-1)
    reject(spec, {"x": torch.tensor(1.0)}, r"^dim: 1", dim=1)


def test_check_prelu_alpha() -> None:
    spec = SPEC["prelu"]
    accept(spec, {"x": torch.zeros(2, 3, 4), "alpha": torch.zeros(3)})
    accept(spec, {"x": torch.zeros(2, 3, 4), "alpha": torch.zeros(1)})
    accept(spec, {"x": torch.zeros(5), "alpha": torch.zeros(1)})
    accept(spec, {"x": torch.zeros(()), "alpha": torch.zeros(())})
    reject(
        spec,
        {"x": torch.zeros(2, 3), "alpha": torch.zeros(1, 3)},
        r"^alpha: .*\[1, 3\]",
    )
    reject(
        spec,
        {"x": torch.zeros(2, 3), "alpha": torch.zeros(4)},
        r"^alpha: 4 slopes .*x.shape\[1\] = 3",
    )
    reject(spec, {"x": torch.zeros(2, 3), "alpha": torch.zeros(2)}, r"^alpha:")
    reject(
        spec,
        {"x": torch.zeros(3), "alpha": torch.zeros(3)},
        r"^alpha: .*fewer than 2 dims",
    )
    reject(spec, {"x": torch.zeros(()), "alpha": torch.zeros(2)}, r"^alpha:")


def test_check_maxout() -> None:
    spec = SPEC["maxout"]
    ok = {k: v for k, v in maxout_req(4, 3, 2, 5, seed=90).items()}
    accept(spec, ok)
    accept(spec, {k: v for k, v in ok.items() if k != "grad_y"})
    cases = [
        ("x", torch.zeros(4, 3, 1), r"^x: must be 2-D \[N, D\]"),
        ("x", torch.zeros(3), r"^x: must be 2-D"),
        ("x", torch.zeros(4, 2), r"^weight: last dim D = 3 .* D = 2"),
        ("weight", torch.zeros(2, 5), r"^weight: must be 3-D \[K, M, D\]"),
        ("weight", torch.zeros(0, 5, 3), r"^weight: needs at least one piece"),
        ("bias", torch.zeros(2, 5, 1), r"^bias: must be 2-D"),
        ("bias", torch.zeros(3, 5), r"^bias: shape \[3, 5\] .*\[2, 5\]"),
        ("bias", torch.zeros(2, 4), r"^bias: shape \[2, 4\]"),
        ("grad_y", torch.zeros(4, 3), r"^grad_y: shape \[4, 3\] .*\[4, 5\]"),
        ("grad_y", torch.zeros(5, 5), r"^grad_y:"),
    ]
    for name, bad, match in cases:
        reject(spec, {**ok, name: bad}, match)


# ------------------------------------------------------------------ declarations


def test_specs_declare_the_api() -> None:
    expected_modes = {
        **{n: "elementwise" for n in POINTWISE_REF},
        "softmax": "rows",
        "log_softmax": "rows",
        "prelu": "solo",
        "maxout": "solo",
    }
    assert {s.name: s.batch_mode for s in SPECS} == expected_modes
    for spec in SPECS:
        assert spec.family == "activations" and spec.kind == "activation"
        assert spec.upstream == "grad_y" and spec.check is not None
        assert spec.inputs[0].name == "x" and spec.inputs[0].kind == "float"
        assert spec.input_index["grad_y"].optional
        assert spec.output_names == ("y",)
        for p in spec.params:
            assert p.doc
    grads = {s.name: s.grad_output_names for s in SPECS}
    assert grads["prelu"] == ("grad_x", "grad_alpha")
    assert grads["maxout"] == ("grad_x", "grad_weight", "grad_bias")
    assert grads["relu"] == ("grad_x",)
    assert SPEC["prelu"].input_index["alpha"].optional
    assert [t.name for t in SPEC["maxout"].inputs] == ["x", "weight", "bias", "grad_y"]
    defaults = {(s.name, p.name): p.default for s in SPECS for p in s.params}
    assert defaults == {
        ("leaky_relu", "negative_slope"): 0.01,
        ("elu", "alpha"): 1.0,
        ("gelu", "approximate"): "none",
        ("softplus", "beta"): 1.0,
        ("softplus", "threshold"): 20.0,
        ("softmax", "dim"): -1,
        ("log_softmax", "dim"): -1,
    }
    assert SPEC["gelu"].param_index["approximate"].choices == ("none", "tanh")
    assert SPEC["softplus"].param_index["beta"].gt == 0.0
    assert SPEC["softmax"].param_index["dim"].type == "int"
