"""No timing difference a test can see between wrong keys (issue 13).

A guess that shares a long prefix with a real key must take as long to refuse as one
that shares nothing, and a key's length must not show either, or an attacker could
recover a key a character at a time. auth.py hashes each guess with a salted MAC and
compares fixed-size digests against every key; these tests measure that.

Method (after dudect, "dude, is my code constant time?", Reparaz et al. 2017): classes
of wrong keys are timed interleaved, in a fresh random order each round, so that drift
and noise (other processes, frequency changes) fall on every class alike; each sample
is the time of a few calls in a row (the timer's own cost and resolution matter
less). Each class is compared with the reference class by a Mann-Whitney U test, which
uses ranks only, so the heavy right tail of timings (interrupts, preemption) cannot
sway it; |z| >= 4.5 (p ~ 1e-5, dudect's threshold) counts as a difference. A run is
repeated three times and the median |z| decides, so one disturbed run cannot fail the
test, and a real difference, present in every run, still does. Nothing is compared
with a wall-clock limit.

What is varied, and what is not:
- the prefix a guess shares with a real key (none, a quarter, half, all but the last
  character), at the key's length;
- the key's length, against a guess of fixed length: stores whose keys are shorter
  than, as long as, or longer than the guess. (The guess's own length is the caller's
  choice and known to them; hashing a longer guess may take a few nanoseconds more,
  which tells them nothing, so guess lengths are not compared.)

A positive control shows that the same harness does see a leak: an early-exit
comparison, the mistake this is about, differs by |z| > 30 here.
"""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from gradserve.auth import KeyStore
from gradserve.config import Settings

Z_LIMIT = 4.5
RUNS = 3
_rng = random.Random(13)
_ALPHABET = string.ascii_letters + string.digits


def _random(n: int) -> str:
    return "".join(_rng.choice(_ALPHABET) for _ in range(n))


SECRET = _random(40)


def _other(c: str) -> str:
    return "A" if c != "A" else "B"


def _wrong_with_prefix(n: int) -> str:
    """A wrong key of SECRET's length whose first ``n`` characters are SECRET's."""
    return SECRET[:n] + _other(SECRET[n]) + _random(len(SECRET) - n - 1)


PREFIX_CLASSES = {
    "no_prefix": _wrong_with_prefix(0),
    "quarter": _wrong_with_prefix(10),
    "half": _wrong_with_prefix(20),
    "all_but_last": _wrong_with_prefix(39),
}


def mann_whitney_z(a: np.ndarray, b: np.ndarray) -> float:
    """z of the Mann-Whitney U statistic of ``a`` against ``b`` (normal approximation,
    average ranks for ties); positive when ``a`` tends to be larger."""
    n, m = len(a), len(b)
    values = np.concatenate([a, b])
    ranks = np.empty(n + m)
    ranks[values.argsort(kind="mergesort")] = np.arange(1, n + m + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]
    u = ranks[:n].sum() - n * (n + 1) / 2
    return float((u - n * m / 2) / np.sqrt(n * m * (n + m + 1) / 12))


def _interleaved(calls: dict[str, Callable[[], Any]], rounds: int, inner: int) -> dict[str, np.ndarray]:
    """Per class, ``rounds`` samples of ``inner`` calls each, classes interleaved in a
    random order per round."""
    samples: dict[str, list[int]] = {name: [] for name in calls}
    order = list(calls)
    for _ in range(rounds):
        _rng.shuffle(order)
        for name in order:
            call = calls[name]
            started = time.perf_counter_ns()
            for _ in range(inner):
                call()
            samples[name].append(time.perf_counter_ns() - started)
    return {name: np.array(times, dtype=float) for name, times in samples.items()}


def _median_z(measure: Callable[[], dict[str, np.ndarray]], reference: str) -> dict[str, float]:
    """The median over RUNS runs of each class's z against ``reference``."""
    runs = []
    for _ in range(RUNS):
        samples = measure()
        runs.append({name: mann_whitney_z(s, samples[reference]) for name, s in samples.items()})
    return {name: float(np.median([run[name] for run in runs])) for name in runs[0] if name != reference}


def test_the_statistic_itself() -> None:
    same = np.arange(1000.0)
    assert abs(mann_whitney_z(same, same.copy())) < 1e-9
    shifted = np.random.default_rng(0).normal(0, 1, 2000)
    assert mann_whitney_z(shifted[:1000] + 0.5, shifted[1000:]) > 8
    noise = np.random.default_rng(1).normal(0, 1, 2000)
    assert abs(mann_whitney_z(noise[:1000], noise[1000:])) < Z_LIMIT


def test_a_wrong_keys_shared_prefix_does_not_show() -> None:
    store = KeyStore([SECRET, _random(40), _random(32)])

    def measure() -> dict[str, np.ndarray]:
        # Fresh objects each run: a quirk of one object's place in memory must not
        # repeat in every run and pass for a difference between the classes.
        headers = {name: f"Bearer {key}".encode() for name, key in PREFIX_CLASSES.items()}
        calls = {name: (lambda h=h: store.check_bearer(h)) for name, h in headers.items()}
        assert not any(call() for call in calls.values())
        return _interleaved(calls, rounds=1000, inner=20)

    z = _median_z(measure, "no_prefix")
    assert all(abs(v) < Z_LIMIT for v in z.values()), z


def test_a_keys_length_does_not_show() -> None:
    def measure() -> dict[str, np.ndarray]:
        guess = f"Bearer {_random(40)}".encode()
        stores = {
            "key_as_long": KeyStore([_random(40)]),
            "key_shorter": KeyStore([_random(24)]),
            "key_longer": KeyStore([_random(60)]),
            "key_much_longer": KeyStore([_random(200)]),
        }
        calls = {name: (lambda s=s: s.check_bearer(guess)) for name, s in stores.items()}
        return _interleaved(calls, rounds=1000, inner=20)

    z = _median_z(measure, "key_as_long")
    assert all(abs(v) < Z_LIMIT for v in z.values()), z


def test_the_harness_sees_an_early_exit_comparison() -> None:
    """The positive control: the naive comparison this module guards against."""
    secret = SECRET.encode()

    def early_exit(header: bytes) -> bool:
        guess = header[7:]
        if len(guess) != len(secret):
            return False
        for a, b in zip(guess, secret, strict=True):  # noqa: SIM110 - the early exit is the point
            if a != b:
                return False
        return True

    headers = {name: f"Bearer {key}".encode() for name, key in PREFIX_CLASSES.items()}
    calls = {name: (lambda h=h: early_exit(h)) for name, h in headers.items()}
    z = _median_z(lambda: _interleaved(calls, rounds=300, inner=20), "no_prefix")
    assert z["all_but_last"] > Z_LIMIT and z["half"] > Z_LIMIT, z


def _asgi_refusal(app: Any, header: bytes) -> Callable[[], Awaitable[int]]:
    """One POST to the real app, in-process: what a refused request costs the server,
    from GradservApp.__call__ to its last send (the 401)."""
    scope_base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v2/models/relu/infer",
        "raw_path": b"/v2/models/relu/infer",
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    headers = [(b"content-type", b"application/json"), (b"authorization", header)]

    async def receive() -> dict[str, Any]:
        raise AssertionError("a refused request's body is never read")

    async def call() -> int:
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app({**scope_base, "headers": headers}, receive, send)
        return status

    return call


@pytest.mark.timeout(120)
def test_the_http_refusal_takes_as_long_whatever_the_wrong_key() -> None:
    """The whole refusal path of the app (header scan, key check, pre-rendered 401)."""
    from gradserve.rest.app import create_app

    app = create_app(settings=Settings(api_keys=f"{SECRET},{_random(40)}", device="cpu"))

    async def measure() -> dict[str, np.ndarray]:
        calls = {  # fresh objects each run, as above
            name: _asgi_refusal(app, f"Bearer {key}".encode()) for name, key in PREFIX_CLASSES.items()
        }
        samples: dict[str, list[int]] = {name: [] for name in calls}
        order = list(calls)
        for _ in range(400):
            _rng.shuffle(order)
            for name in order:
                call = calls[name]
                started = time.perf_counter_ns()
                for _ in range(4):
                    assert await call() == 401
                samples[name].append(time.perf_counter_ns() - started)
        return {name: np.array(times, dtype=float) for name, times in samples.items()}

    try:
        z = _median_z(lambda: asyncio.run(measure()), "no_prefix")
    finally:
        app.state.runtime.close()
    assert all(abs(v) < Z_LIMIT for v in z.values()), z
