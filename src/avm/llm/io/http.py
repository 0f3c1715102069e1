"""A lean HTTP/1.1 client for model APIs: keep-alive connection pools on asyncio protocols.

This module owns :class:`HttpPool` (one per origin: a bounded set of keep-alive connections,
handed to callers in FIFO order), :class:`HttpResponse` (a whole reply) and :class:`HttpStream`
(a reply read as it arrives, for server-sent events). Its failures are the small
:class:`HttpError` tree below; providers translate them into :mod:`avm.errors` and nothing from
here reaches an agent.

Why not aiohttp: every model call of every agent passes through this code, and the VM's budget
is a fraction of a millisecond of CPU per call. aiohttp spends most of that on per-request
objects (request, response, timer context, header multidicts, connection wrappers); a model API
needs none of them: one method, fixed headers, a JSON body, a JSON or SSE reply. Here a request
is the pre-built head plus ``Content-Length`` plus the body, written in one call; a reply is
parsed from the receive buffer in ``data_received`` and handed over through one future; the
deadlines of all requests in flight are watched by one timer, not one each. Measured on loopback
with a 50 KB body (``bench/io_calls.py``), a call costs about half the CPU of the same call
through aiohttp with the same msgspec encoding. A body can also be given as a
:data:`BodyWriter`, run only once a connection is free, straight into the pool's send buffer:
a thousand requests queued for two hundred connections then hold no encoded copies of their
prompts, which halves the client's peak memory in that benchmark. A whole request that finds
every connection busy is parked with what it takes to send it, and the pool sends it on the
first connection released: its task wakes once, for the response, instead of once for the
connection and again for the response.

Supported: ``http`` and ``https`` (the default SSL context), ``Content-Length``, chunked and
close-delimited bodies, ``1xx`` interim replies, keep-alive with a transparent single retry of a
request whose reused connection the server had already closed. Not supported, by design: proxies,
redirects, compression, pipelining, HTTP/2.
"""

from __future__ import annotations

import asyncio
import collections
import math
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "BodyWriter",
    "HttpConnectError",
    "HttpDisconnected",
    "HttpError",
    "HttpPool",
    "HttpProtocolError",
    "HttpResponse",
    "HttpStream",
    "HttpTimeout",
    "Origin",
    "request_head",
]

# A response head larger than this is not a model API talking.
_MAX_HEAD_BYTES: Final = 64 * 1024
# Default cap on one response body: generous for completions, bounded for a broken server.
_DEFAULT_MAX_BODY: Final = 64 * 1024 * 1024
# A streamed body buffered beyond this pauses the socket until the reader catches up.
_STREAM_HIGH_WATER: Final = 1024 * 1024
# A single SSE line longer than this is refused (aiohttp's reader had the same kind of guard).
_MAX_LINE_BYTES: Final = 8 * 1024 * 1024

# Room left before a written body for the request head it gets: head, extra headers and this.
_FRAME_ROOM: Final = 48
# What one read from a socket can take (asyncio's own read size); one buffer per pool.
_RECV_BUFFER: Final = 256 * 1024
# A scratch buffer grown beyond this by one large body is dropped after it.
_SCRATCH_KEEP: Final = 1024 * 1024

BodyWriter = Callable[[bytearray, int], None]
"""Writes a request body into ``buffer`` at ``offset``, truncating the buffer at its end: the
shape of :meth:`msgspec.json.Encoder.encode_into`. The pool calls it only once a connection is
ready, so a request waiting for one holds no encoded copy of its (often 50 KB) body."""

# Body framing of the response being read.
_LENGTH: Final = 0
_CHUNKED: Final = 1
_UNTIL_CLOSE: Final = 2


class HttpError(Exception):
    """Root of this module's failures; providers translate them at their boundary."""


class HttpConnectError(HttpError):
    """No connection could be made (refused, unresolvable, TLS handshake failed)."""


class HttpDisconnected(HttpError):
    """The connection closed before the response was complete."""


class HttpTimeout(HttpError):
    """The deadline passed before the response (or the next streamed bytes) arrived."""


class HttpProtocolError(HttpError):
    """The server sent something that is not valid HTTP/1.1, or too much of it."""


class HttpResponse:
    """A complete response: status, headers (names lower-cased) and body.

    Headers are parsed from the raw head on first access: a successful model call never
    needs them, so it never pays for them.
    """

    __slots__ = ("_headers", "_raw_head", "body", "status")

    def __init__(self, status: int, raw_head: bytes, body: bytes) -> None:
        self.status = status
        self._raw_head = raw_head
        self._headers: dict[str, str] | None = None
        self.body = body

    @property
    def headers(self) -> dict[str, str]:
        headers = self._headers
        if headers is None:
            headers = self._headers = _parse_headers(self._raw_head)
        return headers

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status} {len(self.body)} bytes>"


def _parse_headers(head: bytes) -> dict[str, str]:
    """The header fields of a response head (after its status line), names lower-cased."""
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # a malformed line; the framing headers were already read without it
        key = name.strip().lower().decode("latin-1")
        text = value.strip().decode("latin-1")
        previous = headers.get(key)
        headers[key] = text if previous is None else f"{previous}, {text}"
    return headers


def _field(lower_head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower-case, with its colon) in a lower-cased head."""
    start = lower_head.find(b"\r\n" + name)
    if start < 0:
        return None
    start += 2 + len(name)
    end = lower_head.find(b"\r\n", start)
    return lower_head[start : end if end >= 0 else len(lower_head)].strip()


def _parse_status(head: bytes) -> int:
    if not head.startswith(b"HTTP/1.") or len(head) < 12 or head[8:9] != b" ":
        raise HttpProtocolError(f"bad status line {head[:80]!r}")
    try:
        return int(head[9:12])
    except ValueError:
        raise HttpProtocolError(f"bad status line {head[:80]!r}") from None


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive connection; parses one response at a time out of its receive buffer.

    A buffered protocol: the transport receives into the pool's one receive buffer and the
    bytes are appended to ``buf`` at once. A plain protocol would have asyncio allocate a
    fresh 256 KiB ``bytes`` for every read and shrink it to the bytes received, which glibc
    serves with an ``mmap``, ``mremap`` and ``munmap`` per response once the process has
    threads (the state store's writer): three system calls per model call for nothing.

    In *whole* mode ``waiter`` gets the :class:`HttpResponse` once the body is complete. In
    *stream* mode ``waiter`` gets the head as soon as it is parsed, and the decoded body then
    accumulates in ``sbuf`` with ``data_waiter`` woken on every arrival.
    """

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.got_bytes = False
        self.buf = bytearray()
        self.waiter: asyncio.Future[HttpResponse] | None = None
        self.streaming = False
        self.max_body = _DEFAULT_MAX_BODY
        # state of the response being read
        self.status = 0
        self.head = b""
        self.keep_alive = True
        self.framing = _LENGTH
        self.remaining = 0
        self.chunk_trailer = False
        self.body = bytearray()
        self.done = False
        # stream mode
        self.sbuf = bytearray()
        self.data_waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.error: HttpError | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        # Shared by every connection of the pool: asyncio calls buffer_updated right after
        # filling it, before any other protocol runs, and the bytes are copied out there.
        return self.pool.recv_buffer

    def buffer_updated(self, nbytes: int) -> None:
        with self.pool.recv_buffer[:nbytes] as data:
            self.data_received(data)

    def data_received(self, data: bytes | memoryview) -> None:
        self.got_bytes = True
        self.buf += data
        try:
            self._parse()
        except HttpError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.framing == _UNTIL_CLOSE and self.status and not self.done:
            # A close-delimited body ends here, legitimately.
            self.keep_alive = False
            self._finish()
            return
        if not self.done or self.waiter is not None:
            reason = f": {exc}" if exc else ""
            self._fail(HttpDisconnected(f"connection closed by the server{reason}"))

    # --- request lifecycle -----------------------------------------------------------------

    def start(
        self, data: bytes | memoryview, waiter: asyncio.Future[HttpResponse], stream: bool
    ) -> None:
        self.waiter = waiter
        self.streaming = stream
        self.status = 0
        self.head = b""
        self.framing = _LENGTH
        self.remaining = 0
        self.chunk_trailer = False
        self.done = False
        self.error = None
        self.got_bytes = False
        assert self.transport is not None
        self.transport.write(data)

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def expire(self) -> None:
        """The deadline passed: fail the caller and drop the connection (it is mid-reply)."""
        self._fail(HttpTimeout("deadline passed"))
        self.abort()

    def _fail(self, exc: HttpError) -> None:
        self.error = exc
        self.keep_alive = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._wake()
        if not self.closed:
            self.abort()

    def _wake(self) -> None:
        waiter, self.data_waiter = self.data_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self.buf
        while buf:
            if not self.status:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD_BYTES:
                        raise HttpProtocolError("response head too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                status = _parse_status(head)
                if 100 <= status < 200:
                    continue  # interim reply (100 Continue, 103 Early Hints): skip it
                self._begin(status, head)
                if self.done:
                    return
                continue
            if self.done:
                raise HttpProtocolError("unexpected bytes after the response")
            if self.framing == _LENGTH:
                n = self.remaining
                if not self.streaming and not self.body and len(buf) >= n:
                    # The common case: the whole body is already here; one copy, no joins.
                    self.body = bytearray()
                    body = bytes(buf[:n])
                    del buf[:n]
                    self.remaining = 0
                    self._finish(body)
                    return
                take = min(n, len(buf))
                self._emit(buf[:take])
                del buf[:take]
                self.remaining -= take
                if not self.remaining:
                    self._finish()
                return
            if self.framing == _UNTIL_CLOSE:
                self._emit(buf)
                buf.clear()
                return
            if not self._parse_chunk():
                return

    def _begin(self, status: int, head: bytes) -> None:
        self.status = status
        self.head = head
        # Only the framing headers are looked at here; the rest are parsed if anyone asks.
        lower = head.lower()
        connection = _field(lower, b"connection:")
        self.keep_alive = head[7:8] == b"1" and (connection is None or b"close" not in connection)
        encoding = _field(lower, b"transfer-encoding:")
        length = _field(lower, b"content-length:")
        if status in (204, 304):
            self.framing, self.remaining = _LENGTH, 0
        elif encoding is not None and b"chunked" in encoding:
            self.framing = _CHUNKED
            self.remaining = -1  # expecting a size line
        elif length is not None:
            try:
                self.remaining = int(length)
            except ValueError:
                raise HttpProtocolError("bad Content-Length") from None
            if self.remaining < 0:
                raise HttpProtocolError("bad Content-Length")
            if self.remaining > self.max_body:
                raise HttpProtocolError(f"response body of {self.remaining} bytes is too large")
            self.framing = _LENGTH
        else:
            self.framing = _UNTIL_CLOSE
            self.keep_alive = False
        if self.streaming:
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(HttpResponse(status, head, b""))
        if self.framing == _LENGTH and self.remaining == 0:
            self._finish()

    def _parse_chunk(self) -> bool:
        """Consume one step of a chunked body; False when more bytes are needed."""
        buf = self.buf
        if self.chunk_trailer:
            # After the last chunk: optional trailer lines, then an empty line.
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            del buf[: end + 2]
            if end == 0:
                self._finish()
                return False
            return True
        if self.remaining < 0:
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 1024:
                    raise HttpProtocolError("bad chunk size line")
                return False
            size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            del buf[: end + 2]
            if size == 0:
                self.chunk_trailer = True
                return True
            self.remaining = size
            return True
        # inside a chunk: its data, then CRLF
        n = self.remaining
        take = min(n, len(buf))
        if take:
            self._emit(buf[:take])
            del buf[:take]
            self.remaining -= take
        if self.remaining:
            return False
        # A zero ``remaining`` means: the chunk's data is in, its CRLF may not be yet.
        return self._chunk_crlf()

    def _chunk_crlf(self) -> bool:
        buf = self.buf
        if len(buf) < 2:
            return False
        if buf[:2] != b"\r\n":
            raise HttpProtocolError("missing CRLF after a chunk")
        del buf[:2]
        self.remaining = -1
        return True

    def _emit(self, data: bytearray | memoryview) -> None:
        if self.streaming:
            self.sbuf += data
            if len(self.sbuf) > _STREAM_HIGH_WATER and not self.paused:
                assert self.transport is not None
                self.paused = True
                self.transport.pause_reading()
            self._wake()
        else:
            self.body += data
            if len(self.body) > self.max_body:
                raise HttpProtocolError(f"response body beyond {self.max_body} bytes")

    def _finish(self, body: bytes | None = None) -> None:
        self.done = True
        if self.streaming:
            self._wake()
            return
        if body is None:
            body = bytes(self.body)
            self.body = bytearray()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpResponse(self.status, self.head, body))


# What a parked request is answered with when, instead of a connection, a free slot opened up:
# the request then connects itself. No server's reply has status 0.
_SLOT: Final = HttpResponse(0, b"", b"")


class _Parked:
    """A whole request waiting for a connection, queued with everything needed to send it.

    The pool sends it on the first connection released (:meth:`HttpPool._dispatch`), so the
    waiting task is woken once, by its response, rather than first by the connection and then
    again by the response. Its ``waiter`` gets the response, :data:`_SLOT`, or the failure.
    """

    __slots__ = ("body", "conn", "deadline", "extra", "head", "max_body", "waiter")

    def __init__(
        self,
        head: bytes,
        extra: bytes,
        body: bytes | BodyWriter,
        max_body: int,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.head = head
        self.extra = extra
        self.body = body
        self.max_body = max_body
        self.deadline = deadline
        self.waiter: asyncio.Future[HttpResponse] = loop.create_future()
        self.conn: _Conn | None = None  # the connection it was sent on


class HttpStream:
    """A response whose body is read as it arrives.

    :attr:`status` and :attr:`headers` are known on return from :meth:`HttpPool.stream`; read
    the body with :meth:`lines` (server-sent events) or :meth:`read`, then :meth:`close`, which
    gives the connection back when the body was read to its end and drops it otherwise.
    """

    __slots__ = ("_conn", "_head", "_pool", "_read_timeout_s", "status")

    def __init__(self, pool: HttpPool, conn: _Conn, head: HttpResponse, read_timeout_s: float):
        self._pool = pool
        self._conn: _Conn | None = conn
        self._head = head
        self._read_timeout_s = read_timeout_s
        self.status = head.status

    @property
    def headers(self) -> dict[str, str]:
        """The response headers, names lower-cased."""
        return self._head.headers

    async def _more(self, conn: _Conn) -> None:
        """Wait for more body bytes (or the end), at most the read timeout."""
        if conn.error is not None:
            raise conn.error
        if conn.paused and len(conn.sbuf) < _STREAM_HIGH_WATER // 2:
            conn.paused = False
            assert conn.transport is not None
            conn.transport.resume_reading()
        loop = self._pool._loop or self._pool._bind()
        waiter: asyncio.Future[None] = loop.create_future()
        conn.data_waiter = waiter
        timer = loop.call_later(self._read_timeout_s, conn.expire)
        try:
            await waiter
        finally:
            timer.cancel()
        if conn.error is not None:
            raise conn.error

    async def lines(self) -> AsyncIterator[bytes]:
        """The body's lines, without their line endings."""
        conn = self._conn
        if conn is None:
            return
        sbuf = conn.sbuf
        while True:
            end = sbuf.find(b"\n")
            if end >= 0:
                line = bytes(sbuf[:end])
                del sbuf[: end + 1]
                yield line[:-1] if line.endswith(b"\r") else line
                continue
            if conn.done:
                if sbuf:
                    rest = bytes(sbuf)
                    sbuf.clear()
                    yield rest
                return
            if len(sbuf) > _MAX_LINE_BYTES:
                conn.abort()
                raise HttpProtocolError(f"a streamed line is longer than {_MAX_LINE_BYTES} bytes")
            await self._more(conn)

    async def read(self) -> bytes:
        """The rest of the body."""
        conn = self._conn
        if conn is None:
            return b""
        while not conn.done:
            if len(conn.sbuf) > conn.max_body:
                conn.abort()
                raise HttpProtocolError(f"response body beyond {conn.max_body} bytes")
            await self._more(conn)
        data = bytes(conn.sbuf)
        conn.sbuf.clear()
        return data

    def close(self) -> None:
        """Give the connection back (or drop it, if the body was not read to its end)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.streaming = False
            self._pool._release(conn)


class Origin:
    """Scheme, host and port of a server, and the ``Host`` header that names it."""

    __slots__ = ("authority", "host", "port", "scheme")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s)://host[:port] URL, got {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        default = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default
        host_text = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host_text if self.port == default else f"{host_text}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


def request_head(
    origin: Origin, method: str, target: str, headers: Mapping[str, str] | None = None
) -> bytes:
    """Build a request head once: request line, Host and fixed headers, no final CRLF.

    Pass the result to :meth:`HttpPool.request` or :meth:`HttpPool.stream`, which add
    ``Content-Length`` and the blank line.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {origin.authority}"]
    for name, value in (headers or {}).items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


class HttpPool:
    """Keep-alive connections to one origin, at most ``max_connections`` at a time.

    Args:
        origin: ``scheme://host[:port]``; a path is ignored (requests give their own target).
        max_connections: connections open at once; callers beyond it wait in FIFO order.
        connect_timeout_s: limit for opening one connection (also bounded by the request's).
        ssl_context: for ``https``; the default verifying context when None.

    Connections belong to the event loop that opened them; use a pool from one loop.
    """

    def __init__(
        self,
        origin: str | Origin,
        *,
        max_connections: int = 256,
        connect_timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.origin = Origin(origin) if isinstance(origin, str) else origin
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self._ssl: ssl.SSLContext | None = None
        if self.origin.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._idle: list[_Conn] = []
        self._open = 0
        # Deadlines of requests in flight, watched by one timer for the earliest of them rather
        # than a timer per request: with one timeout for all, deadlines arrive in order and the
        # timer is re-armed only when the earliest request is over its limit.
        self._deadlines: dict[_Conn, float] = {}
        # Callers waiting for a connection, in FIFO order: a stream's future (handed a
        # connection, or None for a free slot to connect in) or a parked whole request.
        self._waiting: dict[asyncio.Future[_Conn | None] | asyncio.Future[HttpResponse], float] = {}
        self._sweep_at = math.inf
        self._sweeper: asyncio.TimerHandle | None = None
        self._waiters: collections.deque[asyncio.Future[_Conn | None] | _Parked] = (
            collections.deque()
        )
        self._closed = False
        # The loop the connections belong to, taken on first use. Asking asyncio for it on
        # every request would cost a getpid() system call each time on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scratch = bytearray()
        self.recv_buffer = memoryview(bytearray(_RECV_BUFFER))

    def __repr__(self) -> str:
        return f"HttpPool('{self.origin}', open={self._open}, idle={len(self._idle)})"

    @property
    def open_connections(self) -> int:
        return self._open

    def head(self, method: str, target: str, headers: Mapping[str, str] | None = None) -> bytes:
        """:func:`request_head` for this pool's origin."""
        return request_head(self.origin, method, target, headers)

    async def request(
        self,
        head: bytes,
        body: bytes | BodyWriter = b"",
        *,
        timeout_s: float,
        extra_headers: bytes = b"",
        max_body: int = _DEFAULT_MAX_BODY,
    ) -> HttpResponse:
        """Send one request and return the whole response, all within ``timeout_s``.

        ``body`` is the bytes to send or a :data:`BodyWriter` that writes them when a
        connection is ready. ``extra_headers`` are ``Name: value\\r\\n`` lines added to this
        request only.
        """
        loop = self._loop or self._bind()
        deadline = loop.time() + timeout_s
        fresh = False
        deadlines = self._deadlines
        idle = self._idle
        while True:
            if idle and not fresh and idle[-1].usable and not self._closed:
                conn = idle.pop()  # the common case, without a coroutine for _acquire
                conn.reused = True
            elif not fresh and not self._closed and self._full():
                # Every connection is busy: park the request for the pool to send on the
                # first one released, so this task wakes once, for the response.
                # (No coroutine of its own for the wait: its frame would stay alive with
                # every queued call, one more object per call for the cycle collector.)
                parked = self._park(head, extra_headers, body, max_body, deadline, loop)
                try:
                    got = await parked.waiter
                except HttpDisconnected:
                    if not self._stale(parked):
                        raise
                    fresh = True  # sent on a kept-alive connection the server had closed
                    continue
                except BaseException:
                    self._abandon(parked)
                    raise
                finally:
                    self._unpark(parked)
                if got is not _SLOT:
                    assert parked.conn is not None
                    self._release(parked.conn)
                    return got
                conn = await self._connect_counted(deadline)  # a slot freed up for us
            else:
                conn = await self._acquire(deadline, fresh)
            conn.max_body = max_body
            waiter: asyncio.Future[HttpResponse] = loop.create_future()
            deadlines[conn] = deadline
            if deadline < self._sweep_at:
                self._arm_sweeper(loop, deadline)
            try:
                self._send(conn, head, extra_headers, body, waiter, stream=False)
                response = await waiter
            except HttpDisconnected:
                self._release(conn)
                if conn.reused and not conn.got_bytes and not fresh:
                    # The server closed a kept-alive connection as we reused it (its idle
                    # timeout): nothing was processed, so one retry on a new one is safe.
                    fresh = True
                    continue
                raise
            except BaseException:
                conn.abort()  # cancelled or failed mid-reply: the connection is unusable
                self._release(conn)
                raise
            finally:
                del deadlines[conn]
            self._release(conn)
            return response

    async def stream(
        self,
        head: bytes,
        body: bytes | BodyWriter = b"",
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        extra_headers: bytes = b"",
        max_body: int = _DEFAULT_MAX_BODY,
    ) -> HttpStream:
        """Send one request; return once the response head is in, with the body to read.

        ``connect_timeout_s`` bounds getting a connection and the response head,
        ``read_timeout_s`` every later wait for body bytes. Close the stream when done.
        """
        loop = self._loop or self._bind()
        deadline = loop.time() + connect_timeout_s
        fresh = False
        while True:
            conn = await self._acquire(deadline, fresh)
            conn.max_body = max_body
            conn.sbuf = bytearray()
            waiter: asyncio.Future[HttpResponse] = loop.create_future()
            timer = loop.call_at(deadline, conn.expire)
            try:
                self._send(conn, head, extra_headers, body, waiter, stream=True)
                head_only = await waiter
            except HttpDisconnected:
                self._release(conn)
                if conn.reused and not conn.got_bytes and not fresh:
                    fresh = True
                    continue
                raise
            except BaseException:
                conn.abort()
                self._release(conn)
                raise
            finally:
                timer.cancel()
            return HttpStream(self, conn, head_only, read_timeout_s)

    def _send(
        self,
        conn: _Conn,
        head: bytes,
        extra: bytes,
        body: bytes | BodyWriter,
        waiter: asyncio.Future[HttpResponse],
        *,
        stream: bool,
    ) -> None:
        """Frame the request and write it on ``conn`` (one write, one system call)."""
        if isinstance(body, (bytes, bytearray)):
            conn.start(
                b"%s%sContent-Length: %d\r\n\r\n%s" % (head, extra, len(body), body), waiter, stream
            )
            return
        # The body is written into a scratch buffer after room for the head, the head is put
        # right before it, and the whole goes out from the buffer: no copy of the body is made
        # in Python. The transport sends it at once or copies what is left into its own buffer,
        # so the scratch buffer is free again when write() returns.
        scratch = self._scratch
        offset = len(head) + len(extra) + _FRAME_ROOM
        body(scratch, offset)
        top = b"%s%sContent-Length: %d\r\n\r\n" % (head, extra, len(scratch) - offset)
        start = offset - len(top)
        scratch[start:offset] = top
        if self._ssl is not None:
            # The TLS transport queues the object it is given; hand it a copy of its own.
            conn.start(bytes(scratch[start:]), waiter, stream)
        else:
            with memoryview(scratch) as view:
                conn.start(view[start:], waiter, stream)
        if len(scratch) > _SCRATCH_KEEP:
            self._scratch = bytearray()

    def _full(self) -> bool:
        """Whether every connection is taken (dead idle ones are dropped on the way)."""
        idle = self._idle
        while idle and not idle[-1].usable:
            idle.pop().abort()
            self._open -= 1
        return not idle and self._open >= self.max_connections

    def _park(
        self,
        head: bytes,
        extra: bytes,
        body: bytes | BodyWriter,
        max_body: int,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> _Parked:
        """Queue a whole request for the next connection released (see :meth:`_dispatch`).

        Its waiter gets the response, :data:`_SLOT` when a slot freed up instead (the caller
        connects), or the failure; the caller then calls :meth:`_unpark`, and on a failure
        :meth:`_stale` or :meth:`_abandon`.
        """
        parked = _Parked(head, extra, body, max_body, deadline, loop)
        self._waiters.append(parked)
        self._waiting[parked.waiter] = deadline
        if deadline < self._sweep_at:
            self._arm_sweeper(loop, deadline)
        return parked

    def _stale(self, parked: _Parked) -> bool:
        """After a disconnect: release the connection; whether to retry on a fresh one (it
        was a kept-alive connection the server had closed before answering anything)."""
        conn = parked.conn
        if conn is None:
            return False
        self._deadlines.pop(conn, None)
        self._release(conn)
        return conn.reused and not conn.got_bytes

    def _abandon(self, parked: _Parked) -> None:
        """The caller gave up (cancelled, timed out, failed): free what it was given."""
        waiter = parked.waiter
        answered = waiter.done() and not waiter.cancelled() and waiter.exception() is None
        conn = parked.conn
        if conn is not None:
            # Sent on a connection: it is mid-reply unless the reply is in.
            self._deadlines.pop(conn, None)
            if not answered:
                conn.abort()
            self._release(conn)
        elif answered:
            # Handed a free slot just as it gave up: pass the slot on.
            self._open -= 1
            self._wake_one()

    def _unpark(self, parked: _Parked) -> None:
        self._waiting.pop(parked.waiter, None)
        if parked.conn is not None:
            self._deadlines.pop(parked.conn, None)

    def _dispatch(self, conn: _Conn, parked: _Parked) -> bool:
        """Send a parked request on ``conn``; False if its body could not be written."""
        conn.reused = True
        conn.max_body = parked.max_body
        self._waiting.pop(parked.waiter, None)  # its deadline is the connection's now
        self._deadlines[conn] = parked.deadline
        parked.conn = conn
        try:
            self._send(conn, parked.head, parked.extra, parked.body, parked.waiter, stream=False)
        except Exception as exc:  # the body writer failed (or the write itself)
            parked.conn = None
            del self._deadlines[conn]
            if conn.waiter is not None:  # it got as far as the socket: not reusable
                conn.waiter = None
                conn.abort()
            parked.waiter.set_exception(exc)
            return False
        return True

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.get_running_loop()
        return loop

    def _arm_sweeper(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweep_at = when
        self._sweeper = loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Expire requests past their deadline; re-arm for the earliest one left."""
        self._sweeper = None
        self._sweep_at = math.inf
        loop = self._loop or self._bind()
        now = loop.time()
        earliest = math.inf
        for conn, deadline in list(self._deadlines.items()):
            if deadline <= now:
                conn.expire()  # fails its waiter; the request's own cleanup forgets it
            elif deadline < earliest:
                earliest = deadline
        for waiter, deadline in list(self._waiting.items()):
            if deadline <= now:
                if not waiter.done():
                    waiter.set_exception(
                        HttpTimeout("deadline passed while waiting for a connection")
                    )
            elif deadline < earliest:
                earliest = deadline
        if earliest < math.inf:
            self._arm_sweeper(loop, earliest)

    async def aclose(self) -> None:
        """Close every connection; the pool refuses requests afterwards."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
            self._open -= 1
        while self._waiters:
            waiting = self._waiters.popleft()
            future = waiting.waiter if isinstance(waiting, _Parked) else waiting
            if not future.done():
                future.set_exception(HttpConnectError("the connection pool was closed"))

    # --- connections -----------------------------------------------------------------------

    async def _acquire(self, deadline: float, fresh: bool) -> _Conn:
        if self._closed:
            raise HttpConnectError("the connection pool was closed")
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable and not fresh:
                conn.reused = True
                return conn
            conn.abort()
            self._open -= 1
        if self._open >= self.max_connections:
            loop = self._loop or self._bind()
            waiter: asyncio.Future[_Conn | None] = loop.create_future()
            self._waiters.append(waiter)
            # Watched by the sweeper like requests in flight: no timer per waiter.
            self._waiting[waiter] = deadline
            if deadline < self._sweep_at:
                self._arm_sweeper(loop, deadline)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Handed a connection (or a free slot) just as we gave up: pass it on.
                    got = waiter.result()
                    if got is not None:
                        self._release(got)
                    else:
                        self._open -= 1
                        self._wake_one()
                raise
            finally:
                del self._waiting[waiter]
            if handed is not None:
                if handed.usable and not fresh:
                    handed.reused = True
                    return handed
                handed.abort()
            # A free slot was handed over: _open already counts it for us.
            return await self._connect_counted(deadline)
        self._open += 1
        return await self._connect_counted(deadline)

    async def _connect_counted(self, deadline: float) -> _Conn:
        """Open a connection for a slot already counted in ``_open``."""
        try:
            return await self._connect(deadline)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, deadline: float) -> _Conn:
        loop = asyncio.get_running_loop()
        origin = self.origin
        timeout = min(self.connect_timeout_s, deadline - loop.time())
        if timeout <= 0:
            raise HttpTimeout("deadline passed while waiting for a connection")
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Conn(self),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise HttpTimeout(f"no connection to {origin} within {timeout:.3g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise HttpConnectError(f"{type(exc).__name__}: {exc}") from None
        return protocol

    def _release(self, conn: _Conn) -> None:
        """Return a connection after a request: to the next waiter, to idle, or closed."""
        if conn.waiter is not None or not conn.done or not conn.keep_alive or conn.buf:
            conn.abort()
        if self._closed or not conn.usable:
            conn.abort()
            self._open -= 1
            self._wake_one()
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if isinstance(waiter, _Parked):
                if waiter.waiter.done():
                    continue
                if self._dispatch(conn, waiter):
                    return
                if conn.closed:  # the failed send took the connection with it
                    self._open -= 1
                    self._wake_one()
                    return
            elif not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _wake_one(self) -> None:
        """A slot freed up without a connection to hand over: let one waiter connect."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if isinstance(waiter, _Parked):
                if not waiter.waiter.done():
                    self._open += 1
                    waiter.waiter.set_result(_SLOT)
                    return
            elif not waiter.done():
                self._open += 1
                waiter.set_result(None)
                return
