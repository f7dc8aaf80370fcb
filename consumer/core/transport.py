"""A lean HTTP/1.1 keep-alive transport under httpx: asyncio sockets and httptools' parser.

httpx stays the client (its Request, Response, errors and the `trace` extension); this replaces
only what is below it, httpcore over anyio over h11, which cost about a third of a recall's CPU
(bench/profile_after.md). What the worker needs of a transport, and nothing more:

- keep-alive connections per origin, at most `max_connections` at once, idle ones closed after
  `keepalive_expiry` seconds or when the server closed them;
- the four httpx timeouts (connect, write, read, pool) from the request, raised as httpx's own
  exceptions (so the client's translation to `FailureKind` is unchanged);
- httpcore's two trace events the pacer lives on, at the same moments: the request's last byte
  handed to the kernel (`http11.send_request_body.complete`) and the answer's headers parsed
  (`http11.receive_response_headers.complete`);
- bodies by Content-Length, chunked or read to the close, capped at `max_body_bytes` (a revoke
  answer is a few hundred bytes; a gateway's error page is not worth a megabyte).

No proxies, no HTTP/2, no streaming of request or response bodies: the revoke call has none.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httptools
import httpx

SENT = "http11.send_request_body.complete"
ANSWERED = "http11.receive_response_headers.complete"
Trace = Callable[[str, dict[str, Any]], Awaitable[None]]


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its answer read by httptools' callbacks."""

    def __init__(self, max_body_bytes: int) -> None:
        self._max_body = max_body_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._writable: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._error: Exception | None = None
        self._status = 0
        self._keep = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()  # a write waiting for the buffer to drain learns of the close below
        if self._head.done() and not self._done.done() and self._reads_to_close():
            self._finish(None)  # a body delimited by the close is complete at the close
            return
        self._fail(httpx.RemoteProtocolError("the server closed the connection before answering"))

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self._max_body:
            self._fail(httpx.RemoteProtocolError(f"answer body over {self._max_body} bytes"))

    def on_message_complete(self) -> None:
        # Asked here: once the parser has moved past the message it answers False.
        self._keep = self._parser.should_keep_alive()
        self._finish(None)

    # helpers
    def _reads_to_close(self) -> bool:
        names = {n.lower() for n, _ in self._headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _finish(self, error: Exception | None) -> None:
        if not self._head.done():
            self._head.set_result(None)
        if not self._done.done():
            self._done.set_result(None)
        self._error = self._error or error

    def _fail(self, error: Exception) -> None:
        self._error = self._error or error
        for future in (self._head, self._done):
            if not future.done():
                future.set_result(None)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once (an answer we gave up on leaves it unusable)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def exchange(
        self, request: bytes, timeouts: dict[str, float | None], trace: Trace | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """Send one request and read its answer: (status, headers, body, keep-alive)."""
        assert self.transport is not None
        self._reset()
        if self.closed:  # closed since it was checked out: nothing would ever answer
            raise httpx.RemoteProtocolError("the connection was closed before the request")
        self.transport.write(request)
        if self._writable is not None:  # the kernel's buffer was full: wait until it drains
            try:
                async with asyncio.timeout(timeouts.get("write")):
                    await self._writable
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
        if trace is not None:
            await trace(SENT, {})
        try:
            async with asyncio.timeout(timeouts.get("read")):
                await self._head
                if self._error is None and trace is not None:
                    await trace(ANSWERED, {})
                await self._done
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the answer") from None
        if self._error is not None:
            raise self._error
        return self._status, self._headers, bytes(self._body), self._keep and not self.closed


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive for httpx.AsyncClient(transport=...); see the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int = 10,
        keepalive_expiry: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int = 1 << 20,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._max_body = max_body_bytes
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._open: set[_Conn] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on an idle or new connection and return its whole answer."""
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        trace: Trace | None = request.extensions.get("trace")
        if self._slots.locked():  # wait for a free connection, within the pool timeout
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no connection free in time") from None
        else:
            await self._slots.acquire()  # free: returns at once
        origin = _origin(request.url)  # where a connection is taken from and put back
        conn: _Conn | None = None
        keep = False
        try:
            conn = await self._checkout(origin, timeouts)
            await request.aread()
            status, headers, body, keep = await conn.exchange(_head(request), timeouts, trace)
            # As httpcore's transport answers: the server's own headers and a stream of the
            # body (`content=` would work out a Content-Length and rebuild the headers).
            return httpx.Response(
                status,
                headers=headers,
                stream=httpx.ByteStream(body),
                extensions={"http_version": b"HTTP/1.1"},
            )
        finally:
            self._slots.release()
            if conn is not None:
                self._checkin(origin, conn, keep)

    async def _checkout(
        self, origin: tuple[str, str, int], timeouts: dict[str, float | None]
    ) -> _Conn:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._expiry:
                return conn
            self._drop(conn)
        return await self._connect(origin, timeouts)

    def _checkin(self, origin: tuple[str, str, int], conn: _Conn, keep: bool) -> None:
        if not keep or conn.closed:
            self._drop(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(origin, deque()).append(conn)

    def _drop(self, conn: _Conn) -> None:
        conn.abort()
        self._open.discard(conn)

    async def _connect(
        self, origin: tuple[str, str, int], timeouts: dict[str, float | None]
    ) -> _Conn:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self._max_body),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from None
        except OSError as exc:  # refused, unreachable, no such host, TLS failed
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        self._open.add(conn)
        return conn

    async def aclose(self) -> None:
        """Close every connection."""
        for conn in list(self._open):
            self._drop(conn)
        self._idle.clear()


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.scheme, url.host, port


def _head(request: httpx.Request) -> bytes:
    """The request's bytes: request line, headers (httpx set Host and Content-Length), body."""
    target = request.url.raw_path
    lines = [request.method.encode(), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    lines.append(request.content)
    return b"".join(lines)
