"""Reading request bodies within a byte limit, and noticing clients that leave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request

from gradserve.errors import ClientDisconnected, RequestTooLarge

T = TypeVar("T")

# Bodies (and JSON answers) past this many bytes are parsed (and built) on a worker
# thread: orjson and numpy take ~10 ms per MiB, and the event loop serves every other
# connection meanwhile. The thread still holds the GIL, but Python hands it back to the
# loop every switch interval (5 ms) instead of after the whole parse.
OFFLOAD_BYTES = 1 << 20


# Where V2 binary tensor data lands in the buffer read_body fills: at BODY_ALIGN past a
# multiple of it from the buffer's start. CPython allocates bytearrays 16-byte aligned,
# so the data's address is 16-aligned: enough for every dtype, and tensors can alias it.
BODY_ALIGN = 64


async def read_body(request: Request, limit: int, *, align_offset: int = 0) -> memoryview:
    """The whole body as a writable view, refusing with 413 as soon as it is known to
    pass ``limit``: from Content-Length before reading anything, or while streaming a
    chunked body.

    With a Content-Length the body is copied once, chunk by chunk, into a buffer
    allocated up front, placed so that byte ``align_offset`` (where V2 binary tensor
    data starts) is ``BODY_ALIGN``-aligned.
    """
    try:
        return await _read_body(request, limit, align_offset)
    except ClientDisconnect:
        # The client left mid-body: nobody reads the answer, and it is not a 500.
        raise ClientDisconnected("the client disconnected before sending the whole body") from None


async def _read_body(request: Request, limit: int, align_offset: int) -> memoryview:
    declared = request.headers.get("content-length")
    # ASCII digits only: str.isdigit() takes "²", which int() refuses. (The HTTP parser
    # refuses a malformed Content-Length before we see it; this keeps us safe alone.)
    if declared is not None and declared.isascii() and declared.isdigit() and len(declared) <= 18:
        size = int(declared)
        if size > limit:
            raise RequestTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
        pad = -align_offset % BODY_ALIGN if 0 <= align_offset <= size else 0
        view = memoryview(bytearray(pad + size))[pad:]
        filled = 0
        async for chunk in request.stream():
            end = filled + len(chunk)
            if end > size:  # the HTTP parser stops this first; never write past the buffer
                raise RequestTooLarge(f"request body is longer than its Content-Length of {size} bytes")
            view[filled:end] = chunk
            filled = end
        return view[:filled]
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    pad = -align_offset % BODY_ALIGN if 0 <= align_offset <= len(body) else 0
    buf = bytearray(pad + len(body))
    buf[pad:] = body
    return memoryview(buf)[pad:]


async def off_loop(size_bytes: int, work: Callable[[], T]) -> T:
    """``work()`` on the event loop when it is small, on a worker thread when it is not."""
    if size_bytes < OFFLOAD_BYTES:
        return work()
    return await asyncio.get_running_loop().run_in_executor(None, work)


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
