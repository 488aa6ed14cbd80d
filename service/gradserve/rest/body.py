"""Reading request bodies within a byte limit, and noticing clients that leave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import grpc
from starlette.requests import Request

from gradserve.errors import ErrorKind, GradservError, RequestTooLarge

T = TypeVar("T")


class ClientDisconnected(GradservError):
    """The client left before its answer was ready (nginx's 499); nobody reads the
    answer, but raising it (not CancelledError) keeps uvicorn from logging a traceback."""

    kind = ErrorKind("client_disconnected", 499, grpc.StatusCode.CANCELLED)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it is known to pass ``limit``:
    from Content-Length before reading anything, or while streaming a chunked body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in this task, cancelling it if the client disconnects first.

    After the body is read, the next ASGI message is ``http.disconnect``; one watcher
    task waits for it (no polling) and cancels this handler's task, so a queued request
    is dropped before it runs. The work itself runs in the handler's own task: no
    extra task or ``asyncio.wait`` per request on the hot path.
    """
    handler = asyncio.current_task()
    assert handler is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        handler.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown): not ours to swallow
        handler.uncancel()
        raise ClientDisconnected("the client disconnected before its answer was ready") from None
    finally:
        watcher.cancel()
