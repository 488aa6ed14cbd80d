"""`gradserve serve` as a real process: starts on free ports, answers over HTTP, stops."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ServerProcess


def test_serve_answers_and_stops_cleanly(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory("--max-queue-size", "64")
    r = httpx.post(
        f"{proc.url}/v1/losses/cross_entropy",
        json={"input": [[3.2, 5.1, -1.7]], "target": [0], "grad": True},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert abs(r.json()["loss"]["data"] - 2.0404) < 1e-3
    assert httpx.get(f"{proc.url}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{proc.url}/docs", timeout=5).status_code == 200
    assert proc.stop(signal.SIGTERM) == 0
    assert "stopped" in proc.log()


def test_sigint_stops_too(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory()
    assert proc.stop(signal.SIGINT) == 0


def test_settings_come_from_env_and_flags(server_factory: Callable[..., ServerProcess]) -> None:
    proc = server_factory("--max-body-bytes", "100", env={"GRADSERVE_MAX_TENSOR_ELEMENTS": "4"})
    r = httpx.post(f"{proc.url}/v1/activations/relu", json={"x": [1.0] * 50}, timeout=5)
    assert r.status_code == 413  # body over 100 bytes
    r = httpx.post(f"{proc.url}/v1/activations/relu", json={"x": [1.0] * 5}, timeout=5)
    assert r.status_code == 413 and "limit of 4" in r.json()["error"]["message"]


def test_help_lists_every_setting() -> None:
    from gradserve.config import Settings

    out = subprocess.run(
        [sys.executable, "-m", "gradserve", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": "service", "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    ).stdout
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in out
        assert f"GRADSERVE_{name.upper()}" in out


def test_bad_flag_value_fails_fast() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gradserve", "serve", "--http-port", "-5"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": "service", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    # One line naming the flag and what is wrong: no traceback.
    assert r.returncode == 2
    assert "--http-port=-5: Input should be greater than or equal to 0" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--api-keys", "ab cd"],
            "api keys: an API key of 5 characters has a character outside visible ASCII",
        ),
        (["--api-keys-file", "/nonexistent/keys"], "api keys: [Errno 2] No such file or directory"),
    ],
)
def test_bad_keys_fail_fast_in_one_line(args: list[str], said: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gradserve", "serve", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": "service", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert r.returncode == 1
    assert said in r.stderr and "Traceback" not in r.stderr, r.stderr
