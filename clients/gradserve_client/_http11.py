"""HTTP/1.1 on the wire, I/O-free: the request's bytes and an incremental answer parser.

Flow position: ``_http.py`` (a call) -> ``_pool.py`` (a pooled connection) -> **here**
(bytes out: ``Origin.request``; bytes in: ``AnswerParser.feed``) -> the ``Answer`` back
to ``_core`` for decoding. Nothing here opens a socket: the sync and async pools share
this module, so they frame requests and read answers the same way.

Why not httpx: per call, httpx and httpcore built a URL, a Request, a Response, a
headers multidict, several context managers and (httpcore 1.0 without sniffio) tried
an import, costing about 1 ms of client CPU for an 8x10 tensor; this module is the part
of HTTP/1.1 the SDK needs: one request shape (method, path, a few headers, a body with
Content-Length) and answers framed by Content-Length, chunked, or the connection's end.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from gradserve_client.errors import InvalidInputError

_MAX_HEAD_BYTES = 64 * 1024  # a longer answer head is not an HTTP server's answer
_JOIN_BELOW_BYTES = 256 * 1024


class ProtocolError(Exception):
    """The answer is not HTTP/1.1 the parser can read (or the request cannot be sent)."""


@dataclass(frozen=True)
class Answer:
    """A complete answer: status, headers (names lowercased) and the decoded body."""

    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


def check_header(name: str, value: str) -> None:
    # A CR or LF would split the header block: refuse it, as httpx did (LocalProtocolError).
    if any(c in name for c in "\r\n:") or not name or any(c in value for c in "\r\n"):
        raise InvalidInputError(f"illegal header {name!r}: {value!r}")


class Origin:
    """The server a client talks to (scheme, host, port) and its constant request headers.

    An unusable URL is not an error until a call is made (``check``), as with httpx:
    constructing a client never fails on its URL.
    """

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self.url = url
        self.error: InvalidInputError | None = None
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname or ""
        try:
            port = parts.port
        except ValueError:
            port, self.error = None, InvalidInputError(f"cannot send to {url}: bad port")
        self.port = port or (443 if self.scheme == "https" else 80)
        self.tls = self.scheme == "https"
        self.prefix = parts.path.rstrip("/")
        if self.scheme not in ("http", "https"):
            self.error = InvalidInputError(
                f"cannot send to {url}: UnsupportedProtocol: the scheme must be http or https"
            )
        elif not self.host:
            self.error = InvalidInputError(f"cannot send to {url}: no host")
        default_port = 443 if self.tls else 80
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        host_value = netloc if self.port == default_port else f"{netloc}:{self.port}"
        merged = {"Host": host_value, "User-Agent": "gradserve-client", "Accept": "*/*"}
        merged.update(headers)
        lines = []
        for name, value in merged.items():
            try:
                check_header(name, str(value))
            except InvalidInputError as exc:
                self.error = self.error or exc
            lines.append(f"{name}: {value}\r\n")
        # Encoded once: every request repeats them.
        self._constant = "".join(lines).encode("latin-1", "replace")

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def request(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> list[bytes]:
        """The request's bytes as the pieces to send in turn: one piece for a small body
        (one write, one packet), head and body apart for a large one (a copy saved)."""
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        length = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT") else ""
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n{extra}{length}".encode("latin-1")
        if len(body) > _JOIN_BELOW_BYTES:
            return [b"".join((head, self._constant, b"\r\n")), body]
        return [b"".join((head, self._constant, b"\r\n", body))]


class AnswerParser:
    """Feed it the bytes of one answer as they arrive; ``feed`` returns the ``Answer``
    once it is complete. ``started`` says whether any byte came, which decides whether a
    broken connection may be retried (_http.py)."""

    def __init__(self, head_request: bool = False) -> None:
        self._buf = bytearray()
        self._head_request = head_request
        self.started = False
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep_alive = True
        self._length: int | None = None  # body bytes still to read (Content-Length)
        self._chunked = False
        self._until_close = False
        self._have_head = False
        self._body = bytearray()  # chunked or close-delimited bodies
        # A Content-Length body: its pieces as received, joined once when complete.
        self._pieces: list[bytes] = []
        self._have = 0
        self._chunk_left = -1  # -1: a chunk-size line is next

    def feed(self, data: bytes) -> Answer | None:
        if data:
            self.started = True
            if self._length is not None:  # the head is in: body bytes go straight to the pieces
                self._pieces.append(data)
                self._have += len(data)
                return self._length_done()
            self._buf += data
        if not self._have_head:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD_BYTES:
                    raise ProtocolError("answer head too long")
                return None
            self._parse_head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
            if 100 <= self._status < 200:  # an interim answer (100 Continue): skip it
                rest = bytes(self._buf)
                self.__init__(self._head_request)  # type: ignore[misc]
                self.started = True
                return self.feed(rest)
        if self._chunked:
            return self._feed_chunked()
        if self._length is not None:
            if self._buf:
                self._pieces.append(bytes(self._buf))
                self._have = len(self._buf)
                self._buf = bytearray()
            return self._length_done()
        return None  # until the connection closes: see eof()

    def _length_done(self) -> Answer | None:
        assert self._length is not None
        if self._have < self._length:
            return None
        body = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        if len(body) > self._length:  # bytes past the answer: the connection is not reusable
            body, self._keep_alive = body[: self._length], False
        self._pieces = []
        return self._answer(body)

    def eof(self) -> Answer:
        """The connection ended: the answer, if its framing allows ending here."""
        if self._have_head and self._until_close:
            self._body, self._buf = self._buf, bytearray()
            return self._answer(bytes(self._body))
        if not self.started:
            raise ProtocolError("Server disconnected without sending a response.")
        raise ProtocolError("peer closed connection without sending complete message body")

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
        try:
            self._status = int(status_line[1])
        except ValueError:
            raise ProtocolError(f"bad status line: {lines[0][:80]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"bad header line: {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self._headers = headers
        self._have_head = True
        connection = headers.get("connection", "").lower()
        self._keep_alive = (
            "keep-alive" in connection if status_line[0] == "HTTP/1.0" else "close" not in connection
        )
        if self._head_request or self._status in (204, 304) or 100 <= self._status < 200:
            self._length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            try:
                self._length = int(headers["content-length"])
            except ValueError:
                raise ProtocolError("bad Content-Length") from None
        else:
            self._until_close = True
            self._keep_alive = False

    def _feed_chunked(self) -> Answer | None:
        buf = self._buf
        while True:
            if self._chunk_left == -1:
                end = buf.find(b"\r\n")
                if end < 0:
                    return None
                try:
                    self._chunk_left = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError("bad chunk size") from None
                del buf[: end + 2]
                if self._chunk_left == 0:
                    self._chunk_left = -2  # trailers follow, up to an empty line
            if self._chunk_left == -2:
                end = buf.find(b"\r\n")
                if end < 0:
                    return None
                trailer = bytes(buf[:end])
                del buf[: end + 2]
                if not trailer:
                    return self._answer(bytes(self._body))
                continue
            if len(buf) < self._chunk_left + 2:
                return None
            self._body += buf[: self._chunk_left]
            del buf[: self._chunk_left + 2]
            self._chunk_left = -1

    def _answer(self, body: bytes) -> Answer:
        encoding = self._headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):  # never asked for, but readable if sent
            try:
                body = zlib.decompress(body, 47)  # 47: gzip or zlib header, detected
            except zlib.error as exc:
                raise ProtocolError(f"bad {encoding} body: {exc}") from None
        return Answer(self._status, self._headers, body, self._keep_alive)
