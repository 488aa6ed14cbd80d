"""Cases: the valid requests the load sends (random ops, tensors and params), their
native REST bodies and answers, and the reference answers torch computes here to
check them against.
"""

from __future__ import annotations

import base64
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

ACTIVATIONS = (
    "relu", "sigmoid", "tanh", "leaky_relu", "elu", "gelu", "silu", "softplus", "softmax", "log_softmax",
)  # fmt: skip
LOSSES = ("mse", "l1", "huber", "smooth_l1", "bce_with_logits", "cross_entropy", "hinge")
INITS = ("kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "normal", "uniform")
Array = NDArray[Any]


@dataclass
class Case:
    """One valid request: op, input tensors, params and the outputs to compare."""

    family: str  # activations | losses | init
    op: str
    inputs: dict[str, Array]
    params: dict[str, Any]
    want: list[str]
    grad: bool


def make_case(rng: random.Random, family: str) -> Case:
    """A random valid request of ``family``: mostly small tensors (a few rows), now and
    then one large enough to leave the event loop for the compute thread."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    if family == "init":
        op = rng.choice(INITS)
        shape = [rng.randint(2, 96), rng.randint(2, 96)]
        params: dict[str, Any] = {"shape": shape, "seed": rng.getrandbits(31)}
        if op.startswith("kaiming"):
            params["mode"] = rng.choice(["fan_in", "fan_out"])
        elif op.startswith("xavier"):
            params["gain"] = rng.choice([1.0, 0.5, 2.0])
        elif op == "normal":
            params.update(mean=rng.uniform(-1, 1), std=rng.uniform(0.01, 2.0))
        else:
            low = rng.uniform(-2, 0)
            params.update(low=low, high=low + rng.uniform(0.1, 3.0))
        return Case(family, op, {}, params, ["weight", "std"], False)
    big = rng.random() < 0.03
    rows = rng.randint(64, 256) if big else rng.randint(1, 16)
    cols = rng.randint(128, 512) if big else rng.randint(2, 48)
    grad = rng.random() < 0.6
    if family == "activations":
        op = rng.choice(ACTIVATIONS)
        x = nrng.standard_normal((rows, cols), dtype=np.float32) * 3
        inputs: dict[str, Array] = {"x": x}
        params = {}
        if op == "leaky_relu":
            params["negative_slope"] = rng.choice([0.01, 0.1, 0.2])
        elif op == "elu":
            params["alpha"] = rng.choice([1.0, 0.5])
        elif op == "gelu":
            params["approximate"] = rng.choice(["none", "tanh"])
        elif op == "softplus":
            params["beta"] = rng.choice([1.0, 2.0])
        if grad and rng.random() < 0.3:
            inputs["grad_y"] = nrng.standard_normal((rows, cols), dtype=np.float32)
        return Case(family, op, inputs, params, ["y", "grad_x"] if grad else ["y"], grad)
    op = rng.choice(LOSSES)
    x = nrng.standard_normal((rows, cols), dtype=np.float32) * 2
    if op in ("cross_entropy", "hinge"):
        target: Array = nrng.integers(0, cols, size=rows, dtype=np.int64)
    elif op == "bce_with_logits":
        target = nrng.random((rows, cols), dtype=np.float32)
    else:
        target = nrng.standard_normal((rows, cols), dtype=np.float32)
    params = {"reduction": rng.choice(["mean", "sum", "none"])}
    if op == "huber":
        params["delta"] = rng.choice([1.0, 0.5])
    elif op == "smooth_l1":
        params["beta"] = rng.choice([1.0, 0.5])
    elif op == "cross_entropy":
        params["label_smoothing"] = rng.choice([0.0, 0.1])
    elif op == "hinge":
        params["margin"] = rng.choice([1.0, 0.5])
    return Case(
        family, op, {"input": x, "target": target}, params, ["loss", "grad_input"] if grad else ["loss"], grad
    )


def big_activation(rng: random.Random) -> Case:
    """An activation on 65,536 elements (the compute thread, a few ms): a client that
    gives up after a few ms often does so while it is queued or running."""
    case = make_case(rng, "activations")
    x = np.random.default_rng(rng.getrandbits(32)).standard_normal((256, 256), dtype=np.float32)
    # x alone: a grad_y drawn for the small x would no longer match it.
    return Case(case.family, case.op, {"x": x}, case.params, ["y"], False)


def _activation(op: str, x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    if op == "relu":
        return F.relu(x)
    if op == "sigmoid":
        return torch.sigmoid(x)
    if op == "tanh":
        return torch.tanh(x)
    if op == "leaky_relu":
        return F.leaky_relu(x, p["negative_slope"])
    if op == "elu":
        return F.elu(x, p["alpha"])
    if op == "gelu":
        return F.gelu(x, approximate=p["approximate"])
    if op == "silu":
        return F.silu(x)
    if op == "softplus":
        return F.softplus(x, beta=p["beta"])
    if op == "softmax":
        return F.softmax(x, dim=-1)
    if op == "log_softmax":
        return F.log_softmax(x, dim=-1)
    raise KeyError(op)


def _loss(op: str, x: torch.Tensor, t: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    r = p["reduction"]
    if op == "mse":
        return F.mse_loss(x, t, reduction=r)
    if op == "l1":
        return F.l1_loss(x, t, reduction=r)
    if op == "huber":
        return F.huber_loss(x, t, reduction=r, delta=p["delta"])
    if op == "smooth_l1":
        return F.smooth_l1_loss(x, t, reduction=r, beta=p["beta"])
    if op == "bce_with_logits":
        return F.binary_cross_entropy_with_logits(x, t, reduction=r)
    if op == "cross_entropy":
        return F.cross_entropy(x, t, reduction=r, label_smoothing=p["label_smoothing"])
    if op == "hinge":
        # The lecture's multiclass SVM loss: sum over k != y of max(0, s_k - s_y + margin).
        correct = x.gather(1, t.unsqueeze(1))
        terms = torch.relu(x - correct + p["margin"])
        per = terms.masked_fill(F.one_hot(t, x.shape[1]).bool(), 0).sum(dim=1)
        return per if r == "none" else per.sum() if r == "sum" else per.mean()
    raise KeyError(op)


def _init_std(op: str, shape: Sequence[int], p: dict[str, Any]) -> float:
    fan_in, fan_out = shape[1], shape[0]  # 2-D shapes only here
    if op == "normal":
        return float(p["std"])
    if op == "uniform":
        return float(p["high"] - p["low"]) / math.sqrt(12.0)
    if op.startswith("xavier"):
        return float(p["gain"]) * math.sqrt(2.0 / (fan_in + fan_out))
    fan = fan_in if p["mode"] == "fan_in" else fan_out
    return math.sqrt(2.0) / math.sqrt(fan)  # kaiming, nonlinearity relu


def reference(case: Case) -> dict[str, Array]:
    """The expected outputs, computed here with torch on the CPU in float32."""
    p = case.params
    if case.family == "init":
        shape = p["shape"]
        std = _init_std(case.op, shape, p)
        # The server draws from a fresh CPU generator seeded with ``seed`` (ops/init.py).
        g = torch.Generator().manual_seed(p["seed"])
        w = torch.empty(shape, dtype=torch.float32)
        if case.op == "normal":
            w.normal_(p["mean"], std, generator=g)
        elif case.op == "uniform":
            w.uniform_(p["low"], p["high"], generator=g)
        elif case.op.endswith("normal"):
            w.normal_(0.0, std, generator=g)
        else:
            bound = math.sqrt(3.0) * std
            w.uniform_(-bound, bound, generator=g)
        return {"weight": w.numpy(), "std": np.asarray(std, dtype=np.float32)}
    if case.family == "activations":
        x = torch.from_numpy(case.inputs["x"]).requires_grad_(case.grad)
        y = _activation(case.op, x, p)
        out = {"y": y.detach().numpy()}
        if case.grad:
            gy = case.inputs.get("grad_y")
            torch.autograd.backward(y, torch.from_numpy(gy) if gy is not None else torch.ones_like(y))
            assert x.grad is not None
            out["grad_x"] = x.grad.numpy()
        return out
    x = torch.from_numpy(case.inputs["input"]).requires_grad_(case.grad)
    loss = _loss(case.op, x, torch.from_numpy(case.inputs["target"]), p)
    out = {"loss": loss.detach().numpy()}
    if case.grad:
        torch.autograd.backward(loss, torch.ones_like(loss))
        assert x.grad is not None
        out["grad_input"] = x.grad.numpy()
    return out


def compare(case: Case, got: dict[str, Array]) -> str | None:
    """None when ``got`` matches the reference, else what differs.

    Seeded init draws from the same CPU generator, so its weight must be identical. The
    other ops are float32 on both sides, but the server runs every element through
    torch's vectorized kernels (it pads to 64 elements, docs/architecture.md) where
    torch here may take the scalar tail, and it reduces in its own order; gradients such
    as gelu-tanh's cancel terms, so a few ulp of an O(1) term can be 1e-6 absolute on a
    small result. rtol 1e-4 / atol 1e-5 allows that and still catches what a soak
    looks for: answers mixed between requests, lost rows, wrong params (errors O(1)).
    """
    want = reference(case)
    for name in case.want:
        if name not in got:
            return f"output {name!r} missing (got {sorted(got)})"
        g, w = np.asarray(got[name]).astype(np.float64), want[name].astype(np.float64)
        if g.shape != w.shape:
            return f"{name}: shape {list(g.shape)} != {list(w.shape)}"
        exact = case.family == "init" and name == "weight"
        if not (np.array_equal(g, w) if exact else np.allclose(g, w, rtol=1e-4, atol=1e-5)):
            err = float(np.max(np.abs(g - w))) if g.size else 0.0
            return f"{name}: max abs error {err:.3g}" + (" (must be identical)" if exact else "")
    return None


def _tensor_json(a: Array, b64: bool) -> Any:
    if b64:
        return {"dtype": str(a.dtype), "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}
    return a.tolist()


def native_body(case: Case, b64: bool) -> bytes:
    body: dict[str, Any] = {k: _tensor_json(v, b64) for k, v in case.inputs.items()}
    body.update(case.params)
    if case.grad:
        body["grad"] = True
    return orjson.dumps(body)


def decode_native(payload: bytes) -> dict[str, Array]:
    answer = orjson.loads(payload)
    dtypes = {"float32": np.float32, "float64": np.float64, "int64": np.int64}
    return {
        k: np.asarray(v["data"], dtype=dtypes.get(v["dtype"], np.float64)).reshape(v["shape"])
        for k, v in answer.items()
    }
