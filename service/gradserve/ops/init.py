"""Weight initialization ops (API.md section 1.4): declarations and kernels (their
checks, fans and target std are in ops/init_checks.py).

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

from gradserve.ops.init_checks import (
    DTYPES,
    FAN_MODES,
    NONLINEARITIES,
    fans,
    make_checker,
    range_in_dtype,
    target_std,
    uniform_range,
)
from gradserve.ops.numerics import compute_dtype
from gradserve.ops.registry import DEVICE_PARAM, Batch, Kernel, OpSpec, OutputSpec, ParamSpec

# SPECS for the registry and the lab; the rest re-exported for the tests.
__all__ = ["SPECS", "fans", "range_in_dtype", "target_std"]

_Fill = Callable[[torch.Tensor, Mapping[str, Any], torch.Generator], None]


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
    span = uniform_range(op_name, params)
    if span is not None and out.dtype != weight.dtype:
        # Rounding a float32 draw to float16/bfloat16 can land on high itself (or past an
        # unrepresentable bound): keep the answer in [low, high) as torch's own draw does.
        out.clamp_(*range_in_dtype(span[0], span[1], dtype))
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
        check=make_checker(op_name),
    )


SPECS: tuple[OpSpec, ...] = tuple(_spec(name) for name in _OP_PARAMS)
