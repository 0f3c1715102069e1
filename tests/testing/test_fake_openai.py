"""The fake OpenAI server speaks the wire format, injects failures and counts what it saw."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from avm.testing.fake_openai import (
    FakeOpenAIServer,
    FakeReply,
    FakeToolCall,
    count_tokens,
)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def chat_body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "fake-gpt", "messages": [{"role": "user", "content": text}], **extra}


async def post(
    http: aiohttp.ClientSession, server: FakeOpenAIServer, body: Any
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with http.post(server.base_url + "/chat/completions", json=body) as resp:
        return resp.status, await resp.json(content_type=None), resp


async def test_base_url_names_a_bound_loopback_port(server: FakeOpenAIServer) -> None:
    assert server.port > 0
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"


async def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeOpenAIServer().base_url


async def test_completion_has_the_openai_shape(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    status, data, resp = await post(http, server, chat_body("hi there"))
    assert status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert isinstance(data["created"], int)
    assert data["model"] == "fake-gpt"
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "echo: hi there"
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["completion_tokens"] == count_tokens("echo: hi there")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_echo_quotes_the_last_user_message_up_to_200_chars(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    long = "abcdefghij" * 50
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ignored"},
            {"role": "user", "content": [{"type": "text", "text": long}]},
        ],
    }
    _, data, _ = await post(http, server, body)
    assert data["choices"][0]["message"]["content"] == "echo: " + long[:200]


def test_count_tokens_is_ceil_of_utf8_bytes_over_four() -> None:
    assert count_tokens("") == 0
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("é" * 3) == math.ceil(6 / 4)


async def test_prompt_tokens_grow_with_every_message(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    _, one, _ = await post(http, server, chat_body("x" * 40))
    two_messages = chat_body("x" * 40)
    two_messages["messages"].insert(0, {"role": "system", "content": "y" * 80})
    _, two, _ = await post(http, server, two_messages)
    # The system message adds its 20 content tokens plus the per-message framing.
    assert two["usage"]["prompt_tokens"] - one["usage"]["prompt_tokens"] > 20


async def test_scripted_replies_are_served_in_order_then_echo_resumes(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    server.script("one", FakeToolCall("lookup", {"q": "x"}, id="call_fixed"))
    server.script(FakeReply(text="three", finish_reason="content_filter"))
    replies = [(await post(http, server, chat_body("again")))[1] for _ in range(4)]

    assert replies[0]["choices"][0]["message"]["content"] == "one"
    tool_msg = replies[1]["choices"][0]["message"]
    assert tool_msg["content"] is None
    assert tool_msg["tool_calls"] == [
        {
            "id": "call_fixed",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q":"x"}'},
        }
    ]
    assert replies[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert replies[2]["choices"][0]["message"]["content"] == "three"
    assert replies[2]["choices"][0]["finish_reason"] == "content_filter"
    assert replies[3]["choices"][0]["message"]["content"] == "echo: again"


async def test_responder_sees_the_request_body(http: aiohttp.ClientSession) -> None:
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> str:
        seen.append(body)
        return f"{len(body['messages'])} messages"

    async with FakeOpenAIServer(responder=responder) as srv:
        _, data, _ = await post(http, srv, chat_body("q", temperature=0.5))
    assert data["choices"][0]["message"]["content"] == "1 messages"
    assert seen[0]["temperature"] == 0.5


async def test_max_tokens_truncates_text_and_reports_length(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAIServer(responder=lambda _: "word " * 100) as srv:
        _, data, _ = await post(http, srv, chat_body(max_tokens=7))
    text = data["choices"][0]["message"]["content"]
    assert len(text.encode()) <= 28
    assert text == ("word " * 100)[:28]
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 7


async def test_stop_sequence_cuts_the_reply(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAIServer(responder=lambda _: "alpha END beta") as srv:
        _, data, _ = await post(http, srv, chat_body(stop=["END"]))
    assert data["choices"][0]["message"]["content"] == "alpha "
    assert data["choices"][0]["finish_reason"] == "stop"


async def read_sse(resp: aiohttp.ClientResponse) -> list[str]:
    raw = (await resp.read()).decode()
    return [line[len("data: ") :] for line in raw.split("\n") if line.startswith("data: ")]


async def test_stream_sends_chunks_usage_and_done(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    body = chat_body("a fairly long message to stream", stream=True)
    body["stream_options"] = {"include_usage": True}
    async with http.post(server.base_url + "/chat/completions", json=body) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = await read_sse(resp)

    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    with_choices = [c for c in chunks if c["choices"]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices)
    assert text == "echo: a fairly long message to stream"
    assert len(with_choices) > 3  # really split, not one blob
    assert with_choices[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == count_tokens(text)


async def test_stream_without_include_usage_has_no_usage_chunk(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        server.base_url + "/chat/completions", json=chat_body(stream=True)
    ) as resp:
        events = await read_sse(resp)
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


async def test_stream_splits_tool_call_arguments(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    args = {"query": "a long query that spans several chunks"}
    server.script(FakeToolCall("search", args))
    async with http.post(
        server.base_url + "/chat/completions", json=chat_body(stream=True)
    ) as resp:
        events = await read_sse(resp)
    deltas = [
        tc
        for e in events[:-1]
        for c in json.loads(e)["choices"]
        for tc in c["delta"].get("tool_calls", [])
    ]
    assert deltas[0]["function"]["name"] == "search"
    assert deltas[0]["id"].startswith("call_")
    assert len(deltas) > 2
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == args


async def test_models_lists_the_configured_ids(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAIServer(model_ids=["a", "b"]) as srv:
        async with http.get(srv.base_url + "/models") as resp:
            data = await resp.json()
        assert srv.path_counts["/v1/models"] == 1
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["a", "b"]


async def test_fail_next_429_sends_retry_after_and_an_error_body(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    server.fail_next(2, status=429, retry_after_s=1.5)
    assert server.pending_failures == 2
    for _ in range(2):
        status, data, resp = await post(http, server, chat_body())
        assert status == 429
        assert resp.headers["Retry-After"] == "1.5"
        assert data["error"]["code"] == "rate_limit_exceeded"
        assert data["error"]["message"]
    status, _, _ = await post(http, server, chat_body())
    assert status == 200
    assert server.pending_failures == 0


async def test_failures_queue_in_order(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    server.fail_next(1, status=503, message="overloaded")
    server.fail_next(1, status=500)
    first = await post(http, server, chat_body())
    second = await post(http, server, chat_body())
    third = await post(http, server, chat_body())
    assert (first[0], first[1]["error"]["message"]) == (503, "overloaded")
    assert "Retry-After" not in first[2].headers
    assert second[0] == 500
    assert third[0] == 200


async def test_fail_next_can_send_a_raw_body(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    server.fail_next(1, status=200, body=b"{not json")
    async with http.post(server.base_url + "/chat/completions", json=chat_body()) as resp:
        assert resp.status == 200
        assert await resp.read() == b"{not json"


async def test_random_errors_are_reproducible_with_a_seed(
    http: aiohttp.ClientSession,
) -> None:
    async def pattern(seed: int) -> list[int]:
        async with FakeOpenAIServer(error_rate=0.5, error_status=502, seed=seed) as srv:
            return [(await post(http, srv, chat_body()))[0] for _ in range(30)]

    first, again = await pattern(7), await pattern(7)
    assert first == again
    assert set(first) == {200, 502}


async def test_error_rate_is_validated() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        FakeOpenAIServer(error_rate=1.5)


async def test_bad_requests_get_400(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    async with http.post(server.base_url + "/chat/completions", data=b"{oops") as resp:
        assert resp.status == 400
        assert "parse" in (await resp.json())["error"]["message"]
    status, data, _ = await post(http, server, {"model": "m", "messages": []})
    assert status == 400
    assert data["error"]["type"] == "invalid_request_error"


async def test_unknown_path_is_404_and_counted(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(server.base_url + "/embeddings") as resp:
        assert resp.status == 404
    assert server.path_counts["/v1/embeddings"] == 1


async def test_api_key_is_enforced_when_configured(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAIServer(api_key="sk-good") as srv:
        status, data, _ = await post(http, srv, chat_body())
        assert status == 401
        assert data["error"]["code"] == "invalid_api_key"
        async with http.post(
            srv.base_url + "/chat/completions",
            json=chat_body(),
            headers={"Authorization": "Bearer sk-good"},
        ) as resp:
            assert resp.status == 200


async def test_counts_records_and_reset(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    for i in range(5):
        await post(http, server, chat_body(f"m{i}"))
    async with http.get(server.base_url + "/models"):
        pass
    assert server.request_count == 6
    assert server.completion_count == 5
    assert server.path_counts["/v1/models"] == 1
    assert [r["messages"][0]["content"] for r in server.requests] == [f"m{i}" for i in range(5)]

    server.script("pending")
    server.fail_next(3)
    server.reset()
    assert server.request_count == 0
    assert server.completion_count == 0
    assert len(server.requests) == 0
    assert server.pending_failures == 0
    _, data, _ = await post(http, server, chat_body("after"))
    assert data["choices"][0]["message"]["content"] == "echo: after"


async def test_record_limit_keeps_the_latest_bodies_but_counts_all(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAIServer(record_limit=3) as srv:
        for i in range(10):
            await post(http, srv, chat_body(f"m{i}"))
        assert srv.completion_count == 10
        assert [r["messages"][0]["content"] for r in srv.requests] == ["m7", "m8", "m9"]


async def test_prompt_cache_reports_a_seen_prefix(http: aiohttp.ClientSession) -> None:
    system = {"role": "system", "content": "s" * 2000}
    async with FakeOpenAIServer(prompt_cache=True, cache_min_tokens=128) as srv:
        body = {"model": "m", "messages": [system, {"role": "user", "content": "one"}]}
        _, first, _ = await post(http, srv, body)
        body = {"model": "m", "messages": [system, {"role": "user", "content": "two"}]}
        _, second, _ = await post(http, srv, body)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    assert cached % 128 == 0
    assert cached <= second["usage"]["prompt_tokens"]


async def test_latency_delays_each_completion(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAIServer(latency_s=0.2) as srv:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(post(http, srv, chat_body()) for _ in range(5)))
        elapsed = loop.time() - start
    # Concurrent requests wait side by side, not one after another.
    assert 0.19 <= elapsed < 0.9


async def test_module_entry_point_serves_until_terminated(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "avm.testing.fake_openai",
        "--port",
        "0",
        "--latency",
        "0.01",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1")
        async with http.post(base_url + "/chat/completions", json=chat_body("ping")) as resp:
            data = await resp.json()
        assert data["choices"][0]["message"]["content"] == "echo: ping"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)
    assert proc.returncode == 0
