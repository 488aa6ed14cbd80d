#!/usr/bin/env python3
"""Goodput under 10x overload: start `gradserve serve` on a free 127.0.0.1 port, measure
its peak rate (64 clients), then 1,000 closed-loop clients for 15 s that retry after a
429/503 per Retry-After (as the SDK does) and immediately (the worst case); print
goodput as a ratio of the peak, p50/p99 of successful requests and the refusal counts.

    PYTHONPATH=service .venv/bin/python scripts/overload.py [--clients N] [--duration-s S] [-- serve flags]

The load generator is gradserve.bench.overload (shared with tests/e2e/test_overload.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from gradserve.bench.overload import main

if __name__ == "__main__":
    sys.exit(main())
