"""A minimal keep-alive HTTP/1.1 client connection for the load generators.

Flow position: bench/loadgen.py (py-http cells) and bench/overload.py (the overload
run) -> **RawHttpConnection** -> the server under test. One request at a time on a
connection, request bytes built once by the caller, the answer framed by its
Content-Length and reduced to what the callers read: the status, Retry-After and
whether the server closes the connection. Far cheaper per request than aiohttp or
httpx, so that a load generator sharing the CPUs with the server takes less of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import NamedTuple


class Head(NamedTuple):
    """What a caller reads of an answer."""

    status: int
    retry_after_s: float | None
    close: bool


class RawHttpConnection(asyncio.Protocol):
    """See the module doc."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.head = Head(0, None, False)
        self.waiter: asyncio.Future[Head] | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> RawHttpConnection:
        _, conn = await asyncio.get_running_loop().create_connection(cls, host, port)
        return conn

    @classmethod
    async def open_url(cls, url: str) -> RawHttpConnection:
        host, _, port = url.removeprefix("http://").partition("/")[0].partition(":")
        return await cls.open(host, int(port or 80))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).lower().split(b"\r\n")
            length = 0
            retry_after: float | None = None
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
                elif name == b"retry-after":
                    with contextlib.suppress(ValueError):
                        retry_after = float(value)
                elif name == b"connection":
                    close = b"close" in value
            self.head = Head(int(lines[0][9:12]), retry_after, close)
            self.need = end + 4 + length
        if len(self.buf) >= self.need:
            del self.buf[: self.need]
            self.need = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(self.head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("server closed the connection"))

    async def send(self, request: bytes) -> Head:
        """Write one request and wait for its whole answer."""
        assert self.transport is not None
        if self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
