"""tritonclient.grpc's streaming API (start_stream / async_stream_infer / stop_stream),
unmodified, against a real `gradserve serve` process, in a child process
(tritonclient_shm_stream_checks.py: its protos would clash with gradserve's here)."""

from __future__ import annotations

import pytest

from tests.conftest import ServerProcess
from tests.e2e.test_shm_tritonclient import run_checks


@pytest.mark.parametrize("group", ["stream", "stream_shm"])
def test_tritonclient_grpc_stream(server: ServerProcess, group: str) -> None:
    run_checks(server, group)
