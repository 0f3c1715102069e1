"""Both fake servers share one base: lifecycle, failure queue, bookkeeping and command line.

Each test runs against the OpenAI-compatible and the Anthropic fake alike, through real HTTP,
so it checks the shared plumbing as each protocol wires it (its paths, headers, error bodies).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from avm.testing.fake_anthropic import FakeAnthropicServer
from avm.testing.fake_openai import FakeOpenAIServer
from avm.testing.loopback_server import LoopbackServer
from avm.testing.replies import FakeReply, FakeToolCall, as_reply


@dataclass(frozen=True)
class Protocol:
    """How a test speaks to one fake: its class, reply path, headers and error fields."""

    server: type[LoopbackServer]
    module: str
    reply_path: str
    batch_path: str
    headers: dict[str, str]
    failure_status: int

    def body(self, text: str) -> dict[str, Any]:
        return {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}

    @staticmethod
    def error_message(data: dict[str, Any]) -> str:
        message = data["error"]["message"]
        assert isinstance(message, str)
        return message

    @staticmethod
    def reply_text(data: dict[str, Any]) -> str:
        if "choices" in data:
            text = data["choices"][0]["message"]["content"]
        else:
            text = data["content"][0]["text"]
        assert isinstance(text, str)
        return text


OPENAI = Protocol(
    FakeOpenAIServer, "avm.testing.fake_openai", "/chat/completions", "/batches", {}, 500
)
ANTHROPIC = Protocol(
    FakeAnthropicServer,
    "avm.testing.fake_anthropic",
    "/v1/messages",
    "/v1/messages/batches",
    {"anthropic-version": "2023-06-01"},
    529,
)


@pytest.fixture(params=[OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
def protocol(request: pytest.FixtureRequest) -> Protocol:
    value = request.param
    assert isinstance(value, Protocol)
    return value


@pytest.fixture
async def server(protocol: Protocol) -> AsyncIterator[LoopbackServer]:
    async with protocol.server() as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(
    http: aiohttp.ClientSession, server: LoopbackServer, protocol: Protocol, text: str = "hi"
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with http.post(
        server.base_url + protocol.reply_path, json=protocol.body(text), headers=protocol.headers
    ) as resp:
        return resp.status, await resp.json(content_type=None), resp


async def test_start_and_close_are_idempotent_and_free_the_port(protocol: Protocol) -> None:
    srv = protocol.server()
    with pytest.raises(RuntimeError, match=f"{protocol.server.__name__} is not started"):
        _ = srv.port
    await srv.start()
    await srv.start()
    assert srv.port > 0
    await srv.close()
    await srv.close()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await send(http, srv, protocol)


async def test_fail_next_queues_failures_with_the_protocols_default_status(
    server: LoopbackServer, protocol: Protocol, http: aiohttp.ClientSession
) -> None:
    server.fail_next(2)
    server.fail_next(1, status=429, retry_after_s=1.5, message="slow down")
    assert server.pending_failures == 3
    outcomes = [await send(http, server, protocol) for _ in range(4)]
    assert [status for status, _, _ in outcomes] == [
        protocol.failure_status,
        protocol.failure_status,
        429,
        200,
    ]
    _, data, resp = outcomes[2]
    assert resp.headers["Retry-After"] == "1.5"
    assert protocol.error_message(data) == "slow down"
    assert "Retry-After" not in outcomes[0][2].headers
    assert server.pending_failures == 0
    # Failed requests are recorded and counted like the rest.
    assert len(server.requests) == 4


async def test_fail_next_can_replace_the_error_body(
    server: LoopbackServer, protocol: Protocol, http: aiohttp.ClientSession
) -> None:
    server.fail_next(status=200, body=b"{oops")
    async with http.post(
        server.base_url + protocol.reply_path, json=protocol.body("x"), headers=protocol.headers
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == b"{oops"


def test_fail_next_refuses_a_negative_count(protocol: Protocol) -> None:
    with pytest.raises(ValueError, match="n must not be negative, got -1"):
        protocol.server().fail_next(-1)


def test_stream_chunk_chars_must_be_positive(protocol: Protocol) -> None:
    with pytest.raises(ValueError, match="stream_chunk_chars must be at least 1, got 0"):
        protocol.server(stream_chunk_chars=0)


async def test_script_then_responder_then_echo(
    server: LoopbackServer, protocol: Protocol, http: aiohttp.ClientSession
) -> None:
    server.script("one", FakeReply(text="two"))
    texts = [
        protocol.reply_text((await send(http, server, protocol, f"m{i}"))[1]) for i in range(3)
    ]
    assert texts == ["one", "two", "echo: m2"]
    server.responder = lambda body: "from the responder"
    assert protocol.reply_text((await send(http, server, protocol))[1]) == "from the responder"


async def test_bad_json_and_non_objects_get_400_in_the_protocols_error_format(
    server: LoopbackServer, protocol: Protocol, http: aiohttp.ClientSession
) -> None:
    for payload, expected in ((b"{oops", "could not parse"), (b"[1]", "must be a JSON object")):
        async with http.post(
            server.base_url + protocol.reply_path, data=payload, headers=protocol.headers
        ) as resp:
            assert resp.status == 400
            assert expected in protocol.error_message(await resp.json())
    assert len(server.requests) == 0


async def test_unknown_paths_and_batches_are_404_and_counted(
    server: LoopbackServer, protocol: Protocol, http: aiohttp.ClientSession
) -> None:
    async with http.get(server.base_url + "/nowhere", headers=protocol.headers) as resp:
        assert resp.status == 404
        assert "nowhere" in protocol.error_message(await resp.json())
    async with http.get(
        server.base_url + protocol.batch_path + "/missing", headers=protocol.headers
    ) as resp:
        assert resp.status == 404
        assert "'missing'" in protocol.error_message(await resp.json())
    assert server.request_count == 2
    assert sum(server.path_counts.values()) == 2


async def test_a_wrong_key_is_refused_with_401(
    protocol: Protocol, http: aiohttp.ClientSession
) -> None:
    async with protocol.server(api_key="right") as srv:
        status, data, _ = await send(http, srv, protocol)
        assert status == 401
        assert protocol.error_message(data)
        assert len(srv.requests) == 0
        assert srv.request_count == 1


async def test_reset_forgets_records_counters_failures_and_script(
    server: LoopbackServer, protocol: Protocol, http: aiohttp.ClientSession
) -> None:
    await send(http, server, protocol)
    server.fail_next(3)
    server.script("never served")
    server.reset()
    assert (len(server.requests), len(server.arrivals), server.request_count) == (0, 0, 0)
    assert server.pending_failures == 0
    assert not server.path_counts
    status, data, _ = await send(http, server, protocol, "after")
    assert status == 200
    assert protocol.reply_text(data) == "echo: after"


async def test_closing_drops_unfinished_batches(protocol: Protocol) -> None:
    srv = protocol.server(batch_latency_s=3600)
    async with srv:
        srv._after_batch_latency(pytest.fail, "a batch finished after close")
        [timer] = srv._timers
        assert not timer.cancelled()
    assert timer.cancelled()
    assert srv._timers == []


def test_as_reply_names_what_it_cannot_use() -> None:
    assert as_reply("x") == FakeReply(text="x")
    call = FakeToolCall("lookup", {"q": 1})
    assert as_reply(call) == FakeReply(tool_calls=(call,))
    with pytest.raises(TypeError, match="not int"):
        as_reply(3)  # type: ignore[arg-type]


async def test_module_entry_point_prints_its_url_and_serves_until_terminated(
    protocol: Protocol, http: aiohttp.ClientSession
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        protocol.module,
        "--port",
        "0",
        "--api-key",
        "k",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        headers = {**protocol.headers, "Authorization": "Bearer k", "x-api-key": "k"}
        async with http.post(
            base_url + protocol.reply_path, json=protocol.body("ping"), headers=headers
        ) as resp:
            assert resp.status == 200
            assert protocol.reply_text(await resp.json()) == "echo: ping"
        async with http.post(base_url + protocol.reply_path, json=protocol.body("x")) as resp:
            assert resp.status == 401
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)
    assert proc.returncode == 0
