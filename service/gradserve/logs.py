"""Log lines: the text or JSON format of every line, and the access log line.

Flow position: ``gradserve serve`` calls ``configure`` once at start; each transport's
exit (rest/gate.py, grpc/calls.py) calls ``access`` once per call, with the call's
``RequestContext`` (tracing.py).

- ``log_format=text``: ``<time> <LEVEL> <logger>: <message>``, as before.
- ``log_format=json``: one JSON object per line: ``ts``, ``level``, ``logger``,
  ``message``, ``request_id`` when the line was written while serving a request, the
  access line's fields, and ``exc`` (the traceback) for errors. uvicorn's own lines go
  through the same handler (cli.py gives uvicorn no logging config of its own), so a
  log shipper reads one format.
- The access line (logger ``gradserve.access``, INFO, setting ``access_log``): one per
  HTTP request or gRPC call, with its id, transport, method and path (or gRPC method),
  op, status, error code, batch size, and queue, compute and total milliseconds. It
  never holds tensor contents, params or error messages (which may quote input
  values): only names, numbers and codes.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import Any, TextIO

import orjson

from gradserve.config import Settings
from gradserve.tracing import CURRENT, RequestContext

ACCESS = logging.getLogger("gradserve.access")
_MAX_PATH_CHARS = 256
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord attributes that are not a caller's ``extra``.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "fields"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (orjson: no NaN surprises, fast)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            # An access line's message is its fields: not formatted twice.
            "message": "request" if isinstance(fields, dict) else record.getMessage(),
        }
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            ctx = CURRENT.get()
            if ctx is not None:
                entry["request_id"] = ctx.request_id
        for key, value in record.__dict__.items():  # a caller's extra={...}
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def _iso(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def configure(settings: Settings) -> None:
    """The process's one log handler (stderr), in ``log_format``, at ``log_level``; and
    the access lines' direct writer to the same stream (``AccessWriter``)."""
    global _writer
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if settings.log_format == "json" else logging.Formatter(_TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # No format here shows the thread, process id or process name, and each costs every
    # record a call (the multiprocessing one, a module torch loads, the most): off, as
    # the logging HOWTO's "Optimization" section suggests.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if _writer is not None:
        _writer.flush()
    _writer = AccessWriter(sys.stderr, json=settings.log_format == "json")
    atexit.register(_writer.flush)  # lines of the loop's last turn


class AccessWriter:
    """Access lines straight to the log's stream, one write per event-loop turn.

    Through ``logging`` a line cost ~25 µs of the event loop in place (a LogRecord, the
    handler's lock, a formatter, a write and flush per line): ~20% of a small request
    (docs/architecture.md). This makes the same line (the handler's format, the same
    fields) from the fields alone and joins the lines of one loop turn into one write.
    It is installed only by ``configure`` (``gradserve serve``), which owns the process's
    logging; elsewhere (tests, an embedding app) lines go through ``logging`` as records
    of ``gradserve.access``. Either way ``gradserve.access`` must log INFO.
    """

    _MAX_PENDING = 256  # lines; past it they are written at once

    def __init__(self, stream: TextIO, *, json: bool) -> None:
        self.stream = stream
        self.json = json
        self._pending: list[str] = []
        self._scheduled = False
        self._second = -1
        self._second_text = ""

    def write(self, fields: dict[str, Any]) -> None:
        now = time.time()
        if self.json:
            entry = {"ts": self._stamp(now, json=True), "level": "INFO", "logger": ACCESS.name}
            entry["message"] = "request"
            entry.update(fields)
            line = orjson.dumps(entry, default=str).decode() + "\n"
        else:
            line = f"{self._stamp(now, json=False)} INFO {ACCESS.name}: {_TextLine(fields)}\n"
        self._pending.append(line)
        if len(self._pending) >= self._MAX_PENDING:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
                self._scheduled = True
            except RuntimeError:  # no loop: write now
                self.flush()

    def _stamp(self, now: float, *, json: bool) -> str:
        """The handler's timestamp (logging's asctime, or the JSON ``ts``), the seconds
        part made once per second."""
        second = int(now)
        millis = int((now - second) * 1000)
        if second != self._second:
            self._second = second
            self._second_text = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                if json
                else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            )
        return f"{self._second_text}.{millis:03d}Z" if json else f"{self._second_text},{millis:03d}"

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            text, self._pending = "".join(self._pending), []
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed at exit: nothing to do
                pass


# Set by configure(): the process's logging is gradserve's (see AccessWriter).
_writer: AccessWriter | None = None


def access(
    ctx: RequestContext,
    method: str | None,
    path: str,
    status: int | str,
    client: str | None,
) -> None:
    """The access line of one call (a no-op unless ``gradserve.access`` logs INFO)."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    total_ms = (time.perf_counter() - ctx.started_s) * 1000
    if len(path) > _MAX_PATH_CHARS or not path.isprintable():
        # A decoded URL path is the client's text: a newline in it must not start a
        # forged line of the text log.
        path = path[:_MAX_PATH_CHARS].encode("unicode_escape").decode("ascii")
    fields: dict[str, Any] = {
        "request_id": ctx.request_id,
        "transport": ctx.transport,
        "method": method,
        "path": path,
        "op": ctx.op,
        "status": status,
        "error": None if ctx.outcome in (None, "success") else ctx.outcome,
        "batch_size": ctx.batch_size,
        "queue_ms": None if ctx.queue_s is None else round(ctx.queue_s * 1000, 3),
        "compute_ms": None if ctx.compute_s is None else round(ctx.compute_s * 1000, 3),
        "total_ms": round(total_ms, 3),
        "client": client,
    }
    if _writer is not None:
        _writer.write(fields)
        return
    # The record is made and handed to the handlers directly: Logger.info would first
    # walk the stack for the caller's file and line (findCaller), which no format here
    # shows, a third of the line's cost. The text is formatted lazily from the fields.
    record = ACCESS.makeRecord(
        ACCESS.name, logging.INFO, "", 0, "%s", (_TextLine(fields),), None, extra={"fields": fields}
    )
    ACCESS.handle(record)


class _TextLine:
    """``key=value`` pairs of the access line, formatted when a text handler asks."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        f = self.fields
        method = f"{f['method']} " if f["method"] else ""
        head = f"{f['request_id']} {f['transport']} {method}{f['path']} {f['status']}"
        rest = " ".join(f"{k}={v}" for k, v in f.items() if v is not None and k not in _TEXT_HEAD)
        return f"{head} {rest}"


_TEXT_HEAD = frozenset({"request_id", "transport", "method", "path", "status"})
