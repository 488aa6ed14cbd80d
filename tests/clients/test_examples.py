"""Each script of examples/ runs as written (a subprocess) against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(server: ServerProcess, script: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "clients")}
    done = subprocess.run(
        [sys.executable, str(script), "--url", server.url, "--grpc", server.grpc_target],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_every_family_has_a_sync_and_an_async_example() -> None:
    names = {p.stem for p in EXAMPLES}
    for family in ("activation", "loss", "init"):
        assert {f"{family}_sync", f"{family}_async"} <= names
