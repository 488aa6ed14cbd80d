"""malloc.tune: the glibc mmap threshold setting (applied in a child process, so the
test process keeps its own allocator behaviour)."""

from __future__ import annotations

import subprocess
import sys

from gradserve import malloc


def test_zero_leaves_glibc_adaptive() -> None:
    assert malloc.tune(0) is False


def test_a_threshold_is_applied_on_glibc() -> None:
    code = "from gradserve import malloc; print(malloc.tune(131072))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    libc = subprocess.run(["ldd", "--version"], capture_output=True, text=True)
    if "GLIBC" in (libc.stdout + libc.stderr).upper():
        assert out.stdout.strip() == "True"
    else:  # pragma: no cover - musl/macOS: nothing to tune, and no crash
        assert out.stdout.strip() == "False"
