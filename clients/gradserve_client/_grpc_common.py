"""What ``GrpcClient`` (_grpc_sync.py) and ``AsyncGrpcClient`` (_grpc_async.py) share:
their options, the channel's credentials and options, and the pure steps of a call.

Flow position: a client method -> **_GrpcCommon** (deadline, ``_core`` request via
``_grpc_wire``, the ``RpcError`` -> exception mapping, the retry decision) -> the
channel's call -> ``_grpc_wire`` decoding. The sync and async clients differ only in
how they wait (``time.sleep`` vs ``asyncio.sleep``, blocking vs awaited calls). Why
retries run here and not in the channel: see ``_grpc.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from gradserve_client import _core, _error_map, _grpc_wire, _tls
from gradserve_client._core import Deadline, InferRequest, ModelMetadata, ParamValue, RetryPolicy
from gradserve_client._tls import PemPath
from gradserve_client.errors import GradserveError, InvalidInputError, ServerError

log = logging.getLogger("gradserve_client")

DEFAULT_TARGET = "localhost:8001"
DEFAULT_TIMEOUT_S = 30.0
#: The channel's reconnect backoff (grpcio's defaults: 1 s, growing 1.6x per failed
#: connect up to 120 s). After an outage of a few seconds grpcio would wait out that
#: backoff before it connects again, failing every call meanwhile with UNAVAILABLE and
#: spending the SDK's own retries (about a second of backoff in all) long before the
#: channel tries again. At most 1 s between connects, it reconnects within about a
#: second of the server's return. (``grpc.min_reconnect_backoff_ms`` is left at its
#: default: despite its name it is grpc-core's minimum connect timeout, 20 s, and a
#: short one would fail slow TLS handshakes.)
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def closed_error(attempts: int = 1) -> ServerError:
    """A gRPC call on (or cut short by) a closed client: ServerError, CANCELLED."""
    return _error_map.closed_error(attempts, grpc_code="CANCELLED")


def check_metadata(metadata: Sequence[tuple[str, str]]) -> None:
    """Refuse, before anything is sent, metadata that grpc-core would refuse at call time
    (as ``ServerError('Invalid metadata')``): a key that is not lowercase ASCII letters,
    digits and ``-_.``, or a text value with a character outside printable ASCII
    (a line break, say). Binary (``-bin``) values are bytes and may hold anything."""
    # grpc-core's own check (validate_metadata.cc); a call carrying such metadata
    # would fail only once sent, as INTERNAL "Invalid metadata".
    for key, value in metadata:
        if not isinstance(key, str) or not key or any(c not in _KEY_CHARS for c in key):
            raise InvalidInputError(f"illegal metadata key {key!r}")
        if key.endswith("-bin"):
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if not isinstance(text, str) or any(not " " <= c <= "~" for c in text):
            raise InvalidInputError(f"illegal metadata value for {key!r}: {value!r}")


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class _GrpcCommon:
    """State and pure helpers the sync and async gRPC clients share."""

    def __init__(
        self,
        target: str,
        timeout_s: float,
        retry: RetryPolicy | None,
        catalog_url: str | None,
        metadata: Sequence[tuple[str, str]] | None,
        api_key: str | None,
        tls_files: dict[str, PemPath | None],
    ) -> None:
        Deadline(timeout_s)  # validates
        self.target = target
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.catalog_url = catalog_url
        authorization = _tls.bearer(api_key)
        self._call_metadata = tuple(metadata or ()) + (
            (("authorization", authorization),) if authorization is not None else ()
        )
        check_metadata(self._call_metadata)
        # For ops(), which reads the catalog over HTTP with the same key and TLS files.
        self._http_security: dict[str, Any] = {"api_key": api_key, **tls_files}
        self._metadata: dict[str, ModelMetadata] = {}
        self._pb, self._pb_grpc = _core.grpc_modules()
        # Set before the channel is closed: a call that then ends CANCELLED was
        # cancelled by this client, not by the server, and is not retried.
        self._closed = False

    def _channel_options(self, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return [
            # The server enforces its own message limit (and answers RESOURCE_EXHAUSTED
            # past it); a client-side cap would only add a second, different one.
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            *RECONNECT_OPTIONS,
            *options,
        ]

    def _deadline(self, timeout_s: float | None) -> Deadline:
        return Deadline(self.timeout_s if timeout_s is None else timeout_s)

    def _build(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
    ) -> Any:
        request = InferRequest(
            op, tensors, _core.encode_params(params), None if outputs is None else tuple(outputs)
        )
        return _grpc_wire.encode_infer_request(request)  # bytes: no protobuf message per call

    def _rpc_error(self, exc: grpc.RpcError, deadline: Deadline) -> GradserveError:
        call: Any = exc  # grpc.RpcError raised by a call is also a grpc.Call
        code = call.code()
        trailers = dict(call.trailing_metadata() or ())
        error = _core.grpc_error(
            code.name if code is not None else "UNKNOWN",
            call.details() or "",
            trailers.get(_core.ERROR_CODE_KEY),
            client_closed=self._closed,
            deadline_passed=deadline.remaining_s() <= 0,
        )
        error.request_id = trailers.get(_core.REQUEST_ID_KEY)
        return error

    @staticmethod
    def _secure(
        credentials: grpc.ChannelCredentials | None, tls: bool, tls_files: dict[str, PemPath | None]
    ) -> grpc.ChannelCredentials | None:
        """The channel's credentials: the caller's own, or TLS from the files (or
        grpcio's bundled roots with ``tls=True``); None for a plain-text channel."""
        if credentials is not None:
            return credentials
        if tls or any(path is not None for path in tls_files.values()):
            return _tls.grpc_credentials(**tls_files)
        return None

    def _after_failure(self, error: GradserveError, attempt: int, deadline: Deadline) -> float:
        delay = self.retry.next_delay(error, attempt, deadline.remaining_s())
        if delay is None:
            raise _core.give_up(error, attempt)
        log.info("retry %d/%d in %.3f s after %s", attempt, self.retry.max_retries, delay, error)
        return delay

    def _catalog_url(self) -> str:
        if self.catalog_url is None:
            raise ValueError(
                "the V2 gRPC protocol has no catalog rpc: pass catalog_url='http://host:8000' "
                "to read GET /v1/ops over HTTP, or use model_metadata(op) per op"
            )
        return self.catalog_url
