"""Weight initialization ops (gradserve.ops.init): statistics, torch parity, checkers.

Expected stds are written out from API.md 1.4 and the lecture (Xavier Var = 1/n with
mode fan_in, Kaiming relu Var = 2/n), with gains from torch.nn.init.calculate_gain,
never taken from the module under test.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from gradserve.errors import InvalidInput
from gradserve.ops import init, init_checks
from gradserve.ops.registry import Batch

SPECS = {s.name: s for s in init.SPECS}
ALL_OPS = (
    "zeros",
    "constant",
    "normal",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "orthogonal",
    "trunc_normal",
)
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
NONLINEARITIES = ("relu", "leaky_relu", "tanh", "linear", "sigmoid", "selu")
MODES = ("fan_avg", "fan_in", "fan_out")
# Non-square so the three modes give three different fans: 250k samples.
RECT = (400, 625)
SQUARE = (500, 500)


def params_for(op: str, **overrides: Any) -> dict[str, Any]:
    spec = SPECS[op]
    params = {p.name: p.default for p in spec.params}
    params.update(overrides)
    return params


def run(op: str, want: tuple[str, ...] = ("weight", "std"), **overrides: Any) -> dict[str, Any]:
    """Call the kernel as the engine does: checker first, then one solo Batch."""
    spec = SPECS[op]
    params = params_for(op, **overrides)
    assert spec.check is not None
    spec.check({}, params)
    outs = spec.run(Batch({}, params, frozenset(want), (1,)))
    assert len(outs) == 1
    return outs[0]


def check(op: str, **overrides: Any) -> None:
    spec = SPECS[op]
    assert spec.check is not None
    spec.check({}, params_for(op, **overrides))


def fan(shape: tuple[int, ...], mode: str) -> float:
    receptive = math.prod(shape[2:])
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]


def assert_moments(w: torch.Tensor, mean: float, std: float) -> None:
    """Sample mean within 5 standard errors; sample variance within 3% relative."""
    x = w.double().flatten()
    n = x.numel()
    assert abs(x.mean().item() - mean) <= 5 * std / math.sqrt(n), (x.mean().item(), mean)
    var = x.var().item()
    assert abs(var - std**2) <= 0.03 * std**2, (var, std**2)


# ---------------------------------------------------------------- declarations


def test_specs_declared_as_contract() -> None:
    assert tuple(SPECS) == ALL_OPS
    for spec in init.SPECS:
        assert (spec.family, spec.kind, spec.batch_mode) == ("init", "init", "solo")
        assert spec.inputs == () and spec.grad_outputs == ()
        assert spec.output_names == ("weight", "std")
        names = [p.name for p in spec.params]
        assert {"shape", "dtype", "seed"} <= set(names)
        idx = spec.param_index
        assert idx["shape"].type == "shape" and idx["shape"].default is None
        assert idx["dtype"].default == "float32"
        assert set(idx["dtype"].choices or ()) == set(DTYPES)
        assert idx["seed"].nullable and idx["seed"].default is None


@pytest.mark.parametrize(
    ("op", "defaults"),
    [
        ("constant", {"value": 0.0}),
        ("normal", {"mean": 0.0, "std": 1.0}),
        ("uniform", {"low": -1.0, "high": 1.0}),
        ("xavier_normal", {"mode": "fan_avg", "gain": 1.0}),
        ("xavier_uniform", {"mode": "fan_avg", "gain": 1.0}),
        ("kaiming_normal", {"mode": "fan_in", "nonlinearity": "relu", "negative_slope": 0.01}),
        ("kaiming_uniform", {"mode": "fan_in", "nonlinearity": "relu", "negative_slope": 0.01}),
        ("orthogonal", {"gain": 1.0}),
        ("trunc_normal", {"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0}),
    ],
)
def test_param_defaults(op: str, defaults: dict[str, Any]) -> None:
    params = params_for(op)
    for name, value in defaults.items():
        assert params[name] == value, name


def test_fans() -> None:
    assert init.fans((16, 8, 3, 3)) == (72, 144)
    assert init.fans((400, 625)) == (625, 400)
    assert init.fans((7, 5, 2)) == (10, 14)
    with pytest.raises(ValueError):
        init.fans((5,))


def test_conv_shape_std() -> None:
    shape = (16, 8, 3, 3)
    out = run("xavier_normal", shape=list(shape), dtype="float64", seed=1)
    assert out["weight"].shape == shape
    assert out["std"].item() == pytest.approx(math.sqrt(2.0 / (72 + 144)), rel=1e-15)
    out = run("kaiming_normal", shape=list(shape), dtype="float64", seed=1, mode="fan_out")
    assert out["std"].item() == pytest.approx(math.sqrt(2.0 / 144), rel=1e-15)
    out = run("orthogonal", shape=list(shape), dtype="float64", seed=1)
    assert out["std"].item() == pytest.approx(1 / math.sqrt(72), rel=1e-15)


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [SQUARE, RECT])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["xavier_normal", "xavier_uniform"])
def test_xavier_moments(op: str, mode: str, shape: tuple[int, ...], dtype: str) -> None:
    gain = 1.7
    out = run(op, shape=list(shape), mode=mode, gain=gain, dtype=dtype, seed=11)
    std = gain * math.sqrt(1.0 / fan(shape, mode))
    if mode == "fan_avg":
        assert std**2 == pytest.approx(gain**2 * 2 / (shape[0] + shape[1]))
    if mode == "fan_in":  # the lecture's Var(w) = 1/n, times gain^2
        assert std**2 == pytest.approx(gain**2 / shape[1])
    assert out["std"].item() == pytest.approx(std, rel=1e-6)
    assert_moments(out["weight"], 0.0, std)
    if op == "xavier_uniform":
        bound = math.sqrt(3.0) * std
        w = out["weight"].double()
        assert w.abs().max().item() <= bound * (1 + 1e-6)
        assert w.abs().max().item() >= 0.99 * bound


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["kaiming_normal", "kaiming_uniform"])
def test_kaiming_moments(op: str, mode: str, nonlinearity: str, dtype: str) -> None:
    slope = 0.2
    out = run(
        op,
        shape=list(RECT),
        mode=mode,
        nonlinearity=nonlinearity,
        negative_slope=slope,
        dtype=dtype,
        seed=5,
    )
    gain = torch.nn.init.calculate_gain(nonlinearity, slope)  # type: ignore[arg-type]
    std = gain / math.sqrt(fan(RECT, mode))
    assert out["std"].item() == pytest.approx(std, rel=1e-6)
    assert_moments(out["weight"], 0.0, std)
    if op == "kaiming_uniform":
        assert out["weight"].double().abs().max().item() <= math.sqrt(3.0) * std * (1 + 1e-6)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kaiming_relu_is_two_over_n(dtype: str) -> None:
    out = run("kaiming_normal", shape=list(SQUARE), dtype=dtype, seed=3)
    assert out["std"].item() ** 2 == pytest.approx(2 / 500, rel=1e-6)
    assert_moments(out["weight"], 0.0, math.sqrt(2 / 500))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (0.0, 0.01), (3.0, 0.5)])
def test_normal_moments(mean: float, std: float, dtype: str) -> None:
    out = run("normal", shape=list(SQUARE), mean=mean, std=std, dtype=dtype, seed=2)
    assert out["std"].item() == pytest.approx(std, rel=1e-6)
    assert_moments(out["weight"], mean, std)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("low", "high"), [(-1.0, 1.0), (2.0, 5.0)])
def test_uniform_moments_and_bounds(low: float, high: float, dtype: str) -> None:
    out = run("uniform", shape=list(SQUARE), low=low, high=high, dtype=dtype, seed=4)
    std = (high - low) / math.sqrt(12)
    assert out["std"].item() == pytest.approx(std, rel=1e-6)
    assert_moments(out["weight"], (low + high) / 2, std)
    w = out["weight"]
    assert w.min().item() >= low and w.max().item() <= high


def _trunc_moments(mean: float, std: float, a: float, b: float) -> tuple[float, float]:
    """Mean and std of N(mean, std^2) truncated to [a, b] (textbook formulas)."""

    def pdf(x: float) -> float:
        return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    al, be = (a - mean) / std, (b - mean) / std
    # Z from the tail the interval sits in, so [10, 11] std does not cancel to 0.
    if al > 0:
        z = (math.erfc(al / math.sqrt(2)) - math.erfc(be / math.sqrt(2))) / 2
    else:
        z = (math.erfc(-be / math.sqrt(2)) - math.erfc(-al / math.sqrt(2))) / 2
    m = mean + std * (pdf(al) - pdf(be)) / z
    v = std**2 * (1 + (al * pdf(al) - be * pdf(be)) / z - ((pdf(al) - pdf(be)) / z) ** 2)
    return m, math.sqrt(v)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    ("mean", "std", "a", "b"),
    [
        (0.0, 1.0, -2.0, 2.0),
        (0.3, 1.0, -0.5, 1.5),
        (0.0, 0.02, -0.04, 0.04),
        (0.0, 1.0, 10.0, 11.0),  # deep upper tail: an erf-based inverse CDF collapses to b
        (0.0, 2.0, -30.0, -20.0),  # deep lower tail
        (5.0, 1.0, -100.0, 100.0),  # wide bounds: plain normal
    ],
)
def test_trunc_normal_moments_and_bounds(mean: float, std: float, a: float, b: float, dtype: str) -> None:
    out = run("trunc_normal", shape=list(SQUARE), mean=mean, std=std, a=a, b=b, dtype=dtype, seed=6)
    assert out["std"].item() == pytest.approx(std, rel=1e-6)
    w = out["weight"].double()
    tol = 1e-7 * max(abs(a), abs(b))
    assert w.min().item() >= a - tol and w.max().item() <= b + tol
    assert_moments(w, *_trunc_moments(mean, std, a, b))


def test_trunc_normal_edge_cases() -> None:
    # std 0 with mean inside [a, b]: a point mass at mean.
    out = run("trunc_normal", shape=[4, 4], std=0.0, mean=0.5, a=-1.0, b=1.0, dtype="float64")
    assert torch.equal(out["weight"], torch.full((4, 4), 0.5, dtype=torch.float64))
    assert out["std"].item() == 0.0
    # Mean 19 std outside: finite, within bounds, piled up near the bound nearest mean.
    w = run("trunc_normal", shape=[4096], mean=20.0, std=1.0, a=-1.0, b=1.0, seed=1)["weight"]
    assert torch.isfinite(w).all() and (w >= -1).all() and (w <= 1).all()
    assert w.double().mean().item() == pytest.approx(1 - 1 / 19, abs=0.01)
    # A std at the float64 limit: no 0 * inf = NaN, values stay in bounds.
    w = run("trunc_normal", shape=[256], std=1.7e308, a=-1.0, b=1.0, dtype="float64", seed=1)["weight"]
    assert not torch.isnan(w).any() and (w.abs() <= 1).all()
    # Tiny std: a narrow normal around mean, clamped.
    w = run("trunc_normal", shape=[256], std=1e-300, mean=0.25, dtype="float64", seed=1)["weight"]
    assert (w - 0.25).abs().max().item() < 1e-290


# ---------------------------------------------------------------- orthogonal


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(300, 500), (500, 300), (16, 8, 3, 3), (64, 8, 3, 3), SQUARE])
def test_orthogonal(shape: tuple[int, ...], dtype: str) -> None:
    gain = 1.5
    out = run("orthogonal", shape=list(shape), gain=gain, dtype=dtype, seed=8)
    w = out["weight"].double().reshape(shape[0], -1)
    rows, cols = w.shape
    gram = w @ w.T if rows <= cols else w.T @ w
    tol = 1e-10 if dtype == "float64" else 1e-4
    eye = torch.eye(min(rows, cols), dtype=torch.float64)
    assert torch.allclose(gram, gain**2 * eye, atol=tol * gain**2), (gram - gain**2 * eye).abs().max()
    assert out["std"].item() == pytest.approx(gain / math.sqrt(init.fans(shape)[0]), rel=1e-6)


# ---------------------------------------------------------------- torch parity (bytes)


def _torch_ref(op: str, shape: tuple[int, ...], seed: int, p: dict[str, Any]) -> torch.Tensor:
    w = torch.empty(shape, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    nn = torch.nn.init
    if op == "normal":
        return nn.normal_(w, p["mean"], p["std"], generator=g)
    if op == "uniform":
        return nn.uniform_(w, p["low"], p["high"], generator=g)
    if op == "xavier_normal":
        return nn.xavier_normal_(w, p["gain"], generator=g)
    if op == "xavier_uniform":
        return nn.xavier_uniform_(w, p["gain"], generator=g)
    if op == "kaiming_normal":
        return nn.kaiming_normal_(w, p["negative_slope"], p["mode"], p["nonlinearity"], generator=g)
    if op == "kaiming_uniform":
        return nn.kaiming_uniform_(w, p["negative_slope"], p["mode"], p["nonlinearity"], generator=g)
    if op == "orthogonal":
        return nn.orthogonal_(w, p["gain"], generator=g)
    raise AssertionError(op)


@pytest.mark.parametrize(
    ("op", "overrides"),
    [
        ("normal", {"mean": 0.5, "std": 0.1}),
        ("uniform", {"low": -0.3, "high": 0.7}),
        ("xavier_normal", {"gain": 2.0}),
        ("xavier_uniform", {"gain": 0.5}),
        ("kaiming_normal", {"mode": "fan_out", "nonlinearity": "leaky_relu", "negative_slope": 0.3}),
        ("kaiming_uniform", {"nonlinearity": "tanh"}),
        ("kaiming_normal", {"nonlinearity": "selu"}),
        ("orthogonal", {"gain": 1.3}),
    ],
)
def test_same_bytes_as_torch_nn_init(op: str, overrides: dict[str, Any]) -> None:
    shape = (12, 6, 3)
    out = run(op, shape=list(shape), dtype="float64", seed=1234, **overrides)
    ref = _torch_ref(op, shape, 1234, params_for(op, **overrides))
    assert torch.equal(out["weight"], ref)


# ---------------------------------------------------------------- seeds and dtypes


@pytest.mark.parametrize("op", ALL_OPS)
def test_seed_reproducible(op: str) -> None:
    shape = [6, 5, 2]
    a = run(op, shape=shape, seed=42)["weight"]
    b = run(op, shape=shape, seed=42)["weight"]
    assert torch.equal(a, b)
    if op in ("zeros", "constant"):
        return
    assert not torch.equal(a, run(op, shape=shape, seed=43)["weight"])
    assert not torch.equal(run(op, shape=shape)["weight"], run(op, shape=shape)["weight"])


def test_seed_extremes() -> None:
    for seed in (0, 2**64 - 1):
        w = run("normal", shape=[8], seed=seed)["weight"]
        assert torch.equal(w, run("normal", shape=[8], seed=seed)["weight"])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ALL_OPS)
def test_dtypes_and_std_output(op: str, dtype: str) -> None:
    shape = [10, 4, 3]
    out = run(op, shape=shape, dtype=dtype, seed=9)
    w, std = out["weight"], out["std"]
    assert w.dtype == DTYPES[dtype] and tuple(w.shape) == tuple(shape)
    assert std.dtype == DTYPES[dtype] and std.dim() == 0
    assert torch.isfinite(w).all()
    expected = torch.tensor(init.target_std(op, params_for(op, shape=shape)), dtype=DTYPES[dtype])
    assert torch.equal(std, expected)
    if dtype in ("float16", "bfloat16"):
        # Drawn in float32 and rounded: the same seed gives the float32 values rounded
        # (kept inside [low, high) for the uniform ops: test_uniform_half_open_in_half).
        f32 = run(op, shape=shape, dtype="float32", seed=9)["weight"].to(DTYPES[dtype])
        if op in UNIFORM_OPS:
            bound = math.sqrt(3) * init.target_std(op, params_for(op, shape=shape))
            low, high = (-1.0, 1.0) if op == "uniform" else (-bound, bound)
            f32 = f32.clamp(*init.range_in_dtype(low, high, DTYPES[dtype]))
        assert torch.equal(w, f32)


UNIFORM_OPS = ("uniform", "xavier_uniform", "kaiming_uniform")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    ("op", "overrides"),
    [
        ("uniform", {}),
        ("uniform", {"low": 0.1, "high": 0.3}),
        ("xavier_uniform", {}),
        ("kaiming_uniform", {}),
    ],
)
def test_uniform_half_open_in_half(op: str, overrides: dict[str, Any], dtype: str) -> None:
    # A float32 draw just below high rounds up to high itself in float16/bfloat16 (259
    # of 250,000 bfloat16 values did); the answer must stay in [low, high), as torch's.
    shape = [500, 500]
    w = run(op, shape=shape, dtype=dtype, seed=1, **overrides)["weight"].double()
    if op == "uniform":
        low, high = overrides.get("low", -1.0), overrides.get("high", 1.0)
    else:
        high = math.sqrt(3) * init.target_std(op, params_for(op, shape=shape))
        low = -high
    assert w.min().item() >= low and w.max().item() < high
    assert_moments(w, (low + high) / 2, (high - low) / math.sqrt(12))


def test_a_normal_that_would_overflow_its_dtype_is_refused() -> None:
    # std 60,000 in float16 (largest 65,504) answered inf for about one draw in three.
    rejects("normal", "mean, std", shape=[8], std=60_000.0, dtype="float16")
    rejects("xavier_normal", "gain", shape=[1, 1], gain=60_000.0, dtype="float16")
    rejects("normal", "mean, std", shape=[8], mean=3.3e38, std=1e37, dtype="float32")
    check("normal", shape=[8], std=6_000.0, dtype="float16")  # 10 std fit: accepted
    w = run("normal", shape=[10_000], std=6_000.0, dtype="float16", seed=3)["weight"]
    assert torch.isfinite(w).all()


def test_uniform_range_must_fit_and_hold_a_value_of_the_dtype() -> None:
    # bound sqrt(3) * 50,000 overflows float16 (largest 65,504): the answer would be inf.
    rejects("xavier_uniform", "gain", shape=[1, 1], gain=50_000.0, dtype="float16")
    check("xavier_uniform", shape=[1, 1], gain=50_000.0, dtype="float32")
    # No bfloat16 value lies in [1.001, 1.002): its neighbours of 1 are 0.996 and 1.0078.
    message = rejects("uniform", "low", shape=[3], low=1.001, high=1.002, dtype="bfloat16")
    assert "holds no bfloat16 value" in message
    check("uniform", shape=[3], low=1.001, high=1.002, dtype="float32")


@pytest.mark.parametrize(
    ("op", "overrides", "expected"),
    [
        ("zeros", {}, 0.0),
        ("constant", {"value": 2.5}, 0.0),
        ("normal", {"std": 0.01}, 0.01),
        ("uniform", {"low": 0.0, "high": 3.0}, 3 / math.sqrt(12)),
        ("xavier_normal", {"mode": "fan_in", "gain": 2.0}, 2 / math.sqrt(40)),
        ("xavier_uniform", {}, math.sqrt(2 / (40 + 20))),
        ("kaiming_normal", {"mode": "fan_out"}, math.sqrt(2 / 20)),
        ("kaiming_uniform", {"nonlinearity": "tanh"}, (5 / 3) / math.sqrt(40)),
        ("kaiming_normal", {"nonlinearity": "leaky_relu"}, math.sqrt(2 / (1 + 1e-4)) / math.sqrt(40)),
        ("kaiming_normal", {"nonlinearity": "selu"}, 0.75 / math.sqrt(40)),
        ("kaiming_normal", {"nonlinearity": "sigmoid"}, 1 / math.sqrt(40)),
        ("orthogonal", {"gain": 3.0}, 3 / math.sqrt(40)),
        ("trunc_normal", {"std": 0.2}, 0.2),
    ],
)
def test_std_values(op: str, overrides: dict[str, Any], expected: float) -> None:
    out = run(op, shape=[5, 10, 2, 2], dtype="float64", seed=0, **overrides)
    assert out["std"].item() == pytest.approx(expected, rel=1e-14)
    assert init.target_std(op, params_for(op, shape=[5, 10, 2, 2], **overrides)) == pytest.approx(
        expected, rel=1e-14
    )


def test_constant_and_zeros_values() -> None:
    w = run("constant", shape=[3, 2], value=-1.25)["weight"]
    assert torch.equal(w, torch.full((3, 2), -1.25))
    assert torch.equal(
        run("zeros", shape=[2, 2, 2], dtype="bfloat16")["weight"], torch.zeros(2, 2, 2, dtype=torch.bfloat16)
    )


def test_want_subset_and_empty_shapes() -> None:
    assert set(run("normal", want=("std",), shape=[3])) == {"std"}
    assert set(run("normal", want=("weight",), shape=[3])) == {"weight"}
    assert run("normal", shape=[0, 4])["weight"].shape == (0, 4)
    assert run("uniform", shape=[])["weight"].shape == ()


def test_device_param_honoured() -> None:
    dev: dict[str, Any] = {init.DEVICE_PARAM: "cpu"}
    out = run("xavier_uniform", shape=[4, 4], seed=1, **dev)
    assert out["weight"].device.type == "cpu" and out["std"].device.type == "cpu"
    assert torch.equal(out["weight"], run("xavier_uniform", shape=[4, 4], seed=1)["weight"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("op", ALL_OPS)
def test_cuda_draws(op: str) -> None:
    dev: dict[str, Any] = {init.DEVICE_PARAM: "cuda"}
    a = run(op, shape=[300, 200], seed=7, dtype="float32", **dev)
    b = run(op, shape=[300, 200], seed=7, dtype="float32", **dev)
    assert a["weight"].device.type == "cuda" and a["std"].device.type == "cuda"
    assert torch.equal(a["weight"], b["weight"])
    if op not in ("zeros", "constant", "orthogonal"):
        std = _trunc_moments(0.0, 1.0, -2.0, 2.0)[1] if op == "trunc_normal" else a["std"].item()
        assert_moments(a["weight"].cpu(), 0.0, std)


# ---------------------------------------------------------------- checker rejections


def rejects(op: str, param: str, **overrides: Any) -> str:
    with pytest.raises(InvalidInput) as info:
        check(op, **overrides)
    assert info.value.message.startswith(param), info.value.message
    return info.value.message


@pytest.mark.parametrize("op", ALL_OPS)
def test_checker_accepts_defaults(op: str) -> None:
    check(op, shape=[3, 4])
    check(op, shape=[2, 3, 5], seed=2**64 - 1, dtype="float16")


@pytest.mark.parametrize("op", ALL_OPS)
def test_checker_rejects_bad_shapes(op: str) -> None:
    assert "required" in rejects(op, "shape", shape=None)
    assert "-1" in rejects(op, "shape", shape=[4, -1])
    rejects(op, "shape", shape=[4, 2.5])
    rejects(op, "shape", shape=[4, True])
    rejects(op, "shape", shape="4,4")
    rejects(op, "shape", shape=[2**40, 2**40])


@pytest.mark.parametrize("op", sorted(init_checks._FAN_OPS))
def test_checker_rejects_fanless_shapes(op: str) -> None:
    assert "2 dims" in rejects(op, "shape", shape=[5])
    assert "2 dims" in rejects(op, "shape", shape=[])
    assert "0" in rejects(op, "shape", shape=[4, 0])
    rejects(op, "shape", shape=[0, 4, 3])
    rejects(op, "shape", shape=[4, 4, 0])


@pytest.mark.parametrize("op", ["zeros", "normal", "uniform", "trunc_normal"])
def test_non_fan_ops_accept_any_rank(op: str) -> None:
    check(op, shape=[5])
    check(op, shape=[])
    check(op, shape=[0, 3])


def test_checker_rejects_bad_relations() -> None:
    msg = rejects("uniform", "low", shape=[3], low=1.0, high=1.0)
    assert "high" in msg
    rejects("uniform", "low", shape=[3], low=2.0, high=-1.0)
    msg = rejects("trunc_normal", "a", shape=[3], a=2.0, b=2.0)
    assert "b" in msg
    rejects("trunc_normal", "a", shape=[3], a=1.0, b=-1.0)
    # Mean too far outside [a, b] for a non-degenerate draw; std 0 needs mean inside.
    assert "b]" in rejects("trunc_normal", "mean", shape=[3], mean=100.0, a=-1.0, b=1.0)
    rejects("trunc_normal", "mean", shape=[3], mean=-40.0, std=1.0, a=-1.0, b=1.0)
    rejects("trunc_normal", "mean", shape=[3], mean=1.5, std=0.0, a=-1.0, b=1.0)
    check("trunc_normal", shape=[3], mean=30.0, std=1.0, a=-1.0, b=1.0)
    check("trunc_normal", shape=[3], mean=1.0, std=0.0, a=-1.0, b=1.0)


def test_checker_rejects_seed_out_of_range() -> None:
    rejects("normal", "seed", shape=[3], seed=2**64)


def test_checker_rejects_overflow() -> None:
    rejects("constant", "value", shape=[3], value=1e5, dtype="float16")
    check("constant", shape=[3], value=1e5, dtype="float32")
    rejects("normal", "mean", shape=[3], mean=1e300, dtype="float32")
    rejects("normal", "std", shape=[3], std=1e39, dtype="bfloat16")
    rejects("trunc_normal", "b", shape=[3], b=1e39)
    # Both ends fit float32 but the range does not (torch's uniform_ would refuse it).
    assert "low, high" in rejects("uniform", "low", shape=[3], low=-3e38, high=3e38)
    check("uniform", shape=[3], low=-3e38, high=3e38, dtype="float64")
    rejects("xavier_uniform", "gain", shape=[2, 1], gain=3e38)
    rejects("orthogonal", "gain", shape=[2, 2], gain=1e300, dtype="float32")


def test_kernel_survives_extreme_accepted_params() -> None:
    # Huge leaky_relu slope: gain ~ 0 rather than an OverflowError.
    out = run("kaiming_uniform", shape=[4, 4], nonlinearity="leaky_relu", negative_slope=1e200)
    assert torch.equal(out["weight"], torch.zeros(4, 4)) or out["weight"].abs().max() < 1e-150
    out = run("uniform", shape=[64], low=-1e307, high=1e307, dtype="float64", seed=1)
    assert torch.isfinite(out["weight"]).all() and torch.isfinite(out["std"])
    out = run("normal", shape=[8], std=0.0, mean=2.0)
    assert torch.equal(out["weight"], torch.full((8,), 2.0))
