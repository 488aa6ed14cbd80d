"""Unmodified tritonclient.grpc against a real `gradserve serve` process.

The checks live in tritonclient_grpc_checks.py and run in a child process: this test
process imports gradserve's own stubs, whose ``inference.*`` protos would clash with
tritonclient's in one protobuf pool.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

SCRIPT = Path(__file__).with_name("tritonclient_grpc_checks.py")
# The script's CHECKS keys; not imported from it, as that would import tritonclient.grpc.
GROUPS = ["health", "metadata", "activations", "losses", "init", "errors", "large"]


@pytest.mark.parametrize("group", GROUPS)
def test_tritonclient_grpc(server: ServerProcess, group: str) -> None:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), server.grpc_target, group],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok   {group}" in r.stdout
