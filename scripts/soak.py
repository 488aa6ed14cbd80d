#!/usr/bin/env python3
"""Soak: minutes of mixed load with faults against a real `gradserve serve` (issue 8, item 4).

Starts `python -m gradserve serve` on free 127.0.0.1 ports, samples it idle for a
baseline, then runs closed-loop workers for ``--duration-s`` over every transport:

- native REST ``/v1`` (activations and losses with gradients, init; JSON lists or b64),
- V2 REST JSON and binary (the SDK's ``AsyncClient``), gRPC ModelInfer (``AsyncGrpcClient``),

with faults mixed in at ``--fault-rate``: clients that disconnect mid-body (raw sockets,
a plain close or a reset) or send a whole request and leave, HTTP requests whose client
times out, gRPC calls cancelled or given a deadline too short to meet, oversize bodies
(a Content-Length over the limit: 413; a shape over the element cap: 413 /
RESOURCE_EXHAUSTED) and fuzzed bodies (random bytes, truncated JSON, lying binary
headers, undecodable gRPC messages: 400/422 / INVALID_ARGUMENT).

A sample of the valid answers (``--check-fraction``) is compared with torch computed
here (seeded inits bit for bit on the CPU). Every second a thread samples the server's
RSS and threads (/proc/<pid>/status), its open descriptors (/proc/<pid>/fd), its queue
depth (nv_inference_pending_request_count summed over /metrics) and the client-side
latency of the window. After the load the clients close and sampling goes on for
``--settle-s``: memory and descriptors should come back near their baseline.

Writes soak.csv, soak.png (matplotlib, Agg), soak-summary.txt and server.log into
``--out-dir`` and prints the summary; exits 1 on any 5xx, wrong answer, unexpected
status or growth verdict. Loads 127.0.0.1 only and stops by itself.

    .venv/bin/python scripts/soak.py --duration-s 60 --out-dir /tmp/soak [-- serve flags]

Not a CI test: ``tests/unit/test_soak_script.py`` checks its pure helpers only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import gzip
import math
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from gradserve_client import AsyncClient, AsyncGrpcClient, GradserveError, Outputs, RetryPolicy

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024

# The server's defaults (config.py): the oversize faults declare one byte more.
MAX_BODY_BYTES = 64 * MiB
MAX_TENSOR_ELEMENTS = 16 * MiB
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

TRANSPORTS = ("native", "v2-json", "v2-binary", "grpc")
FAULT_KINDS = ("disconnect", "timeout", "cancel", "oversize", "fuzz")

# What each kind of request may answer. A valid request must succeed; a fault may get
# the documented refusal, or (for timeouts and cancels) no answer by the client's doing.
# Anything else, and every 5xx / INTERNAL / UNKNOWN, is a failure.
EXPECTED: dict[str, frozenset[str]] = {
    "valid": frozenset({"200", "OK"}),
    "disconnect": frozenset({"closed"}),
    "timeout": frozenset({"200", "client-timeout"}),
    "cancel": frozenset({"OK", "client-cancel", "DEADLINE_EXCEEDED"}),
    "oversize": frozenset({"413", "RESOURCE_EXHAUSTED"}),
    "fuzz": frozenset({"400", "413", "422", "INVALID_ARGUMENT"}),
}

# Growth verdict: after the settle, RSS within max(abs, frac * baseline) of the idle
# baseline, no steady RSS climb in the second half of the load (a leak of ~1 KiB per
# request at a few hundred req/s climbs ~20 MiB/min), descriptors back within a few.
RSS_TOLERANCE_MIB = 64.0
RSS_TOLERANCE_FRAC = 0.10
RSS_SLOPE_LIMIT_MIB_PER_MIN = 2.0
FD_TOLERANCE = 4


# ---------------------------------------------------------------- pure helpers (tested)


def parse_pending(metrics_text: str, name: str = "nv_inference_pending_request_count") -> float:
    """Sum every sample of the gauge ``name`` in a Prometheus text exposition."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        # Another metric whose name starts with ``name`` (e.g. a _created series).
        if rest[:1] not in ("{", " "):
            continue
        value = rest.rsplit("}", 1)[-1].split()
        if value:
            total += float(value[0])
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100, linear interpolation); NaN when there are no values."""
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def status_class(code: str) -> str:
    """An outcome code -> its class: "2xx", "4xx", "5xx" (HTTP statuses and gRPC codes
    alike), or "none" when no answer came by the client's doing."""
    if code.isdigit():
        return f"{code[0]}xx"
    if code == "OK":
        return "2xx"
    if code in ("INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"):
        return "4xx"
    if code in ("closed", "client-timeout", "client-cancel"):
        return "none"
    # UNKNOWN, INTERNAL, UNAVAILABLE, CANCELLED by the server, transport errors.
    return "5xx"


def is_failure(kind: str, code: str) -> bool:
    """Whether an outcome is a failure: a 5xx-class code or one not expected for its kind."""
    return status_class(code) == "5xx" or code not in EXPECTED[kind]


@dataclass
class Sample:
    """One second of the server and of the clients."""

    t_s: float
    phase: str  # baseline | load | after
    rss_mib: float
    fds: int
    threads: int
    pending: float
    completed: int
    p50_ms: float
    p99_ms: float
    p99_by_transport: dict[str, float] = field(default_factory=dict)
    failures: int = 0
    # Size of the /metrics text: a label set that grows with requests (an op name or a
    # reason taken from the client) would be a leak that shows here first.
    metrics_kib: float = math.nan


@dataclass
class Growth:
    """RSS and descriptors at baseline, peak and after the settle, and the verdict."""

    rss_baseline_mib: float
    rss_peak_mib: float
    rss_after_mib: float
    rss_slope_mib_per_min: float
    fds_baseline: int
    fds_peak: int
    fds_after: int
    ok: bool
    reasons: list[str]


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64))) if values else math.nan


def growth_verdict(
    samples: Sequence[Sample],
    *,
    rss_tolerance_mib: float = RSS_TOLERANCE_MIB,
    rss_tolerance_frac: float = RSS_TOLERANCE_FRAC,
    slope_limit_mib_per_min: float = RSS_SLOPE_LIMIT_MIB_PER_MIN,
    fd_tolerance: int = FD_TOLERANCE,
) -> Growth:
    """Judge growth from the samples: baseline is the median of the idle samples before
    the load, after the median of the last five samples of the settle (one sample is
    noisy: a collection or a trim may land on it), the slope a least-squares fit of RSS
    over the second half of the load."""
    base = [s for s in samples if s.phase == "baseline"]
    load = [s for s in samples if s.phase == "load"]
    after = [s for s in samples if s.phase == "after"][-5:]
    if not base or not load or not after:
        raise ValueError("need baseline, load and after samples")
    rss_base = _median([s.rss_mib for s in base])
    rss_after = _median([s.rss_mib for s in after])
    rss_peak = max(s.rss_mib for s in samples)
    fds_base = round(_median([s.fds for s in base]))
    fds_after = round(_median([s.fds for s in after]))
    fds_peak = max(s.fds for s in samples)
    half = load[len(load) // 2 :]
    slope = 0.0
    if len(half) >= 2 and half[-1].t_s > half[0].t_s:
        t = np.asarray([s.t_s for s in half]) / 60.0
        slope = float(np.polyfit(t, np.asarray([s.rss_mib for s in half]), 1)[0])
    reasons = []
    allowed = max(rss_tolerance_mib, rss_tolerance_frac * rss_base)
    if rss_after - rss_base > allowed:
        reasons.append(
            f"RSS after the settle is {rss_after - rss_base:+.1f} MiB over its baseline (allowed {allowed:.0f})"
        )
    if slope > slope_limit_mib_per_min:
        reasons.append(
            f"RSS climbs {slope:.2f} MiB/min over the second half of the load (limit {slope_limit_mib_per_min})"
        )
    if fds_after - fds_base > fd_tolerance:
        reasons.append(f"{fds_after - fds_base} descriptors more than at baseline (allowed {fd_tolerance})")
    return Growth(
        rss_base, rss_peak, rss_after, slope, fds_base, fds_peak, fds_after, ok=not reasons, reasons=reasons
    )


def _num(value: float, fmt: str = ".1f") -> str:
    return "-" if math.isnan(value) else format(value, fmt)


def render_summary(
    counts: Counter[tuple[str, str, str]],
    latencies: dict[str, list[float]],
    failures: Sequence[str],
    growth: Growth,
    wall_s: float,
    conditions: Sequence[str] = (),
) -> str:
    """The text summary: conditions, requests per transport, outcomes, latency, failures,
    RSS and descriptors, verdict. ``counts`` is keyed by (transport, kind, code)."""
    lines = ["# gradserve soak", *conditions, ""]
    lines.append("requests per transport (valid + faults; req/s over the load):")
    for transport in TRANSPORTS:
        valid = sum(n for (t, k, _), n in counts.items() if t == transport and k == "valid")
        faults = sum(n for (t, k, _), n in counts.items() if t == transport and k != "valid")
        rate = (valid + faults) / wall_s if wall_s > 0 else math.nan
        lat = latencies.get(transport, [])
        lines.append(
            f"  {transport:<10} {valid + faults:>8} ({valid} valid, {faults} faults)  {_num(rate)} req/s"
            f"  p50 {_num(percentile(lat, 50), '.2f')} ms  p99 {_num(percentile(lat, 99), '.2f')} ms"
        )
    total = sum(counts.values())
    lines.append(f"  {'all':<10} {total:>8}  {_num(total / wall_s if wall_s > 0 else math.nan)} req/s")
    lines.append("")
    lines.append("outcomes (transport, kind, code: count):")
    for (transport, kind, code), n in sorted(counts.items()):
        flag = "  FAILURE" if is_failure(kind, code) else ""
        lines.append(f"  {transport:<10} {kind:<10} {code:<20} {status_class(code):<4} {n:>8}{flag}")
    classes: Counter[str] = Counter()
    for (_, _, code), n in counts.items():
        classes[status_class(code)] += n
    lines.append("  by class: " + ", ".join(f"{c} {classes[c]}" for c in ("2xx", "4xx", "5xx", "none")))
    lines.append("")
    lines.append(f"failures (5xx, wrong answers, unexpected outcomes): {len(failures)}")
    lines.extend(f"  {f}" for f in failures[:30])
    if len(failures) > 30:
        lines.append(f"  ... and {len(failures) - 30} more")
    lines.append("")
    g = growth
    lines.append(
        f"RSS MiB: baseline {g.rss_baseline_mib:.1f}, peak {g.rss_peak_mib:.1f}, after {g.rss_after_mib:.1f}"
        f" ({g.rss_after_mib - g.rss_baseline_mib:+.1f}); second-half slope {g.rss_slope_mib_per_min:+.2f} MiB/min"
    )
    lines.append(f"fds: baseline {g.fds_baseline}, peak {g.fds_peak}, after {g.fds_after}")
    verdict = "no growth" if g.ok else "GROWTH: " + "; ".join(g.reasons)
    lines.append(f"growth verdict: {verdict}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_server(
    out_dir: Path,
    extra_args: Sequence[str],
    extra_env: dict[str, str] | None = None,
    ready_timeout_s: float = 120.0,
) -> Server:
    """Start `python -m gradserve serve` on free ports and wait for /readyz (the logic
    of tests/conftest.py's start_server, without importing pytest)."""
    http_port, grpc_port = free_port(), free_port()
    log_path = out_dir / "server.log"
    cmd = [
        sys.executable, "-m", "gradserve", "serve", "--host", "127.0.0.1",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service"), **(extra_env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    server = Server(proc, http_port, grpc_port, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=1.0).status_code == 200:
                return server
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"server not ready in {ready_timeout_s} s")


def read_proc(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, open descriptors, threads) of a process, from /proc."""
    rss_kib, threads = 0, 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss_kib / 1024.0, len(os.listdir(f"/proc/{pid}/fd")), threads


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/<pid>/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- requests and references

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


# ---------------------------------------------------------------- the load


@dataclass
class Tally:
    """Everything the workers record; the sampler thread swaps the window under the lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TRANSPORTS})
    window: list[tuple[str, float]] = field(default_factory=list)
    window_completed: int = 0
    failures: list[str] = field(default_factory=list)
    checked: int = 0
    t0: float = field(default_factory=time.monotonic)

    def record(self, transport: str, kind: str, code: str, latency_s: float | None, detail: str = "") -> None:
        with self.lock:
            self.counts[(transport, kind, code)] += 1
            self.window_completed += 1
            if latency_s is not None and kind == "valid" and code in ("200", "OK"):
                ms = latency_s * 1000.0
                self.latencies[transport].append(ms)
                self.window.append((transport, ms))
            if is_failure(kind, code):
                self.fail(f"{transport} {kind} -> {code} {detail}".rstrip())

    def fail(self, message: str) -> None:
        self.failures.append(f"t={time.monotonic() - self.t0:7.1f}s {message}")

    def take_window(self) -> tuple[list[tuple[str, float]], int, int]:
        with self.lock:
            window, completed = self.window, self.window_completed
            self.window, self.window_completed = [], 0
            return window, completed, len(self.failures)


def _error_code(exc: GradserveError) -> str:
    if exc.status is not None:
        return str(exc.status)
    if exc.grpc_code is not None:
        return str(exc.grpc_code)
    return type(exc).__name__


class Load:
    """The workers' shared clients and scenario table."""

    def __init__(self, server: Server, tally: Tally, args: argparse.Namespace) -> None:
        self.server = server
        self.tally = tally
        self.check_fraction: float = args.check_fraction
        no_retry = RetryPolicy(max_retries=0)  # count what the server answers, not what retries hide
        self.http = httpx.AsyncClient(base_url=server.url, timeout=20.0)
        self.v2_json = AsyncClient(server.url, binary=False, retry=no_retry, timeout_s=20.0)
        self.v2_binary = AsyncClient(server.url, binary=True, retry=no_retry, timeout_s=20.0)
        self.grpc = AsyncGrpcClient(server.grpc_target, retry=no_retry, timeout_s=20.0)
        self.raw_channel = grpc.aio.insecure_channel(server.grpc_target)
        self.raw_infer = self.raw_channel.unary_unary(MODEL_INFER)
        fault_each = args.fault_rate / 9
        # (weight, scenario); faults share --fault-rate, the rest is valid traffic.
        self.table: list[tuple[float, Callable[[random.Random], Any]]] = [
            (0.12, lambda r: self.valid_native(r, "activations")),
            (0.08, lambda r: self.valid_native(r, "losses")),
            (0.03, lambda r: self.valid_native(r, "init")),
            (0.23, lambda r: self.valid_sdk(r, "v2-json")),
            (0.23, lambda r: self.valid_sdk(r, "v2-binary")),
            (0.31, lambda r: self.valid_sdk(r, "grpc")),
            (fault_each * 2, self.disconnect),
            (fault_each, self.http_timeout),
            (fault_each * 2, self.grpc_cancel),
            (fault_each * 2, self.oversize),
            (fault_each * 2, self.fuzz),
        ]
        valid_total = sum(w for w, _ in self.table[:6])
        self.table[:6] = [(w / valid_total * (1 - args.fault_rate), s) for w, s in self.table[:6]]

    async def close(self) -> None:
        await self.http.aclose()
        await self.v2_json.aclose()
        await self.v2_binary.aclose()
        await self.grpc.aclose()
        await self.raw_channel.close()

    def _check(self, rng: random.Random, transport: str, case: Case, got: dict[str, Array]) -> None:
        if rng.random() >= self.check_fraction:
            return
        self.tally.checked += 1
        problem = compare(case, got)
        if problem is not None:
            self.tally.fail(f"{transport} WRONG ANSWER {case.op} {case.params}: {problem}")

    # -- valid traffic

    async def valid_native(self, rng: random.Random, family: str) -> None:
        case = make_case(rng, family)
        body = native_body(case, b64=rng.random() < 0.5)
        start = time.perf_counter()
        try:
            r = await self.http.post(f"/v1/{family}/{case.op}", content=body)
        except httpx.HTTPError as exc:
            self.tally.record("native", "valid", type(exc).__name__, None, case.op)
            return
        latency = time.perf_counter() - start
        self.tally.record("native", "valid", str(r.status_code), latency, f"{case.op}: {r.text[:200]}")
        if r.status_code == 200:
            self._check(rng, "native", case, decode_native(r.content))

    async def valid_sdk(self, rng: random.Random, transport: str) -> None:
        client: AsyncClient | AsyncGrpcClient = {
            "v2-json": self.v2_json,
            "v2-binary": self.v2_binary,
            "grpc": self.grpc,
        }[transport]
        case = make_case(rng, rng.choices(["activations", "losses", "init"], [0.45, 0.45, 0.1])[0])
        start = time.perf_counter()
        try:
            out: Outputs
            if case.family == "init":
                params = {k: v for k, v in case.params.items() if k != "shape"}
                out = await client.init(case.op, case.params["shape"], **params)
            else:
                out = await client.infer(case.op, case.inputs, case.params, outputs=case.want)
        except GradserveError as exc:
            self.tally.record(transport, "valid", _error_code(exc), None, f"{case.op}: {exc}")
            return
        self.tally.record(
            transport, "valid", "200" if transport != "grpc" else "OK", time.perf_counter() - start
        )
        self._check(rng, transport, case, dict(out))

    # -- faults

    async def _raw(self, data: bytes, *, read: bool, reset: bool = False, pause_s: float = 0.0) -> str:
        """Send bytes on a fresh connection; with ``read``, the answer's status code."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.http_port)
        try:
            writer.write(data)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
            if not read:
                return "closed"
            line = await asyncio.wait_for(reader.readline(), 15.0)
            parts = line.split()
            return parts[1].decode() if len(parts) >= 2 else "no-answer"
        except (TimeoutError, ConnectionError) as exc:
            return f"no-answer:{type(exc).__name__}"
        finally:
            if reset:
                # SO_LINGER 0: close with a RST, as a crashed or killed client does.
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    def _head(path: str, length: int, extra: str = "") -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n"
        ).encode()

    async def disconnect(self, rng: random.Random) -> None:
        """A client that leaves mid-body (closed or reset), or after a whole request
        without reading the answer."""
        case = make_case(rng, rng.choice(["activations", "losses"]))
        body = native_body(case, b64=False)
        path = f"/v1/{case.family}/{case.op}"
        transport = "native"
        if rng.random() < 0.4:
            transport = "v2-json"
            path = f"/v2/models/{case.op}/infer"
            body = orjson.dumps(
                {
                    "inputs": [
                        {"name": k, "shape": list(v.shape), "datatype": "FP32" if v.dtype == np.float32 else "INT64",
                         "data": v.ravel().tolist()}
                        for k, v in case.inputs.items()
                    ],
                    "parameters": case.params,
                }
            )  # fmt: skip
        whole = rng.random() < 0.25
        cut = len(body) if whole else rng.randint(0, max(0, len(body) - 1))
        code = await self._raw(
            self._head(path, len(body)) + body[:cut],
            read=False,
            reset=rng.random() < 0.5,
            pause_s=rng.uniform(0.0, 0.05),
        )
        self.tally.record(transport, "disconnect", code, None)

    async def http_timeout(self, rng: random.Random) -> None:
        """A request whose client gives up after a few milliseconds (connection closed)."""
        case = big_activation(rng)
        timeout_s = rng.uniform(0.001, 0.02)
        detail = ""
        if rng.random() < 0.5:
            transport = "native"
            try:
                async with httpx.AsyncClient(base_url=self.server.url, timeout=timeout_s) as c:
                    r = await c.post(f"/v1/activations/{case.op}", content=native_body(case, b64=True))
                code, detail = str(r.status_code), r.text[:200]
            except httpx.TimeoutException:
                code = "client-timeout"
            except httpx.HTTPError as exc:
                code, detail = type(exc).__name__, str(exc)
        else:
            transport = rng.choice(["v2-binary", "v2-json"])
            client = self.v2_binary if transport == "v2-binary" else self.v2_json
            try:
                await client.infer(case.op, case.inputs, case.params, timeout_s=timeout_s)
                code = "200"
            except GradserveError as exc:
                # The SDK's own timeout has no HTTP status; a 504 from the server has one.
                client_side = exc.status is None and type(exc).__name__ == "TimedOutError"
                code, detail = ("client-timeout" if client_side else _error_code(exc)), str(exc)
        self.tally.record(transport, "timeout", code, None, f"{case.op}: {detail}")

    async def grpc_cancel(self, rng: random.Random) -> None:
        """A gRPC call cancelled by its caller, or with a deadline too short to meet."""
        case = big_activation(rng)
        detail = ""
        try:
            if rng.random() < 0.5:
                try:
                    call = self.grpc.infer(case.op, case.inputs, case.params)
                    await asyncio.wait_for(call, timeout=rng.uniform(0.0005, 0.01))
                    code = "OK"
                except TimeoutError:
                    code = "client-cancel"
            else:
                await self.grpc.infer(case.op, case.inputs, case.params, timeout_s=rng.uniform(0.0005, 0.005))
                code = "OK"
        except GradserveError as exc:
            code, detail = _error_code(exc), str(exc)
            # The SDK reports its own deadline as a TimedOutError without a code.
            if code == "TimedOutError":
                code = "DEADLINE_EXCEEDED"
        self.tally.record("grpc", "cancel", code, None, f"{case.op}: {detail}")

    async def oversize(self, rng: random.Random) -> None:
        """Over a limit: a declared body one byte over (HTTP 413 before it is read), or
        an init shape over the element cap (413 / RESOURCE_EXHAUSTED)."""
        pick = rng.randrange(4)
        side = math.isqrt(MAX_TENSOR_ELEMENTS) + 1
        if pick == 0:
            head = self._head("/v1/activations/relu", MAX_BODY_BYTES + 1)
            code = await self._raw(head + b'{"x": [' + b"1.0," * 256, read=True)
            self.tally.record("native", "oversize", code, None)
        elif pick == 1:
            head = self._head(
                "/v2/models/relu/infer", MAX_BODY_BYTES + 1, "Inference-Header-Content-Length: 64\r\n"
            )
            code = await self._raw(head + bytes(1024), read=True)
            self.tally.record("v2-binary", "oversize", code, None)
        elif pick == 2:
            r = await self.http.post("/v1/init/normal", content=orjson.dumps({"shape": [side, side]}))
            self.tally.record("native", "oversize", str(r.status_code), None, r.text[:200])
        else:
            try:
                await self.grpc.init("normal", [side, side])
                code = "OK"
            except GradserveError as exc:
                code = _error_code(exc)
            self.tally.record("grpc", "oversize", code, None)

    async def fuzz(self, rng: random.Random) -> None:
        """Undecodable bodies: random bytes, truncated or mistyped JSON, lying V2 binary
        headers, bad gzip, and random bytes as a gRPC ModelInfer message."""
        pick = rng.randrange(6)
        junk = rng.randbytes(rng.randint(1, 2048))
        if pick == 5:
            try:
                await self.raw_infer(junk, timeout=10.0)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            self.tally.record("grpc", "fuzz", code, None, f"{len(junk)} random bytes")
            return
        case = make_case(rng, rng.choice(["activations", "losses"]))
        headers: dict[str, str] = {}
        if pick == 0:
            transport, path, body = "native", f"/v1/{case.family}/{case.op}", junk
        elif pick == 1:
            whole = native_body(case, b64=rng.random() < 0.5)
            transport, path, body = (
                "native",
                f"/v1/{case.family}/{case.op}",
                whole[: rng.randint(1, len(whole) - 1)],
            )
        elif pick == 2:
            wrong = rng.choice(
                # Not []: an empty tensor is a valid input (its answer is empty).
                [{}, "x", None, [[1.0], [1.0, 2.0]], {"dtype": "float32", "shape": [3], "b64": "AAAA"}]
            )
            transport, path = "native", f"/v1/{case.family}/{case.op}"
            body = orjson.dumps({next(iter(case.inputs)): wrong})
        elif pick == 3:
            header = orjson.dumps(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "shape": [4, 4],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 64},
                        }
                    ]
                }
            )
            transport, path = "v2-binary", "/v2/models/relu/infer"
            body = header + junk
            lie = rng.choice([len(header) + len(junk) + 7, 0, rng.randint(1, len(header) - 1), -1])
            headers["Inference-Header-Content-Length"] = str(lie) if lie >= 0 else "1x"
        else:
            transport, path = "v2-json", f"/v2/models/{case.op}/infer"
            body = junk if rng.random() < 0.5 else gzip.compress(junk)[:-4]
            headers["Content-Encoding"] = "gzip"
        try:
            r = await self.http.post(path, content=body, headers=headers)
            code, detail = str(r.status_code), r.text[:200]
        except httpx.HTTPError as exc:
            code, detail = type(exc).__name__, ""
        self.tally.record(transport, "fuzz", code, None, f"{path} pick={pick} {detail}")

    async def worker(self, seed: int, stop_at: float) -> None:
        rng = random.Random(seed)
        weights = [w for w, _ in self.table]
        scenarios = [s for _, s in self.table]
        while time.monotonic() < stop_at:
            scenario = rng.choices(scenarios, weights)[0]
            try:
                await scenario(rng)
            except Exception as exc:  # the soak goes on; an unexpected client error is a failure
                self.tally.fail(f"client error in {getattr(scenario, '__name__', scenario)}: {exc!r}")


# ---------------------------------------------------------------- sampling, output


class Sampler(threading.Thread):
    """Samples the server every interval from its own thread, so a busy event loop on
    the client side does not stretch the interval."""

    def __init__(self, server: Server, tally: Tally, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.server, self.tally, self.interval_s = server, tally, interval_s
        self.samples: list[Sample] = []
        self.phase = "baseline"
        self.stopped = threading.Event()
        self.http = httpx.Client(base_url=server.url, timeout=5.0)

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopped.is_set():
            next_at += self.interval_s
            self.samples.append(self.sample())
            self.stopped.wait(max(0.0, next_at - time.monotonic()))
        self.http.close()

    def sample(self) -> Sample:
        rss, fds, threads = read_proc(self.server.proc.pid)
        try:
            text = self.http.get("/metrics").text
            pending, metrics_kib = parse_pending(text), len(text) / 1024.0
        except httpx.HTTPError:
            pending = metrics_kib = math.nan
        window, completed, failures = self.tally.take_window()
        all_ms = [ms for _, ms in window]
        by_t = {t: percentile([ms for tt, ms in window if tt == t], 99) for t in TRANSPORTS}
        return Sample(
            round(time.monotonic() - self.tally.t0, 2), self.phase, rss, fds, threads, pending, completed,
            percentile(all_ms, 50), percentile(all_ms, 99), by_t, failures, metrics_kib,
        )  # fmt: skip


def write_csv(path: Path, samples: Sequence[Sample]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["t_s", "phase", "rss_mib", "fds", "threads", "pending", "completed", "p50_ms", "p99_ms"]
            + [f"p99_{t.replace('-', '_')}_ms" for t in TRANSPORTS]
            + ["failures", "metrics_kib"]
        )
        for s in samples:
            w.writerow(
                [s.t_s, s.phase, f"{s.rss_mib:.1f}", s.fds, s.threads, f"{s.pending:g}", s.completed,
                 _num(s.p50_ms, ".2f"), _num(s.p99_ms, ".2f")]
                + [_num(s.p99_by_transport.get(t, math.nan), ".2f") for t in TRANSPORTS]
                + [s.failures, _num(s.metrics_kib)]
            )  # fmt: skip


def plot(path: Path, samples: Sequence[Sample], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    t = [s.t_s for s in samples]
    load = [s.t_s for s in samples if s.phase == "load"]
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    series: list[tuple[str, list[float]]] = [
        ("server RSS (MiB)", [s.rss_mib for s in samples]),
        ("open fds", [float(s.fds) for s in samples]),
        ("queue depth (pending)", [s.pending for s in samples]),
        ("client latency (ms)", [s.p99_ms for s in samples]),
    ]
    for ax, (label, values) in zip(axes, series, strict=True):
        ax.plot(t, values, lw=1, label="p99" if label.startswith("client") else None)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if load:
            ax.axvspan(load[0], load[-1], color="orange", alpha=0.08)
    axes[3].plot(t, [s.p50_ms for s in samples], lw=1, label="p50")
    axes[3].set_yscale("log")
    axes[3].legend(loc="upper right")
    base = [s.rss_mib for s in samples if s.phase == "baseline"]
    if base:
        axes[0].axhline(_median(base), color="grey", ls="--", lw=1)
    axes[0].set_title(title)
    axes[3].set_xlabel("seconds since start (shaded: load)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


async def final_check(server: Server) -> list[str]:
    """After the settle: one valid request per transport must still be answered right."""
    problems = []
    rng = random.Random(1)
    x = np.asarray([[-2.0, 0.0, 3.0]], dtype=np.float32)
    case = Case("activations", "relu", {"x": x}, {}, ["y", "grad_x"], True)
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
        r = await http.post("/v1/activations/relu", content=native_body(case, b64=False))
        if r.status_code != 200 or compare(case, decode_native(r.content)):
            problems.append(f"native final request: {r.status_code} {r.text[:200]}")
    for transport in ("v2-json", "v2-binary", "grpc"):
        client: AsyncClient | AsyncGrpcClient = (
            AsyncGrpcClient(server.grpc_target, timeout_s=10.0)
            if transport == "grpc"
            else AsyncClient(server.url, binary=transport == "v2-binary", timeout_s=10.0)
        )
        try:
            out = await client.infer("relu", {"x": x}, outputs=["y", "grad_x"])
            problem = compare(case, dict(out))
            if problem:
                problems.append(f"{transport} final request: {problem}")
        except GradserveError as exc:
            problems.append(f"{transport} final request: {exc}")
        finally:
            await client.aclose()
    del rng
    return problems


async def run_load(server: Server, tally: Tally, args: argparse.Namespace) -> float:
    load = Load(server, tally, args)
    start = time.monotonic()
    stop_at = start + args.duration_s
    try:
        await asyncio.gather(*(load.worker(args.seed * 1000 + i, stop_at) for i in range(args.workers)))
    finally:
        wall = time.monotonic() - start
        # Close every client before the settle so their connections are not counted as fds.
        await load.close()
    return wall


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration-s", type=float, default=600.0, help="load duration (default 600)")
    p.add_argument("--workers", type=int, default=24, help="closed-loop workers (default 24)")
    p.add_argument("--fault-rate", type=float, default=0.05, help="share of fault requests (default 0.05)")
    p.add_argument("--check-fraction", type=float, default=0.2, help="share of valid answers checked (0.2)")
    p.add_argument("--baseline-s", type=float, default=5.0, help="idle sampling before the load (5)")
    p.add_argument("--settle-s", type=float, default=20.0, help="idle sampling after the load (20)")
    p.add_argument("--interval-s", type=float, default=1.0, help="sampling interval (1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the server process (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    p.add_argument("--out-dir", type=Path, default=None, help="where outputs go (default: a new temp dir)")
    p.add_argument("serve_args", nargs="*", help="extra `gradserve serve` flags, after --")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir: Path = args.out_dir or Path(tempfile.mkdtemp(prefix="gradserve-soak-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    server_env = dict(item.split("=", 1) for item in args.server_env)
    server = start_server(out_dir, args.serve_args, server_env)
    print(
        f"server pid {server.proc.pid} on {server.url} and {server.grpc_target}; outputs in {out_dir}",
        flush=True,
    )
    tally = Tally()
    sampler = Sampler(server, tally, args.interval_s)
    exit_code = 0
    try:
        sampler.start()
        time.sleep(args.baseline_s)
        sampler.phase = "load"
        wall = asyncio.run(run_load(server, tally, args))
        sampler.phase = "after"
        time.sleep(args.settle_s)
        sampler.stopped.set()
        sampler.join()
        load_after = os.getloadavg()
        server_cpu = cpu_seconds(server.proc.pid)
        client_cpu = sum(os.times()[:2])
        final = asyncio.run(final_check(server))
    finally:
        sampler.stopped.set()
        code = server.stop()
    log = server.log_path.read_text(errors="replace")
    log_problems = [
        line for line in log.splitlines() if "Traceback" in line or " 500 " in line or "ERROR" in line
    ]
    samples = sampler.samples
    growth = growth_verdict(samples)
    conditions = [
        f"load {wall:.0f} s, {args.workers} workers, fault rate {args.fault_rate}, check fraction "
        f"{args.check_fraction}, seed {args.seed}, settle {args.settle_s:.0f} s",
        f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} "
        f"at the end (other work shares it); torch {torch.__version__}, serve flags {args.serve_args or 'default'}, "
        f"server env {server_env or 'default'}",
        f"CPU seconds over the run: server {server_cpu:.0f}, this load generator {client_cpu:.0f}",
        f"valid answers checked against torch: {tally.checked}; server exit code {code}; "
        f"log lines with Traceback/ERROR/500: {len(log_problems)}",
    ]
    for problem in final:
        tally.fail(problem)
    if code != 0:
        tally.fail(f"server exited with {code} on SIGTERM")
    for line in log_problems[:10]:
        tally.fail(f"server log: {line[:200]}")
    summary = render_summary(tally.counts, tally.latencies, tally.failures, growth, wall, conditions)
    print(summary)
    (out_dir / "soak-summary.txt").write_text(summary + "\n")
    write_csv(out_dir / "soak.csv", samples)
    plot(out_dir / "soak.png", samples, f"gradserve soak: {wall:.0f} s, {args.workers} workers")
    print(f"\nwrote {out_dir}/soak.csv, soak.png, soak-summary.txt, server.log")
    if tally.failures or not growth.ok:
        exit_code = 1
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
