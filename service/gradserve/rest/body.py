"""Reading request bodies within a byte limit, and noticing clients that leave."""

from __future__ import annotations

import asyncio
import contextlib
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
    """Await ``work``, cancelling it if the client disconnects first.

    After the body is read, the next ASGI message is ``http.disconnect``; waiting for
    it (not polling) lets a queued request be dropped before it runs.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ClientDisconnected("the client disconnected before its answer was ready")
        return task.result()
    finally:
        # Also when this handler is itself cancelled: the work must not outlive it.
        if not task.done():
            task.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
