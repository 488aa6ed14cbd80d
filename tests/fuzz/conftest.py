"""Fixtures of the fuzzing suite: one guarded server shared by the schema and codec fuzzers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import ServerProcess
from tests.fuzz._support import RssWatch, start_guarded


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, RssWatch]]:
    """A `gradserve serve` process with an address-space cap and an RSS watchdog."""
    server, watch = start_guarded(tmp_path_factory.mktemp("fuzz-server"))
    yield server, watch
    watch.stop()
    server.stop()
