"""The lab (API.md section 6): the lecture's activation-statistics experiment as an op.

Flow position: declared in the registry like any op, so it reaches the catalog, /docs,
V2 metadata, validation and the clients unchanged; the engine refuses it over the
``lab_max_work`` setting (its ``Work``), the batcher runs it alone (``solo``) and the
executor runs it on its device thread, never inline. ``activation_stats`` builds a deep
fully connected net (no bias) and reports, per layer, the statistics of its activations
and of the gradients of its weights.

It computes nothing of its own beyond matmuls and statistics: each weight is drawn by
the init op's own kernel (ops/init.py) and each activation and its backward are the
activation op's own kernel (ops/pointwise_activations.py, found through
activations.SPECS), called with the same ``Batch`` the executor would build, so the lab
shows exactly what those ops serve.

Randomness: one ``numpy.random.SeedSequence(seed)`` gives depth + 1 independent 63-bit
seeds: the first seeds a generator on the device for the input and the upstream
gradient, the others are the ``seed`` params of each layer's init draw (layer l's
weight is what ``POST /v1/init/<init>`` answers with that seed and shape [width,
width]). SeedSequence's outputs are prefix-stable, so a deeper net with the same seed
starts with the same layers. Same params and device kind: same bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gradserve.errors import InvalidInput
from gradserve.ops import activations, init
from gradserve.ops.registry import (
    DEVICE_PARAM,
    Batch,
    OpSpec,
    Outputs,
    OutputSpec,
    Params,
    ParamSpec,
    Work,
)

Tensor = torch.Tensor

# API.md 6: the 1.1 activations that take no extra tensor input.
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "softplus", "mish")
# API.md 6: every 1.4 init except the two that give no random weights.
INITS = tuple(s.name for s in init.SPECS if s.name not in ("zeros", "constant"))
# The fraction of |a| > SATURATION counted as saturated (tanh's flat tails).
SATURATION = 0.99
INT63 = 2**63 - 1

_ACTIVATION_SPECS = {s.name: s for s in activations.SPECS if s.name in ACTIVATIONS}
_INIT_SPECS = {s.name: s for s in init.SPECS if s.name in INITS}
# Params every init op has, which the lab sets itself rather than taking from clients.
_INIT_OWN = frozenset({"shape", "dtype", "seed"})


def _init_param_specs() -> tuple[ParamSpec, ...]:
    """The init ops' own params (std, mean, mode, gain, ...), each declared once with the
    type, choices and bounds its init op gives it, but no default: when absent the
    chosen init's own default applies (mode is fan_avg for xavier, fan_in for kaiming)."""
    takers: dict[str, list[str]] = {}
    first: dict[str, ParamSpec] = {}
    for spec in _INIT_SPECS.values():
        for p in spec.params:
            if p.name not in _INIT_OWN:
                first.setdefault(p.name, p)
                takers.setdefault(p.name, []).append(spec.name)
    return tuple(
        dataclasses.replace(
            p,
            default=None,
            nullable=True,
            doc=f"{p.doc}; taken by init {', '.join(takers[p.name])} (absent: that init's default)",
        )
        for p in first.values()
    )


INIT_PARAMS = _init_param_specs()
_INIT_PARAM_NAMES = tuple(p.name for p in INIT_PARAMS)

PARAMS = (
    ParamSpec("depth", "int", 10, "number of fully connected layers", ge=1, le=100),
    ParamSpec("width", "int", 500, "units per layer (each weight is [width, width])", ge=1, le=4096),
    ParamSpec("batch", "int", 1000, "rows of the unit-Gaussian input [batch, width]", ge=1, le=16384),
    ParamSpec(
        "activation",
        "str",
        "tanh",
        "activation after each layer, with its 1.1 defaults (leaky_relu slope 0.01, elu alpha 1, "
        'gelu approximate "none", softplus beta 1)',
        choices=ACTIVATIONS,
    ),
    ParamSpec("init", "str", "normal", "init op that draws every weight", choices=INITS),
    *INIT_PARAMS,
    ParamSpec(
        "seed",
        "int",
        0,
        "seed of the input, the weights and the upstream gradient: the same params and device "
        "kind give the same bytes",
        ge=0,
    ),
    ParamSpec("bins", "int", 50, "histogram bins per layer", ge=1, le=1000),
)

_PER_LAYER = "[depth], one value per layer, layer 1 first"
OUTPUTS = (
    OutputSpec("mean", f"mean of the layer's activations {_PER_LAYER}", rank=1),
    OutputSpec("std", f"standard deviation (population) of the activations {_PER_LAYER}", rank=1),
    OutputSpec("saturated", f"fraction of activations with |a| > {SATURATION} {_PER_LAYER}", rank=1),
    OutputSpec("dead", f"fraction of activations exactly 0 {_PER_LAYER}", rank=1),
    OutputSpec(
        "hist",
        "[depth, bins] int64 counts of each layer's finite activations over its edges",
        rank=2,
        dtype="int64",
    ),
    OutputSpec("edges", "[depth, bins + 1] histogram edges: each layer's own min..max", rank=2),
    OutputSpec(
        "grad_std",
        "standard deviation (population) of the gradient wrt each layer's weight, for a "
        f"unit-Gaussian upstream gradient at the last layer {_PER_LAYER}",
        rank=1,
    ),
)
_STAT_NAMES = ("mean", "std", "saturated", "dead")
OUTPUT_NAMES = frozenset(o.name for o in OUTPUTS)


# ---------------------------------------------------------------- params


def init_params(params: Params) -> dict[str, Any]:
    """The chosen init op's params: the client's values over the init's own defaults
    (shape, dtype and seed are set per layer by ``draw``)."""
    spec = _INIT_SPECS[params["init"]]
    out = {p.name: p.default for p in spec.params if p.name not in _INIT_OWN}
    out.update({name: params[name] for name in out if params.get(name) is not None})
    return out


def _check(tensors: dict[str, Tensor], params: Params) -> None:
    chosen = params["init"]
    spec = _INIT_SPECS[chosen]
    for name in _INIT_PARAM_NAMES:
        if params.get(name) is not None and name not in spec.param_index:
            takes = [p.name for p in spec.params if p.name not in _INIT_OWN]
            raise InvalidInput(
                f"param {name!r}: init {chosen!r} does not take it; its params are "
                f"{', '.join(map(repr, takes)) or 'none'}",
                code="bad_param",
            )
    # The init op's own checker: low < high, trunc_normal's distance, float32 overflow.
    width = params["width"]
    assert spec.check is not None
    spec.check({}, {**init_params(params), "shape": (width, width), "dtype": "float32", "seed": 0})


def work(params: Mapping[str, Any]) -> int:
    """Multiply-adds of the forward pass (the backward costs about twice that)."""
    return int(params["depth"]) * int(params["width"]) ** 2 * int(params["batch"])


# ---------------------------------------------------------------- the experiment


def layer_seeds(seed: int, depth: int) -> list[int]:
    """[data seed, layer 1's init seed, ..., layer depth's]: independent seeds, kept to 63
    bits so that each is a valid ``seed`` param of the init ops (an int64)."""
    words = np.random.SeedSequence(seed).generate_state(depth + 1, np.uint64)
    return [int(w) & INT63 for w in words]


def draw(params: Params, device: torch.device) -> tuple[Tensor, list[Tensor], Tensor]:
    """The input [batch, width], the weights [width, width] of each layer and the
    upstream gradient [batch, width], float32 on ``device``."""
    depth, width, batch = params["depth"], params["width"], params["batch"]
    seeds = layer_seeds(params["seed"], depth)
    generator = torch.Generator(device=device)
    generator.manual_seed(seeds[0])
    x = torch.randn((batch, width), generator=generator, device=device)
    upstream = torch.randn((batch, width), generator=generator, device=device)
    spec = _INIT_SPECS[params["init"]]
    base = {**init_params(params), "shape": (width, width), "dtype": "float32", DEVICE_PARAM: str(device)}
    weights = []
    for seed in seeds[1:]:
        [out] = spec.run(Batch({}, {**base, "seed": seed}, frozenset({"weight"}), (1,)))
        weights.append(out["weight"])
    return x, weights, upstream


def _activation(name: str) -> tuple[OpSpec, dict[str, Any]]:
    spec = _ACTIVATION_SPECS[name]
    return spec, {p.name: p.default for p in spec.params}


def _forward(spec: OpSpec, params: Params, z: Tensor) -> Tensor:
    [out] = spec.run(Batch({"x": z}, params, frozenset({"y"}), (z.shape[0],)))
    return out["y"]


def _backward(spec: OpSpec, params: Params, z: Tensor, grad_y: Tensor) -> Tensor:
    [out] = spec.run(Batch({"x": z, "grad_y": grad_y}, params, frozenset({"grad_x"}), (z.shape[0],)))
    return out["grad_x"]


def _histogram(a: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Counts [bins] (int64) of a's finite values over bins equal bins from their min to
    their max, and the edges [bins + 1] (float64). Computed without reading a value back
    to the host, so a CUDA run does not stop at every layer."""
    flat = a.reshape(-1).to(torch.float64)
    finite = torch.isfinite(flat)
    inf = torch.tensor(torch.inf, dtype=torch.float64, device=a.device)
    lo = torch.where(finite, flat, inf).amin()
    hi = torch.where(finite, flat, -inf).amax()
    # No finite value at all, or a single value: a unit-wide range around it, as numpy.
    lo, hi = torch.where(finite.any(), lo, 0.0), torch.where(finite.any(), hi, 0.0)
    flat_range = lo == hi
    lo, hi = torch.where(flat_range, lo - 0.5, lo), torch.where(flat_range, hi + 0.5, hi)
    position = ((flat - lo) * (bins / (hi - lo))).floor().clamp_(0, bins - 1)
    # Non-finite values land in an extra bin, dropped below.
    index = torch.where(finite, position, float(bins)).to(torch.int64)
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=a.device)
    counts.index_add_(0, index, torch.ones_like(index))
    steps = torch.arange(bins + 1, dtype=torch.float64, device=a.device) / bins
    return counts[:bins], lo + (hi - lo) * steps


def statistics(
    x: Tensor,
    weights: Sequence[Tensor],
    upstream: Tensor,
    activation: str,
    bins: int,
    want: frozenset[str] = OUTPUT_NAMES,
) -> dict[str, Tensor]:
    """Run x through a_l = act(a_{l-1} W_l^T), then ``upstream`` back through the net.

    Statistics are reduced in float64 and returned in x's dtype (hist: int64). The
    gradient of layer l's weight is dz_l^T a_{l-1}, where dz_l is the activation's
    backward of the gradient reaching layer l's output.
    """
    spec, act_params = _activation(activation)
    need_backward = "grad_std" in want
    stats: dict[str, list[Tensor]] = {name: [] for name in (*_STAT_NAMES, "hist", "edges", "grad_std")}
    # What the backward pass keeps: each layer's pre-activation z_l. Its input a_{l-1}
    # = act(z_{l-1}) is recomputed there (an elementwise op, bitwise the same), so a
    # request holds one [batch, width] tensor per layer rather than two.
    pre: list[Tensor] = []
    a = x
    for w in weights:
        z = torch.mm(a, w.t())
        if need_backward:
            pre.append(z)
        a = _forward(spec, act_params, z)
        wide = a.to(torch.float64)
        stats["mean"].append(wide.mean())
        stats["std"].append(wide.std(correction=0))
        stats["saturated"].append((a.abs() > SATURATION).sum(dtype=torch.float64) / a.numel())
        stats["dead"].append((a == 0).sum(dtype=torch.float64) / a.numel())
        if "hist" in want or "edges" in want:
            counts, edges = _histogram(a, bins)
            stats["hist"].append(counts)
            stats["edges"].append(edges)
    if need_backward:
        grad = upstream
        for layer in reversed(range(len(weights))):
            # Popped, so each layer's tensors are freed as the pass goes down.
            z = pre.pop()
            a_in = _forward(spec, act_params, pre[-1]) if layer else x
            grad_z = _backward(spec, act_params, z, grad)
            grad_w = torch.mm(grad_z.t(), a_in)
            stats["grad_std"].append(grad_w.to(torch.float64).std(correction=0))
            if layer:
                grad = torch.mm(grad_z, weights[layer])
        stats["grad_std"].reverse()
    out: dict[str, Tensor] = {}
    for name in want:
        stacked = torch.stack(stats[name])
        out[name] = stacked if name == "hist" else stacked.to(x.dtype)
    return out


def _run(batch: Batch) -> Outputs:
    params = batch.params
    device = torch.device(params.get(DEVICE_PARAM, "cpu"))
    x, weights, upstream = draw(params, device)
    return [statistics(x, weights, upstream, params["activation"], params["bins"], batch.want)]


ACTIVATION_STATS = OpSpec(
    name="activation_stats",
    family="lab",
    kind="lab",
    doc="Weight initialization's classic experiment: a unit-Gaussian input [batch, width] through depth fully "
    "connected layers of width units (no bias), each followed by the activation, each weight "
    "drawn by the init op; then a unit-Gaussian upstream gradient back through the net. "
    "Per layer: the activations' mean, std, saturated and dead fractions and histogram, and "
    "the std of each weight's gradient. float32; solo; seeded.",
    inputs=(),
    params=PARAMS,
    outputs=OUTPUTS,
    grad_outputs=(),
    run=_run,
    batch_mode="solo",
    check=_check,
    work=Work(work, "depth * width^2 * batch"),
)

SPECS: tuple[OpSpec, ...] = (ACTIVATION_STATS,)
