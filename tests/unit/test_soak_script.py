"""scripts/soak.py's pure helpers on synthetic data (the soak itself is not a CI test)."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    # scripts/ is not a package: load the file by path, as `python scripts/soak.py` would.
    spec = importlib.util.spec_from_file_location("soak_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak_script"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


METRICS = """\
# HELP nv_inference_pending_request_count Requests waiting in the batcher's queue, by op.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="relu",version="1"} 3.0
nv_inference_pending_request_count{model="cross_entropy",version="1"} 2.0
nv_inference_pending_request_count_total{model="relu",version="1"} 100.0
nv_inference_count{model="relu",version="1"} 7.0
"""


def test_parse_pending_sums_the_gauge_only(soak):
    assert soak.parse_pending(METRICS) == 5.0
    assert soak.parse_pending("") == 0.0
    assert soak.parse_pending("nv_inference_pending_request_count 4\n") == 4.0


def test_percentile_and_status_class(soak):
    assert soak.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert math.isnan(soak.percentile([], 99))
    assert [soak.status_class(c) for c in ("200", "413", "503", "OK", "INVALID_ARGUMENT", "closed")] == [
        "2xx",
        "4xx",
        "5xx",
        "2xx",
        "4xx",
        "none",
    ]
    assert soak.status_class("INTERNAL") == "5xx"
    assert soak.status_class("ReadError") == "5xx"  # a lost answer counts as a server failure


def test_is_failure(soak):
    assert not soak.is_failure("valid", "200")
    assert soak.is_failure("valid", "422")  # built valid, refused: wrong
    assert soak.is_failure("fuzz", "500")
    assert soak.is_failure("fuzz", "200")
    assert not soak.is_failure("fuzz", "400")
    assert not soak.is_failure("oversize", "RESOURCE_EXHAUSTED")
    assert not soak.is_failure("cancel", "client-cancel")
    assert soak.is_failure("cancel", "UNKNOWN")


def _samples(soak: ModuleType, rss_load: list[float], rss_after: float, fds_after: int = 20) -> list[Any]:
    samples = [soak.Sample(float(t), "baseline", 300.0, 20, 8, 0.0, 0, math.nan, math.nan) for t in range(5)]
    samples += [
        soak.Sample(float(5 + i), "load", rss, 50, 12, 1.0, 100, 2.0, 9.0) for i, rss in enumerate(rss_load)
    ]
    t = 5 + len(rss_load)
    samples += [
        soak.Sample(float(t + i), "after", rss_after, fds_after, 8, 0.0, 0, math.nan, math.nan)
        for i in range(10)
    ]
    return samples


def test_growth_verdict_flat_run_passes(soak):
    # Up by 40 MiB at the start of the load, then flat for two minutes, back down after.
    g = soak.growth_verdict(_samples(soak, [340.0] * 120, 330.0))
    assert g.ok, g.reasons
    assert (g.rss_baseline_mib, g.rss_peak_mib, g.rss_after_mib) == (300.0, 340.0, 330.0)
    assert (g.fds_baseline, g.fds_peak, g.fds_after) == (20, 50, 20)
    assert abs(g.rss_slope_mib_per_min) < 1e-9


def test_growth_verdict_flags_a_climb_memory_left_and_descriptors(soak):
    # 0.5 MiB per second throughout the load: 30 MiB/min.
    climbing = soak.growth_verdict(_samples(soak, [300.0 + 0.5 * i for i in range(120)], 310.0))
    assert not climbing.ok
    assert climbing.rss_slope_mib_per_min == pytest.approx(30.0)
    assert any("climbs" in r for r in climbing.reasons)

    kept = soak.growth_verdict(_samples(soak, [400.0] * 120, 400.0))
    assert not kept.ok and any("over its baseline" in r for r in kept.reasons)

    leaked_fds = soak.growth_verdict(_samples(soak, [320.0] * 120, 320.0, fds_after=40))
    assert not leaked_fds.ok and any("descriptors" in r for r in leaked_fds.reasons)

    with pytest.raises(ValueError):
        soak.growth_verdict([])


def test_render_summary_counts_and_failures(soak):
    counts = Counter(
        {
            ("native", "valid", "200"): 90,
            ("native", "fuzz", "400"): 5,
            ("grpc", "valid", "OK"): 50,
            ("grpc", "cancel", "INTERNAL"): 1,
        }
    )
    growth = soak.growth_verdict(_samples(soak, [340.0] * 60, 330.0))
    text = soak.render_summary(counts, {"native": [1.0, 2.0], "grpc": [3.0]}, ["boom"], growth, 10.0)
    flat = " ".join(text.split())  # column widths are layout, not content
    assert "native 95 (90 valid, 5 faults)" in flat
    assert "grpc 51 (50 valid, 1 faults)" in flat
    assert "INTERNAL" in text and "FAILURE" in text
    assert "by class: 2xx 140, 4xx 5, 5xx 1, none 0" in text
    assert "failures (5xx, wrong answers, unexpected outcomes): 1" in text
    assert "growth verdict: no growth" in text
