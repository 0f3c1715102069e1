"""Fixtures for tool tests: keys, workspaces, the real bubblewrap sandbox, fake services.

The fake services are a real aiohttp server on 127.0.0.1.

Where the sandbox cannot start on this machine the sandbox tests do not skip: they assert that
every run is refused with :class:`SandboxUnavailable` naming what is missing. Set
``AVM_REQUIRE_SANDBOX=1`` (CI does) to make an unavailable sandbox a failure instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from avm.keys import KeyManager, MasterKey
from avm.tools.builtin import HttpClient, Workspaces
from avm.tools.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

REQUIRE_SANDBOX = os.environ.get("AVM_REQUIRE_SANDBOX") == "1"


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[KeyManager]:
    with KeyManager.open(tmp_path / "state", MasterKey.generate()) as manager:
        yield manager


@pytest.fixture
async def sandbox() -> Sandbox:
    sb = Sandbox(limits=SandboxLimits(wall_timeout_s=10.0, cpu_s=5))
    try:
        await sb.check()
    except SandboxUnavailable as exc:
        if REQUIRE_SANDBOX:
            pytest.fail(f"AVM_REQUIRE_SANDBOX=1 but the sandbox is unavailable: {exc}")
    return sb


@pytest.fixture
def workspaces(tmp_path: Path, sandbox: Sandbox) -> Workspaces:
    return Workspaces(tmp_path / "workspaces", owner=sandbox.owner_for)


@pytest.fixture
async def http_client() -> AsyncIterator[HttpClient]:
    client = HttpClient()
    yield client
    await client.aclose()


@dataclass
class FakeServices:
    """Local fake services on 127.0.0.1 (see :func:`_app`) and what they were sent."""

    news_key: str = "news-key-5a1f9c0e7d3b"
    exchange_key: str = "exch-key-77e2b4c9a0f1d3"
    social_token: str = "social-token-e0d1c2b3a495"
    base_url: str = ""
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    posts: list[dict[str, Any]] = field(default_factory=list)


def _app(state: FakeServices) -> web.Application:
    """One app plays every service of the example trading and social agent: a news feed, an
    exchange (orders deduplicated by ``Idempotency-Key``), a social network, and an echo of the
    request headers (the leak a careless service causes), a redirect, a huge and a slow body."""

    async def record(request: web.Request) -> None:
        state.requests.append(
            {"path": request.path, "headers": dict(request.headers), "query": dict(request.query)}
        )

    def need(request: web.Request, header: str, value: str) -> None:
        if request.headers.get(header) != value:
            raise web.HTTPUnauthorized(text="bad credentials")

    async def echo(request: web.Request) -> web.Response:
        await record(request)
        body = await request.text()
        return web.json_response(
            {"headers": dict(request.headers), "query": dict(request.query), "body": body}
        )

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://evil.invalid/steal")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"z" * 3_000_000, content_type="text/plain")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def news(request: web.Request) -> web.Response:
        await record(request)
        need(request, "X-Api-Key", state.news_key)
        topic = request.query["topic"]
        limit = int(request.query.get("limit", "3"))
        items = [{"title": f"{topic} headline {i}"} for i in range(limit)]
        return web.json_response({"topic": topic, "items": items})

    async def price(request: web.Request) -> web.Response:
        await record(request)
        need(request, "Authorization", f"Bearer {state.exchange_key}")
        return web.json_response({"symbol": request.match_info["symbol"], "price": 64250.5})

    async def order(request: web.Request) -> web.Response:
        await record(request)
        need(request, "Authorization", f"Bearer {state.exchange_key}")
        key = request.headers["Idempotency-Key"]
        if key not in state.orders:
            state.orders[key] = {"id": f"o{len(state.orders) + 1}", **await request.json()}
        return web.json_response(state.orders[key], status=201)

    async def post(request: web.Request) -> web.Response:
        await record(request)
        need(request, "Authorization", f"Bearer {state.social_token}")
        data = await request.json()
        item = {"id": len(state.posts) + 1, **data}
        state.posts.append(item)
        return web.json_response(item, status=201)

    async def timeline(request: web.Request) -> web.Response:
        await record(request)
        need(request, "Authorization", f"Bearer {state.social_token}")
        return web.json_response(state.posts[-int(request.query.get("limit", "10")) :])

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/v1/news", news)
    app.router.add_get("/v1/prices/{symbol}", price)
    app.router.add_post("/v1/orders", order)
    app.router.add_post("/v1/posts", post)
    app.router.add_get("/v1/posts", timeline)
    return app


@pytest.fixture
async def services() -> AsyncIterator[FakeServices]:
    state = FakeServices()
    runner = web.AppRunner(_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    state.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.base_url = f"http://127.0.0.1:{state.port}"
    try:
        yield state
    finally:
        await runner.cleanup()
