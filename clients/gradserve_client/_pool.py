"""Keep-alive HTTP/1.1 connection pools: ``SyncPool`` (sockets, shared by threads) and
``AsyncPool`` (asyncio protocols, one event loop).

Flow position: ``_http.py`` (a call's attempt) -> **a pool's ``send``** (take or open a
connection, write the request ``_http11`` framed, read until ``_http11`` says the
answer is complete) -> an ``Answer``, or a ``GradserveError`` already classified:

- refused, or closed/reset before any answer byte (a keep-alive connection the server
  closed just as it was reused): ``UnavailableError``, which the clients retry;
- broken after the answer began (the server ran the request): ``ServerError``, final;
- the time given ran out (connecting, waiting for a pooled connection, or reading):
  ``TimedOutError``;
- a TLS handshake refused for want of trust: ``TlsError``.

An idle connection is reused for at most ``keepalive_expiry_s`` (below the server's
keep-alive timeout, so that the client, not the server, closes an idle connection);
at most ``max_connections`` are open at once, and a call past that waits for one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping

from gradserve_client import _tls
from gradserve_client._http11 import Answer, AnswerParser, Origin, ProtocolError
from gradserve_client.errors import GradserveError, ServerError, TimedOutError, TlsError, UnavailableError

_RECV_BYTES = 256 * 1024
# Below this idle time a pooled socket is reused without first checking that the server
# has not closed it: under load connections come back within milliseconds, and a server
# closes an idle one only after its keep-alive timeout (seconds). The retry of a
# connection closed before any answer byte covers the rest.
_CHECK_IDLE_S = 0.05


def classify(exc: BaseException, url: str, *, started: bool) -> GradserveError:
    """A failure of one exchange -> its exception (see the module docstring)."""
    if isinstance(exc, GradserveError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, TimeoutError | socket.timeout):
        return TimedOutError(f"no answer from {url} in time ({name})")
    reason = _tls.handshake_failure(exc)
    if reason is not None:  # a matter of trust, not of load: final
        return TlsError(f"TLS with {url} failed: {reason}")
    if started:
        return ServerError(f"connection to {url} broke during the answer: {name}: {exc}")
    return UnavailableError(f"cannot reach {url}: {name}: {exc}")


def default_ssl_context(context: ssl.SSLContext | None) -> ssl.SSLContext:
    """The caller's context (``_tls.ssl_context``), else the system's roots."""
    return context if context is not None else ssl.create_default_context()


class SyncPool:
    """Blocking sockets, shared by any number of threads (one connection per call)."""

    def __init__(
        self,
        origin: Origin,
        context: ssl.SSLContext | None,
        keepalive_expiry_s: float,
        max_connections: int,
    ) -> None:
        self.origin = origin
        self.keepalive_expiry_s = keepalive_expiry_s
        self.max_connections = max_connections
        self._context = default_ssl_context(context) if origin.tls else None
        self._idle: collections.deque[tuple[socket.socket, float]] = collections.deque()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = False

    def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> Answer:
        self.origin.check()
        end = time.monotonic() + timeout_s
        if not self._slots.acquire(timeout=timeout_s):
            raise TimedOutError(
                f"no free connection to {self.origin.url} in time (pool of {self.max_connections})"
            )
        try:
            sock = self._take()
            if sock is None:
                sock = self._connect(end)
            parser = AnswerParser(method == "HEAD")
            try:
                answer = self._exchange(sock, self.origin.request(method, path, headers, body), parser, end)
            except BaseException as exc:
                sock.close()
                if isinstance(exc, Exception):
                    raise classify(exc, self.origin.url, started=parser.started) from exc
                raise
            if answer.keep_alive and not self._closed:
                with self._lock:
                    self._idle.append((sock, time.monotonic()))
            else:
                sock.close()
            return answer
        finally:
            self._slots.release()

    def _take(self) -> socket.socket | None:
        """The most recently used idle socket that is still good, closing expired ones."""
        now = time.monotonic()
        with self._lock:
            while self._idle and now - self._idle[0][1] > self.keepalive_expiry_s:
                self._idle.popleft()[0].close()
            while self._idle:
                sock, since = self._idle.pop()
                if now - since < _CHECK_IDLE_S or _still_open(sock):
                    return sock
                sock.close()
        return None

    def _connect(self, end: float) -> socket.socket:
        host, port = self.origin.host, self.origin.port
        try:
            sock = socket.create_connection((host, port), timeout=max(1e-3, end - time.monotonic()))
        except Exception as exc:
            raise classify(exc, self.origin.url, started=False) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock.settimeout(max(1e-3, end - time.monotonic()))
                sock = self._context.wrap_socket(sock, server_hostname=host)
        except Exception as exc:
            sock.close()
            raise classify(exc, self.origin.url, started=False) from exc
        return sock

    @staticmethod
    def _exchange(sock: socket.socket, data: list[bytes], parser: AnswerParser, end: float) -> Answer:
        sock.settimeout(max(1e-3, end - time.monotonic()))
        for piece in data:
            sock.sendall(piece)
        while True:
            chunk = sock.recv(_RECV_BYTES)
            answer = parser.feed(chunk) if chunk else parser.eof()
            if answer is not None:
                return answer
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(left)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            while self._idle:
                self._idle.pop()[0].close()


def _still_open(sock: socket.socket) -> bool:
    """Whether an idle socket is still usable: nothing to read (the server neither
    closed it nor sent anything unasked). poll, not a peek: TLS sockets refuse peeks."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


class _Connection(asyncio.Protocol):
    """One pooled asyncio connection: feeds what arrives to the current call's parser."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: AnswerParser | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        waiter, parser = self.waiter, self.parser
        if waiter is None or parser is None or waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            answer = parser.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if answer is not None:
            self.waiter = None
            waiter.set_result(answer)

    def eof_received(self) -> bool:
        self.closed = True
        waiter, parser = self.waiter, self.parser
        if waiter is not None and parser is not None and not waiter.done():
            try:
                waiter.set_result(parser.eof())
            except ProtocolError as exc:
                waiter.set_exception(exc)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ProtocolError("Server disconnected without sending a response."))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def timed_out(self) -> None:
        self._fail(TimeoutError("timed out"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            # RuntimeError: its loop is closed already; the socket goes with the transport.
            with contextlib.suppress(RuntimeError):
                self.transport.abort()


class AsyncPool:
    """asyncio connections of one event loop (the one of the first call)."""

    def __init__(
        self,
        origin: Origin,
        context: ssl.SSLContext | None,
        keepalive_expiry_s: float,
        max_connections: int,
    ) -> None:
        self.origin = origin
        self.keepalive_expiry_s = keepalive_expiry_s
        self.max_connections = max_connections
        self._context = default_ssl_context(context) if origin.tls else None
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open = 0
        # Calls waiting for a connection: each gets one handed over, or None (a slot
        # freed: it opens its own).
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> Answer:
        self.origin.check()
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections belong to the loop that opened them; one used from another
            # loop (a second asyncio.run) cannot be read. Start afresh on this one.
            self._idle.clear()
            self._waiters.clear()
            self._open, self._loop = 0, loop
        end = loop.time() + timeout_s
        conn = await self._acquire(loop, end)
        parser = AnswerParser(method == "HEAD")
        waiter: asyncio.Future[Answer] = loop.create_future()
        conn.parser, conn.waiter = parser, waiter
        timer = loop.call_at(end, conn.timed_out)
        try:
            assert conn.transport is not None
            for piece in self.origin.request(method, path, headers, body):
                conn.transport.write(piece)
            answer = await waiter
        except BaseException as exc:
            conn.close()
            self._release(conn)
            if isinstance(exc, Exception):
                raise classify(exc, self.origin.url, started=parser.started) from exc
            raise  # cancelled: the connection was mid-exchange, so it is closed
        finally:
            timer.cancel()
            conn.parser = conn.waiter = None
        if not answer.keep_alive:
            conn.close()
        self._release(conn)
        return answer

    async def _acquire(self, loop: asyncio.AbstractEventLoop, end: float) -> _Connection:
        now = time.monotonic()
        idle = self._idle
        while idle and now - idle[0].idle_since > self.keepalive_expiry_s:
            idle.popleft().close()
            self._open -= 1
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self._open -= 1
        if self._open >= self.max_connections:
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_at(end, _expire, waiter)
            try:
                handed = await waiter
            except TimeoutError:
                raise TimedOutError(
                    f"no free connection to {self.origin.url} in time (pool of {self.max_connections})"
                ) from None
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()  # handed over just as this call was cancelled
                    if handed is not None:
                        self._release(handed)
                    else:
                        self._free_slot()
                raise
            finally:
                timer.cancel()
            if handed is not None:
                return handed
            # else: a slot was handed over; open a connection in it
        else:
            self._open += 1
        try:
            return await self._connect(loop, end)
        except BaseException:
            self._free_slot()
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop, end: float) -> _Connection:
        conn = _Connection()
        host = self.origin.host
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn,
                    host,
                    self.origin.port,
                    ssl=self._context,
                    server_hostname=host if self._context is not None else None,
                ),
                max(1e-3, end - loop.time()),
            )
        except Exception as exc:
            raise classify(exc, self.origin.url, started=False) from exc
        return conn

    def _release(self, conn: _Connection) -> None:
        """A call is done with ``conn``: hand it to a waiting call, or keep it idle."""
        if conn.closed or self._closed:
            conn.close()
            self._free_slot()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _free_slot(self) -> None:
        """A connection's slot is free: a waiting call takes it over (and opens its own
        connection in it), else the count of open connections drops."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
            self._open -= 1


def _expire(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
