"""The HTTP clients: ``Client`` and ``AsyncClient`` over the V2 REST API (and GET /v1/ops).

Both are thin: ``_core`` builds every request and parses every answer; these classes
only send bytes with httpx, sleep between retries and enforce the call's deadline.
The two mirror each other method for method (``AsyncClient`` awaits what ``Client``
returns). Pass ``transport=`` to run against anything httpx can talk to, such as the
app in-process through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from gradserve_client import _core, _tls
from gradserve_client._core import (
    Deadline,
    HttpRequest,
    InferRequest,
    ModelMetadata,
    OpInfo,
    Outputs,
    ParamValue,
    RetryPolicy,
    ServerMetadata,
    TensorLike,
)
from gradserve_client._tls import PemPath
from gradserve_client.errors import (
    GradserveError,
    InvalidInputError,
    ServerError,
    TimedOutError,
    TlsError,
    UnavailableError,
)

log = logging.getLogger("gradserve_client")

DEFAULT_URL = "http://localhost:8000"
DEFAULT_TIMEOUT_S = 30.0
#: How long an idle pooled connection may be reused. A request sent on a keep-alive
#: connection just as the server closes it is lost, so the client must close first:
#: 4 s is below uvicorn's default keep-alive timeout (5 s, which httpx's own default
#: expiry equals: the race of issue 8) and far below gradserve's (75 s). Reconnecting
#: after 4 s idle costs one TCP handshake.
DEFAULT_KEEPALIVE_EXPIRY_S = 4.0
# httpx's own defaults for the pool size.
_MAX_CONNECTIONS = 100
_MAX_KEEPALIVE_CONNECTIONS = 20


def _limits(keepalive_expiry_s: float) -> httpx.Limits:
    if not keepalive_expiry_s >= 0:
        raise ValueError(f"keepalive_expiry_s must be >= 0, got {keepalive_expiry_s}")
    return httpx.Limits(
        max_connections=_MAX_CONNECTIONS,
        max_keepalive_connections=_MAX_KEEPALIVE_CONNECTIONS,
        keepalive_expiry=keepalive_expiry_s,
    )


def _transport_error(exc: httpx.TransportError, url: str, *, answer_started: bool) -> GradserveError:
    """An httpx transport failure -> its exception; ``answer_started``: the status line
    and headers had arrived when it failed.

    - A timeout has used up the call's time (each attempt gets what is left): final.
    - A URL or request httpx cannot send (unsupported scheme, a header it rejects)
      would fail the same way again: InvalidInputError, final.
    - A TLS handshake refused for want of trust (the server's certificate, or this
      client's under mutual TLS): TlsError, final.
    - The connection failed before any answer came: refused, or closed or reset while
      the request went out or while waiting (``RemoteProtocolError`` "Server
      disconnected without sending a response", ``ReadError``, ``WriteError``), which
      is what a keep-alive connection closed by the server at the moment it is reused
      gives. UnavailableError, retried: every op is a pure function.
    - It broke after the answer began: the server ran the request and its answer is
      lost. ServerError, final, like any unreadable answer: what broke it (a server
      that died writing a huge answer) would likely break the retry too.
    """
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return TimedOutError(f"no answer from {url} in time ({name})")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return InvalidInputError(f"cannot send to {url}: {name}: {exc}")
    reason = _tls.handshake_failure(exc)
    if reason is not None:  # a matter of trust, not of load: final
        return TlsError(f"TLS with {url} failed: {reason}")
    if answer_started:
        return ServerError(f"connection to {url} broke during the answer: {name}: {exc}")
    return UnavailableError(f"cannot reach {url}: {name}: {exc}")


def _security(
    headers: Mapping[str, str] | None,
    api_key: str | None,
    ca_cert: PemPath | None,
    client_cert: PemPath | None,
    client_key: PemPath | None,
) -> dict[str, Any]:
    """httpx's ``headers`` (with the key's Authorization) and ``verify`` (with the CA and
    the client certificate), from the clients' options (_tls.py)."""
    merged = dict(headers or {})
    authorization = _tls.bearer(api_key)
    if authorization is not None:
        merged["Authorization"] = authorization
    context = _tls.ssl_context(ca_cert, client_cert, client_key)
    return {"headers": merged, **({"verify": context} if context is not None else {})}


def _build_request(
    http: httpx.Client | httpx.AsyncClient, request: HttpRequest, deadline: Deadline
) -> httpx.Request:
    # Each attempt gets the time the call has left (TimedOutError when none).
    return http.build_request(
        request.method,
        request.path,
        headers=request.headers,
        content=request.body or None,
        timeout=deadline.check(),
    )


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise ServerError(f"{response.request.url.path}: answer is not JSON ({exc})") from None


class _HttpCommon:
    """State and pure helpers the sync and async clients share."""

    def __init__(self, url: str, timeout_s: float, retry: RetryPolicy | None, binary: bool) -> None:
        Deadline(timeout_s)  # validates
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.binary = binary
        self._metadata: dict[str, ModelMetadata] = {}

    def _deadline(self, timeout_s: float | None) -> Deadline:
        return Deadline(self.timeout_s if timeout_s is None else timeout_s)

    def _build(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue] | None,
        outputs: Sequence[str] | None,
    ) -> HttpRequest:
        request = InferRequest(
            op, tensors, _core.encode_params(params), None if outputs is None else tuple(outputs)
        )
        return _core.http_infer_request(request, binary=self.binary)

    def _after_failure(self, error: GradserveError, attempt: int, deadline: Deadline) -> float:
        delay = self.retry.next_delay(error, attempt, deadline.remaining_s())
        if delay is None:
            raise _core.give_up(error, attempt)
        log.info("retry %d/%d in %.3f s after %s", attempt, self.retry.max_retries, delay, error)
        return delay


class Client(_HttpCommon):
    """Synchronous HTTP client (V2 REST; binary tensor data unless ``binary=False``).

    Args:
        url: the server's HTTP base URL.
        timeout_s: default timeout of each call, retries and backoff included.
        retry: the retry policy (default: up to 3 retries on overload/unavailability).
        binary: send tensors with the V2 binary tensor extension (default) or as JSON.
        transport: an httpx transport to use instead of the network one.
        headers: extra headers sent with every request.
        keepalive_expiry_s: how long an idle pooled connection is kept for reuse;
            keep it below the server's keep-alive timeout (gradserve: 75 s,
            ``--http-keep-alive-s``). Ignored with ``transport=``, which pools on its own.
        api_key: the server's API key, sent as ``Authorization: Bearer <key>``
            (a wrong or missing one raises ``UnauthenticatedError``).
        ca_cert: PEM file of the CA that signed the server's certificate, for an
            ``https://`` URL whose server the system's roots do not vouch for.
        client_cert, client_key: PEM files of this client's certificate and key,
            for a server that requires mutual TLS. Both TLS options are ignored with
            ``transport=``, which makes its own connections.

    Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        binary: bool = True,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        keepalive_expiry_s: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        api_key: str | None = None,
        ca_cert: PemPath | None = None,
        client_cert: PemPath | None = None,
        client_key: PemPath | None = None,
    ) -> None:
        super().__init__(url, timeout_s, retry, binary)
        self._http = httpx.Client(
            base_url=self.url,
            transport=transport,
            **_security(headers, api_key, ca_cert, client_cert, client_key),
            timeout=timeout_s,
            limits=_limits(keepalive_expiry_s),
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- ops ---------------------------------------------------------------------

    def activation(
        self,
        op: str,
        x: TensorLike,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        """Run an activation op on ``x``.

        Args:
            op: the op name (``"relu"``, ``"gelu"``, ``"prelu"``...).
            x: the input tensor; nested lists and integer lists are sent as float32.
            grad: also return the gradients (``grad_x``, and ``grad_<input>`` of each extra input).
            inputs: extra tensors: ``grad_y`` (upstream gradient), prelu's ``alpha``,
                maxout's ``weight`` and ``bias``.
            timeout_s: this call's timeout (default: the client's).
            **params: the op's params, e.g. ``negative_slope=0.2``.

        Returns:
            ``y`` (and the gradients) as numpy arrays keyed by output name.
        """
        return self._run(op, _core.activation_inputs(x, inputs), params, None, grad, timeout_s)

    def loss(
        self,
        op: str,
        input: TensorLike | None = None,
        target: TensorLike | None = None,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        """Run a loss op (also ``regularization`` and ``full_loss``).

        Args:
            op: the op name (``"cross_entropy"``, ``"mse"``, ``"hinge"``...).
            input: scores or predictions (sent as float32 when given as a list).
            target: targets (integer lists are sent as int64 class indices).
            grad: also return the gradients (``grad_input``...).
            inputs: other tensors: ``weight``, ``pos_weight``, ``grad_loss``; for
                ``regularization`` its ``weight``; for ``full_loss`` ``x``, ``weight``, ``bias``.
            timeout_s: this call's timeout.
            **params: e.g. ``reduction="sum"``, ``label_smoothing=0.1``.
        """
        return self._run(op, _core.loss_inputs(input, target, inputs), params, None, grad, timeout_s)

    def init(
        self, op: str, shape: Sequence[int], *, timeout_s: float | None = None, **params: ParamValue
    ) -> Outputs:
        """Run a weight-initialization op: returns ``weight`` and the ``std`` it aimed for.

        Args:
            op: the op name (``"kaiming_normal"``, ``"xavier_uniform"``...).
            shape: the weight's shape, PyTorch style ([fan_out, fan_in, *kernel]).
            **params: e.g. ``seed=0``, ``dtype="float64"``, ``mode="fan_out"``.
        """
        return self._run(op, [], {**params, "shape": tuple(shape)}, None, False, timeout_s)

    def activation_stats(self, *, timeout_s: float | None = None, **params: ParamValue) -> Outputs:
        """Run the lab's experiment (API.md 6): a unit-Gaussian batch through a deep net.

        Args:
            **params: ``depth`` (10), ``width`` (500), ``batch`` (1000), ``activation``
                ("tanh"), ``init`` ("normal") and that init's own params (``std``,
                ``mode``, ``gain``...), ``seed`` (0), ``bins`` (50).
            timeout_s: this call's timeout.

        Returns:
            Per layer, layer 1 first: ``mean``, ``std``, ``saturated``, ``dead``,
            ``grad_std`` (float32 [depth]), ``hist`` (int64 [depth, bins]) and ``edges``
            (float32 [depth, bins + 1]), as numpy arrays.
        """
        return self._run("activation_stats", [], params, None, False, timeout_s)

    def infer(
        self,
        op: str,
        inputs: Mapping[str, TensorLike] | None = None,
        params: Mapping[str, ParamValue] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        grad: bool = False,
        timeout_s: float | None = None,
    ) -> Outputs:
        """Run any op with named tensors and params.

        ``outputs`` names the outputs to return (gradients included); without it the
        op's plain outputs come back, plus the gradients when ``grad``.
        """
        return self._run(op, _core.encode_inputs(inputs), params or {}, outputs, grad, timeout_s)

    def _run(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
        grad: bool,
        timeout_s: float | None,
    ) -> Outputs:
        deadline = self._deadline(timeout_s)
        if outputs is None and grad:
            outputs = _core.wanted_outputs(self._model_metadata(op, deadline), tensors)
        response = self._send(self._build(op, tensors, params, outputs), deadline)
        return _core.decode_http_infer(response.headers, response.content)

    # -- catalog and metadata ----------------------------------------------------

    def ops(self, *, timeout_s: float | None = None) -> list[OpInfo]:
        """The op catalog (GET /v1/ops): every op's family, inputs, params and outputs."""
        response = self._send(HttpRequest("GET", "/v1/ops"), self._deadline(timeout_s))
        return _core.ops_from_catalog(_json(response))

    def model_metadata(self, op: str, *, timeout_s: float | None = None) -> ModelMetadata:
        """The V2 metadata of one op (its input and output tensors); cached per client."""
        return self._model_metadata(op, self._deadline(timeout_s))

    def _model_metadata(self, op: str, deadline: Deadline) -> ModelMetadata:
        if op not in self._metadata:
            response = self._send(HttpRequest("GET", _core.model_path(op)), deadline)
            self._metadata[op] = _core.model_metadata_from_json(_json(response))
        return self._metadata[op]

    def server_metadata(self, *, timeout_s: float | None = None) -> ServerMetadata:
        """The V2 server metadata (name, version, extensions)."""
        body = _json(self._send(HttpRequest("GET", "/v2"), self._deadline(timeout_s)))
        return ServerMetadata(str(body["name"]), str(body["version"]), tuple(body.get("extensions", ())))

    # -- health ------------------------------------------------------------------

    def live(self) -> bool:
        """Whether the server process answers (V2 health/live). Never raises, never retries."""
        return self._health("/v2/health/live")

    def ready(self) -> bool:
        """Whether the server takes work (V2 health/ready: warm and not draining)."""
        return self._health("/v2/health/ready")

    def model_ready(self, op: str) -> bool:
        """Whether one op (V2 model) is ready."""
        return self._health(f"{_core.model_path(op)}/ready")

    def _health(self, path: str) -> bool:
        try:
            return self._http.get(path).status_code == 200
        except httpx.TransportError:
            return False

    # -- the one place that does I/O ------------------------------------------------

    def _send(self, request: HttpRequest, deadline: Deadline) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            outcome = self._attempt(_build_request(self._http, request, deadline))
            if isinstance(outcome, httpx.Response):
                if outcome.status_code < 300:
                    return outcome
                error = _core.http_error(outcome.status_code, outcome.headers, outcome.content)
            else:
                error = outcome
            time.sleep(self._after_failure(error, attempt, deadline))

    def _attempt(self, request: httpx.Request) -> httpx.Response | GradserveError:
        # Streamed, so that a failure before the answer's head (retryable) is told
        # apart from one while its body is read (final); see _transport_error.
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            return _transport_error(exc, self.url, answer_started=False)
        try:
            response.read()
        except httpx.TransportError as exc:
            return _transport_error(exc, self.url, answer_started=True)
        finally:
            response.close()
        return response


class AsyncClient(_HttpCommon):
    """Asynchronous twin of ``Client``: the same constructor (with an
    ``httpx.AsyncBaseTransport``, e.g. ``httpx.ASGITransport(app=app)``) and the same
    methods, awaited. Use ``async with``, or ``await aclose()``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        binary: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        keepalive_expiry_s: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        api_key: str | None = None,
        ca_cert: PemPath | None = None,
        client_cert: PemPath | None = None,
        client_key: PemPath | None = None,
    ) -> None:
        super().__init__(url, timeout_s, retry, binary)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            transport=transport,
            **_security(headers, api_key, ca_cert, client_cert, client_key),
            timeout=timeout_s,
            limits=_limits(keepalive_expiry_s),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def activation(
        self,
        op: str,
        x: TensorLike,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        """Run an activation op on ``x``; see ``Client.activation``."""
        return await self._run(op, _core.activation_inputs(x, inputs), params, None, grad, timeout_s)

    async def loss(
        self,
        op: str,
        input: TensorLike | None = None,
        target: TensorLike | None = None,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        """Run a loss op; see ``Client.loss``."""
        return await self._run(op, _core.loss_inputs(input, target, inputs), params, None, grad, timeout_s)

    async def init(
        self, op: str, shape: Sequence[int], *, timeout_s: float | None = None, **params: ParamValue
    ) -> Outputs:
        """Run a weight-initialization op; see ``Client.init``."""
        return await self._run(op, [], {**params, "shape": tuple(shape)}, None, False, timeout_s)

    async def activation_stats(self, *, timeout_s: float | None = None, **params: ParamValue) -> Outputs:
        """Run the lab's experiment; see ``Client.activation_stats``."""
        return await self._run("activation_stats", [], params, None, False, timeout_s)

    async def infer(
        self,
        op: str,
        inputs: Mapping[str, TensorLike] | None = None,
        params: Mapping[str, ParamValue] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        grad: bool = False,
        timeout_s: float | None = None,
    ) -> Outputs:
        """Run any op with named tensors and params; see ``Client.infer``."""
        return await self._run(op, _core.encode_inputs(inputs), params or {}, outputs, grad, timeout_s)

    async def _run(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
        grad: bool,
        timeout_s: float | None,
    ) -> Outputs:
        deadline = self._deadline(timeout_s)
        if outputs is None and grad:
            outputs = _core.wanted_outputs(await self._model_metadata(op, deadline), tensors)
        response = await self._send(self._build(op, tensors, params, outputs), deadline)
        return _core.decode_http_infer(response.headers, response.content)

    async def ops(self, *, timeout_s: float | None = None) -> list[OpInfo]:
        """The op catalog (GET /v1/ops)."""
        response = await self._send(HttpRequest("GET", "/v1/ops"), self._deadline(timeout_s))
        return _core.ops_from_catalog(_json(response))

    async def model_metadata(self, op: str, *, timeout_s: float | None = None) -> ModelMetadata:
        """The V2 metadata of one op; cached per client."""
        return await self._model_metadata(op, self._deadline(timeout_s))

    async def _model_metadata(self, op: str, deadline: Deadline) -> ModelMetadata:
        if op not in self._metadata:
            response = await self._send(HttpRequest("GET", _core.model_path(op)), deadline)
            self._metadata[op] = _core.model_metadata_from_json(_json(response))
        return self._metadata[op]

    async def server_metadata(self, *, timeout_s: float | None = None) -> ServerMetadata:
        """The V2 server metadata (name, version, extensions)."""
        body = _json(await self._send(HttpRequest("GET", "/v2"), self._deadline(timeout_s)))
        return ServerMetadata(str(body["name"]), str(body["version"]), tuple(body.get("extensions", ())))

    async def live(self) -> bool:
        """Whether the server process answers. Never raises, never retries."""
        return await self._health("/v2/health/live")

    async def ready(self) -> bool:
        """Whether the server takes work."""
        return await self._health("/v2/health/ready")

    async def model_ready(self, op: str) -> bool:
        """Whether one op (V2 model) is ready."""
        return await self._health(f"{_core.model_path(op)}/ready")

    async def _health(self, path: str) -> bool:
        try:
            return (await self._http.get(path)).status_code == 200
        except httpx.TransportError:
            return False

    async def _send(self, request: HttpRequest, deadline: Deadline) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._attempt(_build_request(self._http, request, deadline))
            if isinstance(outcome, httpx.Response):
                if outcome.status_code < 300:
                    return outcome
                error = _core.http_error(outcome.status_code, outcome.headers, outcome.content)
            else:
                error = outcome
            await asyncio.sleep(self._after_failure(error, attempt, deadline))

    async def _attempt(self, request: httpx.Request) -> httpx.Response | GradserveError:
        # Streamed, as in Client._attempt: a failure before the answer's head is retried.
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            return _transport_error(exc, self.url, answer_started=False)
        try:
            await response.aread()
        except httpx.TransportError as exc:
            return _transport_error(exc, self.url, answer_started=True)
        finally:
            await response.aclose()
        return response
