"""Retry timing of every client: which errors are retried, how long to back off, and the
deadline one call's attempts share.

Flow position: a client call (``_http.py``, ``_grpc.py``) -> attempt -> error ->
**RetryPolicy.next_delay** -> sleep within the **Deadline** -> next attempt, or
**give_up**. I/O-free like ``_core.py``: nothing here sleeps or opens a socket.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from gradserve_client.errors import GradserveError, TimedOutError


@dataclass(frozen=True)
class RetryPolicy:
    """When and how the clients retry.

    Only ``OverloadedError`` (HTTP 429, gRPC RESOURCE_EXHAUSTED "queue full") and
    ``UnavailableError`` (HTTP 503, gRPC UNAVAILABLE and a CANCELLED the client did not
    cause, a connection refused, or closed or reset before any answer byte, such as a
    keep-alive connection the server closed just as the request went out) are retried:
    the server did not start or did not finish those requests, and every op is a pure
    function, so a retry cannot change an answer. They all share one budget. The n-th retry waits a random time in
    ``[0, min(max_backoff_s, initial_backoff_s * multiplier**n)]`` (full jitter, so a
    crowd of clients spreads out), and at least the server's Retry-After hint (capped at
    ``max_backoff_s``) when ``honor_retry_after``. A call never retries past its timeout.

    Attributes:
        max_retries: the retry budget of one call (0 disables retries).
    """

    # 5: against a grpc-core server with its default pending-call limits (soft 1,000),
    # a burst of 2,000 concurrent calls on one channel lost 1-6 calls to its random
    # CANCELLEDs with 3 retries, none with 5 (2-core machine). gradserve itself raises
    # those limits to its RPC cap and cancels none.
    max_retries: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    honor_retry_after: bool = True

    def __post_init__(self) -> None:
        if (
            self.max_retries < 0
            or self.initial_backoff_s < 0
            or self.max_backoff_s < 0
            or self.multiplier < 1
        ):
            raise ValueError(f"invalid retry policy: {self}")

    def backoff_s(
        self, retry: int, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float:
        """How long to wait before retry number ``retry`` (0-based)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry)
        delay = (rng or _RNG).uniform(0.0, cap)
        if self.honor_retry_after and retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_backoff_s))
        return delay

    def next_delay(self, error: GradserveError, attempt: int, remaining_s: float) -> float | None:
        """After ``attempt`` (1-based) failed with ``error``: seconds to wait, or None to give up."""
        if not error.retryable or attempt > self.max_retries:
            return None
        delay = self.backoff_s(attempt - 1, error.retry_after_s)
        return delay if delay < remaining_s else None


NO_RETRY = RetryPolicy(max_retries=0)
_RNG = random.Random()


class Deadline:
    """A call's monotonic deadline, shared by its attempts and backoff sleeps."""

    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self._end = time.monotonic() + timeout_s

    def remaining_s(self) -> float:
        return self._end - time.monotonic()

    def check(self) -> float:
        """The time left, or TimedOutError when none is."""
        left = self.remaining_s()
        if left <= 0:
            raise TimedOutError(f"call timed out after {self.timeout_s} s")
        return left


def give_up(error: GradserveError, attempt: int) -> GradserveError:
    error.attempts = attempt
    return error
