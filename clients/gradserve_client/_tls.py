"""TLS and keys for the clients: what to trust, which certificate to show, which key to send.

The four clients take the same options (``api_key``, ``ca_cert``, ``client_cert``,
``client_key``) and turn them into their transport's form here, so the HTTP and gRPC
twins cannot drift: an ``ssl.SSLContext`` for httpx, ``grpc.ssl_channel_credentials``
for gRPC, and ``Authorization: Bearer <key>`` as an HTTP header or gRPC metadata.
This is the one module of the SDK that reads files (the PEM files, once, at
construction).
"""

from __future__ import annotations

import os
import ssl
from typing import Any, TypeAlias

from gradserve_client.errors import InvalidInputError

#: A path to a PEM file.
PemPath: TypeAlias = str | os.PathLike[str]


def _check_pair(client_cert: PemPath | None, client_key: PemPath | None) -> None:
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together (mutual TLS): give both or neither")


def bearer(api_key: str | None) -> str | None:
    """The ``Authorization`` value of a key (None: no key)."""
    if api_key is None:
        return None
    if not api_key or any(c.isspace() or not " " <= c <= "~" for c in api_key):
        # A line break would split the header (or break the gRPC metadata) it goes in.
        raise InvalidInputError("api_key must be a non-empty string of printable ASCII without spaces")
    return f"Bearer {api_key}"


def ssl_context(
    ca_cert: PemPath | None, client_cert: PemPath | None, client_key: PemPath | None
) -> ssl.SSLContext | None:
    """The httpx ``verify`` context: trust ``ca_cert`` (else the system's roots), show
    ``client_cert`` for mutual TLS. None when neither is given (httpx's defaults)."""
    _check_pair(client_cert, client_key)
    if ca_cert is None and client_cert is None:
        return None
    context = ssl.create_default_context(cafile=None if ca_cert is None else os.fspath(ca_cert))
    if client_cert is not None and client_key is not None:
        context.load_cert_chain(os.fspath(client_cert), os.fspath(client_key))
    return context


def grpc_credentials(ca_cert: PemPath | None, client_cert: PemPath | None, client_key: PemPath | None) -> Any:
    """``grpc.ssl_channel_credentials`` trusting ``ca_cert`` (else grpcio's bundled
    roots) and showing ``client_cert`` for mutual TLS."""
    import grpc

    _check_pair(client_cert, client_key)

    def read(path: PemPath | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as pem:
            return pem.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_cert), private_key=read(client_key), certificate_chain=read(client_cert)
    )


# What OpenSSL and BoringSSL (grpcio) say when a handshake fails for want of trust:
# an unverifiable server certificate, or an alert from a server that wants (another)
# client certificate. A reset or EOF mid-handshake says none of these and stays a
# retryable connection failure.
_HANDSHAKE_MARKERS = ("certificate", "handshake failed", "alert_unknown_ca", "alert_bad_certificate")


def handshake_failure(exc: BaseException) -> str | None:
    """The TLS reason behind a transport error (its cause chain), if trust is the reason."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current)
        if (
            isinstance(current, ssl.SSLError)
            and not isinstance(current, ssl.SSLEOFError)
            and any(marker in str(current).lower() for marker in _HANDSHAKE_MARKERS)
        ):
            return str(current)
        current = current.__cause__ or current.__context__
    return None


def grpc_handshake_failed(details: str) -> bool:
    """Whether a gRPC UNAVAILABLE's details name a failed TLS handshake."""
    lowered = details.lower()
    return "handshake failed" in lowered or "certificate_verify_failed" in lowered
