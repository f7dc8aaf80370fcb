"""The lean transport under httpx, against a scripted HTTP server on loopback (no broker)."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumer.core.client import DirectClient, make_http_client
from consumer.core.transport import ANSWERED, SENT, LeanTransport

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


class Server:
    """Answers each request with `answers[path]`; counts connections and requests."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.answers: dict[bytes, Answer] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                path = head.split(b" ")[1].split(b"?")[0]
                await self.answers.get(path, _send(OK))(head, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def _send(data: bytes, *, close: bool = False) -> Answer:
    async def answer(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()

    return answer


async def _hang(_: bytes, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Server, str]]:
    server = Server()
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield server, f"http://127.0.0.1:{port}"


def client(**kwargs: Any) -> httpx.AsyncClient:
    """The worker's client: DirectClient over the lean transport."""
    return DirectClient(LeanTransport(**kwargs), httpx.Timeout(2.0))


async def test_keeps_the_connection_alive_and_sends_what_httpx_built() -> None:
    async with serving() as (server, url), client() as http:
        for i in range(3):
            response = await http.post(f"{url}/v4/x?random={i}", content=b'{"a":1}')
            assert (response.status_code, response.json()) == (200, {})
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v4/x?random=0 HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in first.lower()
    assert b"\r\ncontent-length: 7\r\n" in first.lower()
    assert first.endswith(b'\r\n\r\n{"a":1}')


async def test_reports_the_two_socket_events_in_order() -> None:
    seen: list[str] = []

    async def trace(event: str, info: dict[str, Any]) -> None:
        seen.append(event)

    async with serving() as (_, url), client() as http:
        await http.post(f"{url}/p", content=b"{}", extensions={"trace": trace})
    assert seen == [SENT, ANSWERED]


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            b"hello",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(gzip.compress(b"hello")), gzip.compress(b"hello")),
            b"hello",
        ),
    ],
    ids=["content-length", "chunked", "gzip"],
)
async def test_reads_bodies_however_they_are_framed(answer: bytes, body: bytes) -> None:
    async with serving() as (server, url), client() as http:
        server.answers[b"/p"] = _send(answer)
        assert (await http.get(f"{url}/p")).content == body
        assert (await http.get(f"{url}/p")).content == body
    assert server.connections == 1


async def test_a_body_read_to_the_close_is_whole_and_the_connection_not_reused() -> None:
    async with serving() as (server, url), client() as http:
        server.answers[b"/p"] = _send(b"HTTP/1.1 200 OK\r\n\r\nhello", close=True)
        assert (await http.get(f"{url}/p")).content == b"hello"
        assert (await http.get(f"{url}/p")).content == b"hello"
    assert server.connections == 2


async def test_connection_close_is_honoured() -> None:
    async with serving() as (server, url), client() as http:
        server.answers[b"/p"] = _send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + OK[17:])
        await http.get(f"{url}/p")
        await http.get(f"{url}/p")
    assert server.connections == 2


async def test_a_close_without_an_answer_is_a_protocol_error_and_the_next_call_reconnects() -> None:
    async def drop(_: bytes, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with serving() as (server, url), client() as http:
        server.answers[b"/drop"] = drop
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"{url}/drop")
        assert (await http.get(f"{url}/ok")).status_code == 200
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_not_used() -> None:
    async with serving() as (server, url), client() as http:
        await http.get(f"{url}/ok")
        server.answers[b"/ok"] = _send(OK, close=True)
        await http.get(f"{url}/ok")  # the server closes after answering
        await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
        assert (await http.get(f"{url}/ok")).status_code == 200
    assert server.connections == 2


async def test_a_slow_answer_is_a_read_timeout_and_frees_its_slot() -> None:
    async with serving() as (server, url), client(max_connections=1) as http:
        server.answers[b"/slow"] = _hang
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"{url}/slow", timeout=httpx.Timeout(0.2))
        assert (await http.get(f"{url}/ok")).status_code == 200
    assert server.connections == 2  # the timed-out connection was dropped


async def test_no_free_connection_in_time_is_a_pool_timeout() -> None:
    async with serving() as (server, url), client(max_connections=1) as http:
        server.answers[b"/slow"] = _hang
        slow = asyncio.create_task(http.get(f"{url}/slow"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await http.get(f"{url}/ok", timeout=httpx.Timeout(2.0, pool=0.1))
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert (await http.get(f"{url}/ok")).status_code == 200  # the cancel freed the slot


async def test_a_refused_connection_is_a_connect_error() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_a_body_over_the_cap_is_refused() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"x" * 4096
    async with serving() as (server, url), client(max_body_bytes=1024) as http:
        server.answers[b"/big"] = _send(big)
        with pytest.raises(httpx.RemoteProtocolError, match="over 1024 bytes"):
            await http.get(f"{url}/big")


async def test_garbage_is_a_protocol_error() -> None:
    async with serving() as (server, url), client() as http:
        server.answers[b"/junk"] = _send(b"SMTP ready\r\n\r\n")
        with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
            await http.get(f"{url}/junk")


async def test_the_worker_client_uses_it_unless_told_otherwise() -> None:
    async with serving() as (_, url):
        for kind in ("lean", "httpcore"):
            async with make_http_client(1.0, 1.0, transport=kind) as http:  # type: ignore[arg-type]
                assert (await http.get(f"{url}/ok")).status_code == 200
                inner = http._transport
                assert isinstance(inner, LeanTransport) == (kind == "lean")


async def test_the_direct_client_answers_like_httpx_and_keeps_no_cookies() -> None:
    async with serving() as (server, url), client() as http:
        server.answers[b"/gone"] = _send(
            b"HTTP/1.1 404 Not Found\r\nSet-Cookie: a=1\r\nContent-Length: 4\r\n\r\ngone"
        )
        response = await http.get(f"{url}/gone")
        with pytest.raises(httpx.HTTPStatusError, match="404"):
            response.raise_for_status()
        assert response.request.url.path == "/gone"
        await http.get(f"{url}/ok")
    assert not http.cookies
    assert b"cookie:" not in server.requests[-1].lower()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (openssl), and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_verifies_the_server_and_keeps_the_connection(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server = Server()
    srv = await asyncio.start_server(server.handle, "localhost", 0, ssl=server_side)
    url = f"https://localhost:{srv.sockets[0].getsockname()[1]}"
    async with srv:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with client(ssl_context=trusting) as http:
            assert (await http.get(f"{url}/ok")).json() == {}
            assert (await http.get(f"{url}/ok")).status_code == 200
        assert server.connections == 1
        async with client() as http:  # the default CAs do not know this certificate
            with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|verify"):
                await http.get(f"{url}/ok")


async def test_a_request_built_by_hand_gets_the_client_timeouts() -> None:
    async with serving() as (server, url), client() as http:
        server.answers[b"/slow"] = _hang
        http.timeout = httpx.Timeout(0.2)
        with pytest.raises(httpx.ReadTimeout):  # not the test's own 5 s TimeoutError
            async with asyncio.timeout(5):
                await http.send(httpx.Request("GET", f"{url}/slow"))
