"""HttpPool: the lean HTTP/1.1 client, against real servers on loopback."""

from __future__ import annotations

import asyncio
import functools
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from avm.llm.io.http import (
    HttpConnectError,
    HttpDisconnected,
    HttpPool,
    HttpProtocolError,
    HttpResponse,
    HttpTimeout,
    Origin,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def app_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def serve(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield serve
    for runner in runners:
        await runner.cleanup()


class RawServer:
    """A TCP server answering each request with canned bytes, to test odd framings."""

    def __init__(self, reply: Callable[[bytes], list[bytes]], *, close_after: bool = False):
        self.reply = reply
        self.close_after = close_after
        self.connections = 0
        self.server: asyncio.Server | None = None

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
                for part in self.reply(head + body):
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0.005)
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_post_and_keep_alive(app_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=b"got " + body, headers={"X-Path": request.path})

    url = await app_server(echo)
    pool = HttpPool(url, max_connections=4)
    head = pool.head("POST", "/v1/x", {"Content-Type": "application/json"})
    for i in range(5):
        response = await pool.request(head, b'{"n": %d}' % i, timeout_s=5)
        assert response.status == 200
        assert response.body == b'got {"n": %d}' % i
        assert response.headers["x-path"] == "/v1/x"
    assert pool.open_connections == 1  # one connection, reused
    await pool.aclose()


async def test_chunked_split_across_packets() -> None:
    def reply(_request: bytes) -> list[bytes]:
        return [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n6;ext=1\r\n world\r",
            b"\n0\r\n",
            b"X-Trailer: 1\r\n\r\n",
        ]

    async with RawServer(reply) as url:
        pool = HttpPool(url)
        head = pool.head("GET", "/")
        response = await pool.request(head, timeout_s=5)
        assert response.body == b"hello world"
        again = await pool.request(head, timeout_s=5)  # the connection survived the trailer
        assert again.body == b"hello world"
        assert pool.open_connections == 1
        await pool.aclose()


async def test_close_delimited_body_and_interim_replies() -> None:
    def reply(_request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil ", b"the end"]

    server = RawServer(reply, close_after=True)
    async with server as url:
        pool = HttpPool(url)
        response = await pool.request(pool.head("GET", "/"), timeout_s=5)
        assert response.body == b"until the end"
        assert pool.open_connections == 0  # not reusable
        await pool.aclose()


async def test_no_body_statuses() -> None:
    async with RawServer(lambda _r: [b"HTTP/1.1 204 No Content\r\n\r\n"]) as url:
        pool = HttpPool(url)
        response = await pool.request(pool.head("DELETE", "/x"), timeout_s=5)
        assert (response.status, response.body) == (204, b"")
        await pool.aclose()


async def test_a_stale_kept_alive_connection_is_retried_once() -> None:
    def reply(_request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]

    # The server closes after each reply without saying so (an idle timeout, in effect).
    server = RawServer(reply, close_after=True)
    async with server as url:
        pool = HttpPool(url)
        head = pool.head("GET", "/")
        assert (await pool.request(head, timeout_s=5)).body == b"ok"
        await asyncio.sleep(0.05)
        assert (await pool.request(head, timeout_s=5)).body == b"ok"
        assert server.connections == 2
        await pool.aclose()


async def test_timeout_drops_the_connection(
    app_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="late")

    url = await app_server(slow)
    pool = HttpPool(url, max_connections=1)
    with pytest.raises(HttpTimeout):
        await pool.request(pool.head("GET", "/"), timeout_s=0.1)
    assert pool.open_connections == 0
    await pool.aclose()


async def test_connection_refused() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = HttpPool(f"http://127.0.0.1:{port}")
    with pytest.raises(HttpConnectError):
        await pool.request(pool.head("GET", "/"), timeout_s=2)
    assert pool.open_connections == 0


async def test_garbage_is_a_protocol_error() -> None:
    async with RawServer(lambda _r: [b"SMTP ready\r\n\r\n"]) as url:
        pool = HttpPool(url)
        with pytest.raises(HttpProtocolError):
            await pool.request(pool.head("GET", "/"), timeout_s=2)
        await pool.aclose()


async def test_cut_off_body_is_a_disconnect() -> None:
    reply = [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part"]
    async with RawServer(lambda _r: reply, close_after=True) as url:
        pool = HttpPool(url)
        with pytest.raises(HttpDisconnected):
            await pool.request(pool.head("GET", "/"), timeout_s=2)
        await pool.aclose()


async def test_pool_limit_queues_in_order(app_server: Callable[[Handler], Awaitable[str]]) -> None:
    active = 0
    peak = 0
    order: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        order.append(request.path)
        await asyncio.sleep(0.02)
        active -= 1
        return web.Response(text=request.path)

    url = await app_server(handler)
    pool = HttpPool(url, max_connections=2)
    paths = [f"/{i}" for i in range(10)]
    responses = await asyncio.gather(
        *(pool.request(pool.head("GET", p), timeout_s=5) for p in paths)
    )
    assert [r.body.decode() for r in responses] == paths
    assert peak == 2
    assert order == paths  # waiters are served first come, first served
    assert pool.open_connections == 2
    await pool.aclose()


async def test_cancelled_request_frees_its_slot(
    app_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5 if request.path == "/slow" else 0)
        return web.Response(text="ok")

    url = await app_server(handler)
    pool = HttpPool(url, max_connections=1)
    slow = asyncio.create_task(pool.request(pool.head("GET", "/slow"), timeout_s=5))
    await asyncio.sleep(0.05)
    slow.cancel()
    response = await asyncio.wait_for(pool.request(pool.head("GET", "/"), timeout_s=5), 2)
    assert response.body == b"ok"
    await pool.aclose()


async def test_stream_lines(app_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(b"data: %d\r\n\r\n" % i)
            await asyncio.sleep(0.01)
        await response.write(b"data: [DONE]")
        await response.write_eof()
        return response

    url = await app_server(sse)
    pool = HttpPool(url, max_connections=1)
    stream = await pool.stream(pool.head("GET", "/"), connect_timeout_s=5, read_timeout_s=5)
    assert stream.status == 200
    lines = [line async for line in stream.lines()]
    assert lines == [b"data: 0", b"", b"data: 1", b"", b"data: 2", b"", b"data: [DONE]"]
    stream.close()
    assert pool.open_connections == 1  # read to the end: kept
    stream = await pool.stream(pool.head("GET", "/"), connect_timeout_s=5, read_timeout_s=5)
    async for _line in stream.lines():
        break
    stream.close()
    assert pool.open_connections == 0  # left early: dropped
    await pool.aclose()


async def test_stream_read_timeout(app_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: first\n")
        await asyncio.sleep(1.0)
        return response

    url = await app_server(stall)
    pool = HttpPool(url)
    stream = await pool.stream(pool.head("GET", "/"), connect_timeout_s=5, read_timeout_s=0.1)
    lines = stream.lines()
    assert await lines.__anext__() == b"data: first"
    with pytest.raises(HttpTimeout):
        await lines.__anext__()
    stream.close()
    await pool.aclose()


def test_origin_and_head() -> None:
    origin = Origin("https://api.example.com/v1")
    assert (origin.host, origin.port, origin.authority) == (
        "api.example.com",
        443,
        "api.example.com",
    )
    assert str(Origin("http://[::1]:8080")) == "http://[::1]:8080"
    pool = HttpPool("http://127.0.0.1:8000")
    assert pool.head("POST", "/v1/x", {"A": "b"}) == (
        b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nA: b\r\n"
    )
    with pytest.raises(ValueError, match="line break"):
        pool.head("GET", "/", {"A": "b\r\nEvil: 1"})
    with pytest.raises(ValueError, match="http"):
        HttpPool("ftp://x")


async def test_waiting_for_a_busy_pool_times_out(
    app_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(text="late")

    url = await app_server(slow)
    pool = HttpPool(url, max_connections=1)
    head = pool.head("GET", "/")
    busy = asyncio.create_task(pool.request(head, timeout_s=5))
    await asyncio.sleep(0.02)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(HttpTimeout):
        await pool.request(head, timeout_s=0.1)
    assert loop.time() - start < 0.4
    assert (await busy).body == b"late"
    await pool.aclose()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_https_with_written_bodies(tls_files: tuple[Path, Path]) -> None:
    key, cert = tls_files

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    port = runner.addresses[0][1]
    client_ssl = ssl.create_default_context(cafile=str(cert))
    pool = HttpPool(f"https://127.0.0.1:{port}", ssl_context=client_ssl, max_connections=2)
    head = pool.head("POST", "/echo")
    encoder = msgspec.json.Encoder()
    try:
        bodies = [{"n": i, "pad": "x" * (i * 20_000)} for i in range(4)]
        responses = await asyncio.gather(
            *(
                pool.request(head, functools.partial(encoder.encode_into, body), timeout_s=5)
                for body in bodies
            )
        )
        assert [msgspec.json.decode(r.body) for r in responses] == bodies
    finally:
        await pool.aclose()
        await runner.cleanup()


async def test_written_bodies_are_framed_like_bytes(
    app_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    url = await app_server(echo)
    pool = HttpPool(url, max_connections=3)
    head = pool.head("POST", "/", {"X-Long": "y" * 300})
    encoder = msgspec.json.Encoder()
    bodies = [{"i": i, "text": "z" * (i * 7919 % 70_000)} for i in range(30)]
    responses = await asyncio.gather(
        *(
            pool.request(head, functools.partial(encoder.encode_into, b), timeout_s=5)
            for b in bodies
        )
    )
    assert [msgspec.json.decode(r.body) for r in responses] == bodies
    await pool.aclose()


# -- requests parked on a full pool: sent by the pool when a connection comes free ----------------


async def test_a_parked_request_cancelled_before_or_after_it_is_sent(
    app_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.1 if request.path == "/slow" else 0.02)
        return web.Response(text=request.path)

    url = await app_server(handler)
    pool = HttpPool(url, max_connections=1)
    first = asyncio.create_task(pool.request(pool.head("GET", "/first"), timeout_s=5))
    await asyncio.sleep(0)
    parked = asyncio.create_task(pool.request(pool.head("GET", "/never"), timeout_s=5))
    slow = asyncio.create_task(pool.request(pool.head("GET", "/slow"), timeout_s=5))
    await asyncio.sleep(0)
    parked.cancel()  # still queued: the pool skips it
    assert (await first).body == b"/first"
    await asyncio.sleep(0.03)  # /slow is on the connection now, its reply not in yet
    slow.cancel()  # mid-reply: the connection is dropped and its slot freed
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert (await pool.request(pool.head("GET", "/after"), timeout_s=5)).body == b"/after"
    assert pool.open_connections == 1
    await pool.aclose()


async def test_a_parked_body_that_cannot_be_written_fails_alone(
    app_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def echo(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return web.Response(body=await request.read())

    url = await app_server(echo)
    pool = HttpPool(url, max_connections=1)
    head = pool.head("POST", "/")
    encoder = msgspec.json.Encoder()
    results = await asyncio.gather(
        pool.request(head, functools.partial(encoder.encode_into, {"n": 1}), timeout_s=5),
        pool.request(head, functools.partial(encoder.encode_into, object()), timeout_s=5),
        pool.request(head, functools.partial(encoder.encode_into, {"n": 3}), timeout_s=5),
        return_exceptions=True,
    )
    first, second, third = results
    assert isinstance(first, HttpResponse)
    assert first.body == b'{"n":1}'
    assert isinstance(second, TypeError)
    assert isinstance(third, HttpResponse)
    assert third.body == b'{"n":3}'
    assert pool.open_connections == 1  # the one connection served both good requests
    await pool.aclose()


async def test_a_parked_request_connects_when_a_slot_frees_up(
    app_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def closing(request: web.Request) -> web.Response:
        await asyncio.sleep(0.01)
        return web.Response(text=request.path, headers={"Connection": "close"})

    url = await app_server(closing)
    pool = HttpPool(url, max_connections=1)
    paths = [f"/{i}" for i in range(4)]
    responses = await asyncio.gather(
        *(pool.request(pool.head("GET", p), timeout_s=5) for p in paths)
    )
    assert [r.body.decode() for r in responses] == paths
    assert pool.open_connections == 0
    await pool.aclose()


async def test_a_parked_request_sent_on_a_stale_connection_is_retried() -> None:
    def reply(_request: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]

    # The server closes after each reply without saying so: the parked request is sent on a
    # connection the server is closing, and goes again on a new one.
    server = RawServer(reply, close_after=True)
    async with server as url:
        pool = HttpPool(url, max_connections=1)
        head = pool.head("GET", "/")
        responses = await asyncio.gather(*(pool.request(head, timeout_s=5) for _ in range(3)))
        assert [r.body for r in responses] == [b"ok"] * 3
        assert server.connections == 3
        await pool.aclose()
