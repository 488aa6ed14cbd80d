"""HTTP connection guards: a connection cap and deadlines on what a client controls.

Flow position: the socket -> **GuardedHttpToolsProtocol** (uvicorn's httptools protocol,
subclassed; cli.py passes it as ``uvicorn.Config(http=...)``) -> the ASGI app. It runs
before any request reaches the app, so it bounds what a client can make the server hold
without sending a complete request or reading its answer:

- **Connections** (``http_max_connections``): a connection opened while that many are
  open gets 503 with Retry-After and ``Connection: close`` to its first request (after
  its body, so the client reads the answer rather than a reset). uvicorn's own
  ``limit_concurrency`` also answers 503, but without Retry-After, counting running
  tasks too, and logging a warning per refusal: a flood of refusals becomes a flood of
  log lines.
- **Headers** (``http_header_timeout_s``): from a request's first byte to the end of its
  headers. uvicorn has no such deadline (``timeout_keep_alive`` only runs between
  requests), so a client sending a byte a second held a connection forever.
- **Header size** (``http_max_header_bytes``): a request head that grows past it gets
  431 and the connection closes, checked as the bytes arrive. httptools joins a
  header's pieces by bytes concatenation, so one long header line cost time quadratic
  in its length (99 MiB: 7.7 s of CPU, the event loop stalled) before any check of
  ours could run.
- **Body** (``http_body_timeout_s``): from the end of the headers to the end of the
  body, for every route. A request past either deadline answers 408 (when no answer
  has started) and the connection closes; the handler waiting for the body sees the
  client as gone (``http.disconnect``).
- **Answers nobody reads** (``http_write_timeout_s``): uvicorn stops writing a
  connection's next answer while its transport's buffer is over the high-water mark
  (flow control), so a client that never reads holds at most one answer (bounded by the
  answer-size settings) plus the socket buffers; but it held them forever. Past the
  deadline with writing still paused the connection is aborted, its buffer dropped.
- A new connection that sends nothing is closed after the keep-alive timeout, like an
  idle kept-alive one (uvicorn arms that timer only after a first answer).

Deadlines cost nothing for a request that arrives in one read: a timer is armed only
when a read ends with a request unfinished, and it re-checks the phase when it fires.
Time while uvicorn itself has paused reading (a pipelined request waiting its turn, or a
body the handler has not consumed yet) does not count against the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gradserve.config import Settings

log = logging.getLogger(__name__)

_IDLE, _HEADERS, _BODY = 0, 1, 2
_LOG_EVERY_S = 60.0  # a refusal warning at most this often: a flood must not flood the log

_TIMEOUT_BODY = b'{"error":{"code":"request_timeout","message":"request not received in time"}}'
TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)
_HEADERS_BODY = b'{"error":{"code":"headers_too_large","message":"request headers over %d bytes"}}'
_OVER_CAP_BODY = b'{"error":{"code":"unavailable","message":"too many open connections; retry after the Retry-After delay"}}'


async def _over_capacity(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app that answers a request on a connection past the cap: 503, then the
    connection closes. The body is read (and dropped) first: closing a socket with
    unread data makes the kernel send a reset, which can destroy the answer in flight."""
    while (await receive()).get("more_body", False):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_OVER_CAP_BODY)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _OVER_CAP_BODY, "more_body": False})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards above; ``guarded_protocol`` makes a
    subclass carrying the settings (uvicorn instantiates the class itself)."""

    max_connections = 2048
    max_header_bytes = 65_536
    header_timeout_s = 10.0
    body_timeout_s = 60.0
    write_timeout_s = 60.0
    _last_warning = -_LOG_EVERY_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._phase_began = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._over_cap = False
        self._running: RequestResponseCycle | None = None  # the request being answered
        self._head_bytes = 0  # bytes read while the current request's head is unfinished

    # -- connection cap --------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Counted before this one joins: the cap-th connection is the last one served.
        self._over_cap = len(self.connections) >= self.max_connections
        super().connection_made(transport)
        if self._over_cap:
            self._warn("HTTP connection cap reached (%d open); answering 503", len(self.connections))
        # A connection that never sends a byte is idle like a kept-alive one.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, _over_capacity if self._over_cap else app)

    @classmethod
    def _warn(cls, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - GuardedHttpToolsProtocol._last_warning >= _LOG_EVERY_S:
            GuardedHttpToolsProtocol._last_warning = now
            log.warning(message, *args)

    # -- header and body deadlines ---------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._phase_began = _HEADERS, self.loop.time()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase, self._phase_began = _BODY, self.loop.time()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = _IDLE
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        before = self._phase
        super().data_received(data)
        if self._phase == _HEADERS:
            # The head is still unfinished after this read: all of it counts (a read that
            # began a request may also hold the end of the one before: counted too, a
            # bounded overcount). Checked per read, so httptools is fed at most one read
            # (<= 256 KiB) past the limit.
            self._head_bytes = (self._head_bytes if before == _HEADERS else 0) + len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse_head()
                return
        # Only a read that leaves a request unfinished needs a deadline.
        if self._phase != _IDLE and self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_at(self._phase_deadline(), self._check_deadline)

    def _refuse_head(self) -> None:
        self._phase = _IDLE
        if self._running is None or self._running.response_complete:
            body = _HEADERS_BODY % self.max_header_bytes
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
        # else an answer to an earlier (pipelined) request is being written: just close.
        self._warn("HTTP request head over %d bytes; answering 431", self.max_header_bytes)
        self.transport.close()

    def _phase_deadline(self) -> float:
        limit = self.header_timeout_s if self._phase == _HEADERS else self.body_timeout_s
        return self._phase_began + limit

    def _check_deadline(self) -> None:
        self._deadline = None
        if self._phase == _IDLE or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:
            # uvicorn stopped reading (pipelining, or a body not consumed yet): the
            # client is not the slow one; its clock restarts when reading does.
            self._phase_began = now
        deadline = self._phase_deadline()
        if now < deadline:
            self._deadline = self.loop.call_at(deadline, self._check_deadline)
            return
        what = "headers" if self._phase == _HEADERS else "body"
        log.info("closing %s: request %s not received in time", self.client, what)
        cycle = self.cycle
        if self._phase == _BODY and cycle is not None and not cycle.response_complete:
            # The handler waiting for the body sees the client gone, and anything it
            # still sends is dropped (uvicorn skips writes to a disconnected cycle).
            answer = not cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
        else:
            # Between answers (headers phase) unless a previous answer is still being
            # written (pipelining): then a 408 would interleave with it.
            answer = cycle is None or cycle.response_complete
        if answer:
            self.transport.write(TIMEOUT_408)
        self.transport.close()

    # -- answers nobody reads --------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.write_timeout_s, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _write_timed_out(self) -> None:
        self._write_deadline = None
        if self.flow.write_paused:
            log.info("aborting %s: answer unread for %.0f s", self.client, self.write_timeout_s)
            # A reset, not a close: a closed socket keeps its unsent data in the kernel
            # (FIN-WAIT-1) for as long as the peer's window stays shut; linger 0 drops it.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._deadline, self._write_deadline):
            if timer is not None:
                timer.cancel()
        self._deadline = self._write_deadline = None
        self._phase = _IDLE
        # uvicorn marks only the newest request's cycle disconnected; with pipelining the
        # one being answered is older, and its next write would hit a closed transport
        # (a RuntimeError traceback and a 500 attempt). Mark every unanswered one.
        for cycle in (self._running, *(c for c, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)


def guarded_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with ``settings``' limits."""
    return type(
        "GradservHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_connections": settings.http_max_connections,
            "max_header_bytes": settings.http_max_header_bytes,
            "header_timeout_s": settings.http_header_timeout_s,
            "body_timeout_s": settings.http_body_timeout_s,
            "write_timeout_s": settings.http_write_timeout_s,
        },
    )
