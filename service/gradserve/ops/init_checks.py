"""Weight initialization, what is checked before a draw (API.md section 1.4): fans and
target std, the dtypes, and each init op's ``OpSpec.check``.

Flow position: validation (engine.prepare runs ``OpSpec.check``) before any compute;
ops/init.py declares the specs and draws the weights, using ``target_std``,
``uniform_range`` and ``range_in_dtype`` from here. The checks refuse (422) what
would otherwise be an overflowed or out-of-range weight rather than what was asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from gradserve.errors import InvalidInput
from gradserve.ops.numerics import compute_dtype
from gradserve.ops.registry import Checker

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
FAN_MODES = ("fan_avg", "fan_in", "fan_out")
NONLINEARITIES = ("relu", "leaky_relu", "tanh", "linear", "sigmoid", "selu")
# torch.Generator.manual_seed takes an unsigned 64-bit seed.
MAX_SEED = 2**64 - 1
_MAX_ELEMENTS = 2**63 - 1
# Beyond this many std between mean and [a, b] the normal CDF underflows float64 (~37.5)
# and a truncated draw cannot be told apart from its nearest bound.
TRUNC_MAX_STDS = 30.0
# How far (in std) a normal draw must fit its dtype: P(|z| > 10) is about 1.5e-23.
NORMAL_MAX_STDS = 10.0
_NORMAL_OPS = frozenset({"normal", "xavier_normal", "kaiming_normal"})

# Ops whose std depends on fans: they need [fan_out, fan_in, *kernel] with no zero dim.
_FAN_OPS = frozenset({"xavier_normal", "xavier_uniform", "kaiming_normal", "kaiming_uniform", "orthogonal"})
# Params that become (or scale) weight values: each must be finite in the weight's dtype,
# or the answer would be an overflowed tensor rather than what was asked for.
_VALUE_PARAMS: dict[str, tuple[str, ...]] = {
    "zeros": (),
    "constant": ("value",),
    "normal": ("mean", "std"),
    "uniform": ("low", "high"),
    "xavier_normal": ("gain",),
    "xavier_uniform": ("gain",),
    "kaiming_normal": (),
    "kaiming_uniform": (),
    "orthogonal": ("gain",),
    "trunc_normal": ("mean", "std", "a", "b"),
}
# (lower, upper) param pairs that must satisfy lower < upper.
_ORDERED: dict[str, tuple[str, str]] = {"uniform": ("low", "high"), "trunc_normal": ("a", "b")}


# ---------------------------------------------------------------- fans and target std


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight [fan_out, fan_in, *kernel], as torch computes them."""
    if len(shape) < 2:
        raise ValueError(f"fans need a shape of at least 2 dims, got {list(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def fan_for_mode(shape: tuple[int, ...], mode: str) -> float:
    fan_in, fan_out = fans(shape)
    if mode == "fan_in":
        return float(fan_in)
    if mode == "fan_out":
        return float(fan_out)
    return (fan_in + fan_out) / 2.0


def nonlinearity_gain(nonlinearity: str, negative_slope: float) -> float:
    """torch.nn.init.calculate_gain for the nonlinearities API.md names."""
    if nonlinearity == "leaky_relu":
        # s * s rather than s ** 2: the float ** raises OverflowError for |s| > 1e154.
        return math.sqrt(2.0 / (1 + negative_slope * negative_slope))
    gains = {"relu": math.sqrt(2.0), "tanh": 5.0 / 3, "selu": 3.0 / 4}
    return gains.get(nonlinearity, 1.0)


def target_std(op_name: str, params: Mapping[str, Any]) -> float:
    """The standard deviation an init op aims for: its ``std`` output (API.md 1.4)."""
    if op_name in ("zeros", "constant"):
        return 0.0
    if op_name in ("normal", "trunc_normal"):
        return float(params["std"])
    if op_name == "uniform":
        return (float(params["high"]) - float(params["low"])) / math.sqrt(12.0)
    shape = tuple(params["shape"])
    if op_name in ("xavier_normal", "xavier_uniform"):
        return float(params["gain"]) * math.sqrt(1.0 / fan_for_mode(shape, params["mode"]))
    if op_name in ("kaiming_normal", "kaiming_uniform"):
        gain = nonlinearity_gain(params["nonlinearity"], params["negative_slope"])
        return gain / math.sqrt(fan_for_mode(shape, params["mode"]))
    if op_name == "orthogonal":
        return float(params["gain"]) / math.sqrt(fans(shape)[0])
    raise KeyError(f"no target std for op {op_name!r}")


def uniform_range(op_name: str, params: Mapping[str, Any]) -> tuple[float, float] | None:
    """The [low, high] a uniform-family op draws from, or None for other ops."""
    if op_name == "uniform":
        return float(params["low"]), float(params["high"])
    if op_name in ("xavier_uniform", "kaiming_uniform"):
        bound = math.sqrt(3.0) * target_std(op_name, params)
        return -bound, bound
    return None


def range_in_dtype(low: float, high: float, dtype: torch.dtype) -> tuple[float, float]:
    """The smallest value of ``dtype`` at least ``low`` and the largest below ``high``:
    the half-open [low, high) as dtype can hold it (lo > hi when it holds none)."""
    lo = torch.tensor(low, dtype=dtype)
    if lo.item() < low:
        lo = torch.nextafter(lo, torch.tensor(math.inf, dtype=dtype))
    hi = torch.tensor(high, dtype=dtype)
    if hi.item() >= high:
        hi = torch.nextafter(hi, torch.tensor(-math.inf, dtype=dtype))
    return lo.item(), hi.item()


# ---------------------------------------------------------------- checker


def _check_shape(op_name: str, raw: Any) -> tuple[int, ...]:
    if raw is None:
        raise InvalidInput("shape: required (a list of non-negative integers)")
    if not isinstance(raw, (list, tuple)):
        raise InvalidInput(f"shape: expected a list of non-negative integers, got {raw!r}")
    for i, dim in enumerate(raw):
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise InvalidInput(f"shape: dim {i} is {dim!r}; dims must be non-negative integers")
        if dim < 0:
            raise InvalidInput(f"shape: dim {i} is {dim}; dims must be non-negative integers")
    shape = tuple(raw)
    if math.prod(shape) > _MAX_ELEMENTS:
        raise InvalidInput(f"shape: {list(shape)} has too many elements")
    if op_name in _FAN_OPS:
        if len(shape) < 2:
            raise InvalidInput(
                f"shape: {op_name} needs at least 2 dims ([fan_out, fan_in, *kernel]), got {list(shape)}"
            )
        if 0 in shape:
            raise InvalidInput(
                f"shape: dim {shape.index(0)} is 0 in {list(shape)}; {op_name} needs "
                "non-zero dims (a fan of 0 has no defined std)"
            )
    return shape


def _check_seed(seed: Any) -> None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"seed: {seed} is outside [0, 2**64 - 1]")


def _fits(value: float, dtype: torch.dtype) -> bool:
    """Whether value rounds to a finite number of dtype."""
    return math.isfinite(value) and bool(torch.tensor(value, dtype=dtype).isfinite())


def _check_values(op_name: str, params: Mapping[str, Any], dtype: torch.dtype) -> None:
    names = _VALUE_PARAMS[op_name]
    for name in names:
        if not _fits(float(params[name]), dtype):
            raise InvalidInput(
                f"{name}: {params[name]} overflows {params['dtype']} (largest finite "
                f"{torch.finfo(dtype).max:g})"
            )
    if op_name in _ORDERED:
        lo, hi = _ORDERED[op_name]
        if not params[lo] < params[hi]:
            raise InvalidInput(
                f"{lo}, {hi}: {lo} must be less than {hi} (got {lo}={params[lo]}, {hi}={params[hi]})"
            )
    if op_name == "trunc_normal":
        _check_trunc_distance(params)
    blame = ", ".join(names) or "shape"
    span = uniform_range(op_name, params)
    # torch's uniform_ refuses a range wider than the largest finite value it draws in.
    if span is not None and not span[1] - span[0] <= torch.finfo(compute_dtype(dtype)).max:
        raise InvalidInput(
            f"{blame}: the uniform range [{span[0]:g}, {span[1]:g}] is wider than the "
            f"largest finite {compute_dtype(dtype)} value"
        )
    if not _fits(target_std(op_name, params), dtype):
        raise InvalidInput(f"{blame}: the target std overflows {params['dtype']}")
    if op_name in _NORMAL_OPS:
        # A normal draw is unbounded: std 60,000 in float16 (largest 65,504) answered
        # inf for about one element in three. Refuse a distribution whose mean plus
        # NORMAL_MAX_STDS std (a draw past it: about 1 in 1e23) does not fit the dtype.
        mean = float(params.get("mean", 0.0))
        reach = abs(mean) + NORMAL_MAX_STDS * target_std(op_name, params)
        if not reach <= torch.finfo(dtype).max:
            raise InvalidInput(
                f"{blame}: N({mean:g}, {target_std(op_name, params):g}^2) reaches past the largest "
                f"finite {params['dtype']} ({torch.finfo(dtype).max:g}) within {NORMAL_MAX_STDS:g} std; "
                "its draws would overflow to inf"
            )
    if span is not None and compute_dtype(dtype) != dtype:
        # Drawn in float32 and rounded to dtype (see _draw): the range must fit dtype and
        # hold at least one of its values, or the answer would be inf or outside it.
        if not (_fits(span[0], dtype) and _fits(span[1], dtype)):
            raise InvalidInput(
                f"{blame}: the uniform range [{span[0]:g}, {span[1]:g}] overflows {params['dtype']}"
            )
        first, last = range_in_dtype(span[0], span[1], dtype)
        if first > last:
            raise InvalidInput(
                f"{blame}: the uniform range [{span[0]:g}, {span[1]:g}) holds no {params['dtype']} value"
            )


def _check_trunc_distance(params: Mapping[str, Any]) -> None:
    mean, std, a, b = params["mean"], params["std"], params["a"], params["b"]
    outside = max(a - mean, mean - b, 0.0)
    if outside > 0 and (std == 0 or outside / std > TRUNC_MAX_STDS):
        raise InvalidInput(
            f"mean: {mean} lies more than {TRUNC_MAX_STDS:g} std ({std}) outside [a, b] = "
            f"[{a}, {b}]; that truncated normal is numerically degenerate"
        )


def make_checker(op_name: str) -> Checker:
    def check(tensors: dict[str, torch.Tensor], params: Mapping[str, Any]) -> None:
        _check_shape(op_name, params.get("shape"))
        _check_seed(params.get("seed"))
        _check_values(op_name, params, DTYPES[params["dtype"]])

    return check
