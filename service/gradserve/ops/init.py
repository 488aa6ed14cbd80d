"""Weight initialization ops (API.md section 1.4): declarations, checkers and kernels.

Flow position: the executor calls these kernels through the batcher like any other op,
but init ops are ``solo``: a seeded draw must never depend on who shared its batch. They
have no tensor inputs: the weight's shape is the ``shape`` param, and the device comes
from the private ``__device__`` param that the engine injects (not a ParamSpec, so it is
never shown to or accepted from clients).

Draws use a fresh ``torch.Generator`` on that device, seeded from ``seed`` (a random seed
when it is absent), so the same seed, shape, params and device kind give the same bytes.
float64 is drawn in float64; float16/bfloat16 are drawn in float32 and rounded, so one
seed gives the float32 values rounded to the narrow dtype (trunc_normal alone draws in
float64 for every dtype; see its fill). Where torch.nn.init has the scheme, its code path
(and so its bytes) is used.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gradserve.errors import InvalidInput
from gradserve.ops.numerics import compute_dtype
from gradserve.ops.registry import DEVICE_PARAM, Batch, Checker, Kernel, OpSpec, OutputSpec, ParamSpec

# Injected by the engine: where the weight is drawn (e.g. "cpu", "cuda:0").

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

_Fill = Callable[[torch.Tensor, Mapping[str, Any], torch.Generator], None]


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


def _uniform_range(op_name: str, params: Mapping[str, Any]) -> tuple[float, float] | None:
    """The [low, high] a uniform-family op draws from, or None for other ops."""
    if op_name == "uniform":
        return float(params["low"]), float(params["high"])
    if op_name in ("xavier_uniform", "kaiming_uniform"):
        bound = math.sqrt(3.0) * target_std(op_name, params)
        return -bound, bound
    return None


def _range_in_dtype(low: float, high: float, dtype: torch.dtype) -> tuple[float, float]:
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
    span = _uniform_range(op_name, params)
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
        first, last = _range_in_dtype(span[0], span[1], dtype)
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


def _make_checker(op_name: str) -> Checker:
    def check(tensors: dict[str, torch.Tensor], params: Mapping[str, Any]) -> None:
        _check_shape(op_name, params.get("shape"))
        _check_seed(params.get("seed"))
        _check_values(op_name, params, DTYPES[params["dtype"]])

    return check


# ---------------------------------------------------------------- kernels


def _fill_zeros(w: torch.Tensor, p: Mapping[str, Any], g: torch.Generator) -> None:
    w.zero_()


def _fill_constant(w: torch.Tensor, p: Mapping[str, Any], g: torch.Generator) -> None:
    w.fill_(p["value"])


def _fill_normal(w: torch.Tensor, p: Mapping[str, Any], g: torch.Generator) -> None:
    torch.nn.init.normal_(w, p["mean"], p["std"], generator=g)


def _fill_uniform(w: torch.Tensor, p: Mapping[str, Any], g: torch.Generator) -> None:
    torch.nn.init.uniform_(w, p["low"], p["high"], generator=g)


def _fill_scaled_normal(op_name: str) -> _Fill:
    # torch's xavier_normal_/kaiming_normal_ are normal_(0, std) with this same std.
    def fill(w: torch.Tensor, p: Mapping[str, Any], g: torch.Generator) -> None:
        w.normal_(0.0, target_std(op_name, p), generator=g)

    return fill


def _fill_scaled_uniform(op_name: str) -> _Fill:
    # torch's xavier_uniform_/kaiming_uniform_ are uniform_(-bound, bound), bound = sqrt(3)*std.
    def fill(w: torch.Tensor, p: Mapping[str, Any], g: torch.Generator) -> None:
        bound = math.sqrt(3.0) * target_std(op_name, p)
        w.uniform_(-bound, bound, generator=g)

    return fill


def _fill_orthogonal(w: torch.Tensor, p: Mapping[str, Any], g: torch.Generator) -> None:
    torch.nn.init.orthogonal_(w, gain=p["gain"], generator=g)


def _norm_cdf(z: float) -> float:
    # erfc keeps full relative precision in the lower tail, where 1 + erf(z) cancels.
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _fill_trunc_normal(w: torch.Tensor, p: Mapping[str, Any], g: torch.Generator) -> None:
    """Inverse-CDF draw of N(mean, std^2) truncated to [a, b], in float64 for every dtype.

    torch's trunc_normal_ is a rejection sampler whose loop count grows without bound
    as mean moves away from [a, b]; a single inverse-CDF pass costs the same for any
    params. The interval is reflected into the lower tail (where the CDF is tiny but
    precise) and mapped back with torch.special.ndtri, so a tail like [10, 11] std
    draws near 10 instead of collapsing onto a bound.
    """
    mean, std, a, b = float(p["mean"]), float(p["std"]), float(p["a"]), float(p["b"])
    if std == 0.0:
        w.fill_(mean)  # the checker guarantees a <= mean <= b here
        return
    sign = -1.0 if a / 2 + b / 2 > mean else 1.0
    lo, hi = ((a - mean) / std, (b - mean) / std) if sign > 0 else ((mean - b) / std, (mean - a) / std)
    draw = torch.empty(w.shape, dtype=torch.float64, device=w.device)
    draw.uniform_(_norm_cdf(lo), _norm_cdf(hi), generator=g)
    torch.special.ndtri(draw, out=draw)
    draw.mul_(sign * std).add_(mean).clamp_(min=a, max=b)
    w.copy_(draw)


_FILLS: dict[str, _Fill] = {
    "zeros": _fill_zeros,
    "constant": _fill_constant,
    "normal": _fill_normal,
    "uniform": _fill_uniform,
    "xavier_normal": _fill_scaled_normal("xavier_normal"),
    "xavier_uniform": _fill_scaled_uniform("xavier_uniform"),
    "kaiming_normal": _fill_scaled_normal("kaiming_normal"),
    "kaiming_uniform": _fill_scaled_uniform("kaiming_uniform"),
    "orthogonal": _fill_orthogonal,
    "trunc_normal": _fill_trunc_normal,
}


def _draw(op_name: str, params: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    dtype = DTYPES[params["dtype"]]
    seed = params.get("seed")
    if seed is None:
        seed = secrets.randbits(64)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    weight = torch.empty(tuple(params["shape"]), dtype=compute_dtype(dtype), device=device)
    with torch.no_grad():
        _FILLS[op_name](weight, params, generator)
    out = weight.to(dtype)
    span = _uniform_range(op_name, params)
    if span is not None and out.dtype != weight.dtype:
        # Rounding a float32 draw to float16/bfloat16 can land on high itself (or past an
        # unrepresentable bound): keep the answer in [low, high) as torch's own draw does.
        out.clamp_(*_range_in_dtype(span[0], span[1], dtype))
    return out


def _make_kernel(op_name: str) -> Kernel:
    def run(batch: Batch) -> list[dict[str, torch.Tensor]]:
        params = batch.params
        device = torch.device(params.get(DEVICE_PARAM, "cpu"))
        out: dict[str, torch.Tensor] = {}
        if "weight" in batch.want:
            out["weight"] = _draw(op_name, params, device)
        if "std" in batch.want:
            std = target_std(op_name, params)
            out["std"] = torch.tensor(std, dtype=DTYPES[params["dtype"]], device=device)
        # Solo op: exactly one request per call.
        return [out]

    return run


# ---------------------------------------------------------------- declarations


def _float(name: str, default: float, doc: str, ge: float | None = None) -> ParamSpec:
    return ParamSpec(name, "float", default, doc, ge=ge)


_MODE_DOC = "fan used for the std: fan_in, fan_out or fan_avg = (fan_in + fan_out) / 2"
_GAIN = _float("gain", 1.0, "scale applied to the std (or to the orthogonal matrix)", ge=0.0)
_KAIMING = (
    ParamSpec("mode", "str", "fan_in", _MODE_DOC, choices=FAN_MODES),
    ParamSpec(
        "nonlinearity",
        "str",
        "relu",
        "the activation after this layer; sets the gain as torch.nn.init.calculate_gain",
        choices=NONLINEARITIES,
    ),
    _float("negative_slope", 0.01, "leaky_relu's negative slope (used for its gain)"),
)
_XAVIER = (ParamSpec("mode", "str", "fan_avg", _MODE_DOC, choices=FAN_MODES), _GAIN)

_OP_PARAMS: dict[str, tuple[str, tuple[ParamSpec, ...]]] = {
    "zeros": ("All zeros (target std 0).", ()),
    "constant": ("Every element equal to value (target std 0).", (_float("value", 0.0, "fill value"),)),
    "normal": (
        "Gaussian N(mean, std^2).",
        (_float("mean", 0.0, "mean"), _float("std", 1.0, "standard deviation", ge=0.0)),
    ),
    "uniform": (
        "Uniform on [low, high); std (high - low) / sqrt(12).",
        (_float("low", -1.0, "lower bound, < high"), _float("high", 1.0, "upper bound")),
    ),
    "xavier_normal": ("Glorot normal: std gain * sqrt(1 / fan).", _XAVIER),
    "xavier_uniform": ("Glorot uniform: bound sqrt(3) * gain * sqrt(1 / fan).", _XAVIER),
    "kaiming_normal": ("He normal: std gain / sqrt(fan); relu gives Var 2/fan.", _KAIMING),
    "kaiming_uniform": ("He uniform: bound sqrt(3) * gain / sqrt(fan).", _KAIMING),
    "orthogonal": (
        "(Semi-)orthogonal matrix of [shape[0], prod(shape[1:])] times gain, as "
        "torch.nn.init.orthogonal_; std output gain / sqrt(fan_in) as a guide.",
        (_GAIN,),
    ),
    "trunc_normal": (
        "Gaussian N(mean, std^2) truncated to the absolute bounds [a, b] (as "
        "torch.nn.init.trunc_normal_; mean at most 30 std outside [a, b]).",
        (
            _float("mean", 0.0, "mean"),
            _float("std", 1.0, "standard deviation before truncation", ge=0.0),
            _float("a", -2.0, "lower bound (absolute), < b"),
            _float("b", 2.0, "upper bound (absolute)"),
        ),
    ),
}

_SHAPE = ParamSpec("shape", "shape", None, "weight shape [fan_out, fan_in, *kernel] (required)")
_COMMON = (
    ParamSpec("dtype", "str", "float32", "dtype of weight and std", choices=tuple(DTYPES)),
    ParamSpec(
        "seed",
        "int",
        None,
        "seed: the same seed, shape, params and device kind give the same bytes; absent draws a fresh one",
        nullable=True,
        ge=0,
    ),
)
_OUTPUTS = (
    OutputSpec("weight", "the initialized weight, of the requested shape and dtype"),
    OutputSpec("std", "0-d: the standard deviation the scheme aims for", rank=0),
)


def _spec(op_name: str) -> OpSpec:
    doc, params = _OP_PARAMS[op_name]
    return OpSpec(
        name=op_name,
        family="init",
        kind="init",
        doc=doc,
        inputs=(),
        params=(_SHAPE, *params, *_COMMON),
        outputs=_OUTPUTS,
        grad_outputs=(),
        run=_make_kernel(op_name),
        batch_mode="solo",
        check=_make_checker(op_name),
    )


SPECS: tuple[OpSpec, ...] = tuple(_spec(name) for name in _OP_PARAMS)
