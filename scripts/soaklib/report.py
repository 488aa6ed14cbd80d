"""Report: after the run, the growth verdict on the samples, the text summary, and
the CSV and plot written to --out-dir.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .outcomes import TRANSPORTS, is_failure, status_class
from .samples import Sample, percentile

# Growth verdict: after the settle, RSS within max(abs, frac * baseline) of the idle
# baseline, no steady RSS climb in the second half of the load (a leak of ~1 KiB per
# request at a few hundred req/s climbs ~20 MiB/min), descriptors back within a few.
RSS_TOLERANCE_MIB = 64.0
RSS_TOLERANCE_FRAC = 0.10
RSS_SLOPE_LIMIT_MIB_PER_MIN = 2.0
FD_TOLERANCE = 4


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
