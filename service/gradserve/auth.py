"""API keys: the one key store and its check, used by both transports.

Flow position: the socket -> **the key check** (rest/gate.py for every HTTP request,
fast inference routes included; grpc/calls.py for every gRPC call, before its message
is decoded) -> the rest of the request path. A refused request costs a header scan and
one keyed hash: its body is never read, its message never parsed.

Keys come from ``api_keys`` (comma-separated; env ``GRADSERVE_API_KEYS``) and
``api_keys_file`` (one per line, ``#`` comments), read once at start. No key configured:
no check at all (``KeyStore.from_settings`` is None).

What is protected (``protected_http`` / ``protected_grpc``): every route under /v1 and
/v2 and every gRPC method, except the probes (/healthz, /readyz, /metrics,
/v2/health/live|ready; grpc.health.v1.Health, ServerLive, ServerReady), which stay open
unless ``api_keys_on_probes``. The API's description stays open by design: /docs,
/redoc, /openapi.json, gRPC reflection (which describe the public protocol, not data);
so do the lab page's own files (the page asks for the key; its API calls send it) and
anything else outside /v1 and /v2.

Timing: a candidate is hashed with keyed BLAKE2b (a MAC, RFC 7693) under a random
per-process salt and the digest compared with ``hmac.compare_digest`` against the
digest of every key, with no early exit, so the time taken depends neither on how much
of a key a guess matches nor on any key's length (all digests are 32 bytes), only on
the guess's own length, which the caller knows anyway. tests/unit/test_auth_timing.py
measures it. (BLAKE2b rather than HMAC-SHA256: 0.5 against 1.4 µs a check here, the
latter mostly OpenSSL 3 looking up the digest by name on each call.)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from gradserve.config import Settings

log = logging.getLogger(__name__)

#: HTTP paths of the probes, open unless ``api_keys_on_probes``.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
#: gRPC methods of the probes, open unless ``api_keys_on_probes``.
PROBE_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)
#: gRPC services that describe the API (like /docs): always open.
OPEN_SERVICES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")

# A key is visible ASCII without a comma (the list separator): what fits an HTTP header
# and gRPC metadata unchanged.
_KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {","}
_SHORT_KEY_CHARS = 16
_BEARER = b"bearer "


class KeyStore:
    """The configured keys, kept only as salted digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._salt = os.urandom(32)
        unique = sorted(set(keys))
        if not unique:
            raise ValueError("a key store needs at least one key")
        for key in unique:
            bad = set(key) - _KEY_CHARS
            if bad:
                # The key itself is never shown: only where the problem is.
                raise ValueError(
                    f"an API key of {len(key)} characters has a character outside visible "
                    "ASCII or a comma; keys are sent in an HTTP header"
                )
            if len(key) < _SHORT_KEY_CHARS:
                log.warning("an API key is only %d characters long; use 32 or more random ones", len(key))
        self._digests = tuple(self._digest(key.encode("ascii")) for key in unique)

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore | None:
        """The keys of ``api_keys`` and ``api_keys_file``; None when there are none."""
        keys = [k.strip() for k in settings.api_keys.split(",") if k.strip()]
        if settings.api_keys_file:
            keys += parse_key_file(Path(settings.api_keys_file).read_text(encoding="utf-8"))
        if not keys:
            if settings.api_keys_file:
                raise ValueError(f"api_keys_file {settings.api_keys_file!r} holds no key")
            return None
        return cls(keys)

    def _digest(self, candidate: bytes) -> bytes:
        return hashlib.blake2b(candidate, key=self._salt, digest_size=32).digest()

    def check(self, candidate: bytes) -> bool:
        """Whether ``candidate`` is one of the keys, in time independent of the keys."""
        digest = self._digest(candidate)
        found = False
        for key in self._digests:  # every key, always: no early exit
            found |= hmac.compare_digest(digest, key)
        return found

    def check_bearer(self, authorization: bytes | str | None) -> bool:
        """Whether an ``Authorization`` value is ``Bearer <one of the keys>``."""
        if authorization is None:
            return False
        if isinstance(authorization, str):
            try:
                authorization = authorization.encode("ascii")
            except UnicodeEncodeError:
                return False
        # The scheme is case-insensitive (RFC 9110 section 11.1).
        if authorization[:7].lower() != _BEARER:
            return False
        return self.check(authorization[7:].strip())


def parse_key_file(text: str) -> list[str]:
    """One key per line; blank lines and ``#`` comments are skipped."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line)
    return keys


def protected_http(path: str, probes: bool) -> bool:
    """Whether an HTTP request to ``path`` needs a key (with keys configured)."""
    if path in PROBE_PATHS:
        return probes
    return path.startswith(("/v1/", "/v2/")) or path in ("/v1", "/v2")


def protected_grpc(method: str, probes: bool) -> bool:
    """Whether a gRPC call of ``method`` (``/package.Service/Method``) needs a key."""
    if method in PROBE_METHODS:
        return probes
    return not method.startswith(OPEN_SERVICES)
