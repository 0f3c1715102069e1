"""BatchLane + the OpenAI Batch API, end to end against the fake server."""

from __future__ import annotations

import asyncio
import json

import pytest

from avm.errors import ModelError, ProviderUnavailable, RateLimited
from avm.llm.io.batch_lane import BatchAPI, BatchLane
from avm.llm.providers.openai_compat import OpenAICompatProvider
from avm.llm.types import Message, ModelReply, ModelRequest, ToolSpec
from avm.testing.fake_openai import FakeOpenAIServer, FakeToolCall


def ask(text: str, *, deferrable: bool = True) -> ModelRequest:
    return ModelRequest(
        model="fake-gpt",
        messages=(Message("system", "summarise"), Message("user", text)),
        deferrable=deferrable,
        tools=(ToolSpec("lookup", "find a fact"),),
    )


def test_openai_provider_has_a_batch_api(provider: OpenAICompatProvider) -> None:
    assert isinstance(provider, BatchAPI)


async def test_deferrable_calls_are_answered_through_one_batch(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.batch_latency_s = 0.05
    lane = BatchLane(provider, max_batch=100, max_wait_s=0.05, poll_s=0.02)
    replies = await asyncio.gather(*(lane.complete(ask(f"doc {i}")) for i in range(12)))

    assert [r.text for r in replies] == [f"echo: doc {i}" for i in range(12)]
    assert all(r.usage.tokens_in > 0 for r in replies)
    assert server.completion_count == 0  # nothing went through the live endpoint
    assert len(server.batches) == 1
    (batch,) = server.batches.values()
    assert batch.status == "completed"
    assert batch.request_counts.total == 12
    assert server.path_counts["/v1/files"] == 1
    assert server.path_counts["/v1/batches"] == 1
    assert server.path_counts[f"/v1/batches/{batch.id}"] >= 1
    # The input file is real JSONL in the Batch API's shape.
    _, content = server.files[batch.input_file_id]
    first = json.loads(content.splitlines()[0])
    assert first["method"] == "POST"
    assert first["url"] == "/v1/chat/completions"
    assert first["body"]["messages"][0] == {"role": "system", "content": "summarise"}
    assert first["body"]["tools"][0]["function"]["name"] == "lookup"
    assert lane.batches == 1
    assert lane.deferred == 12


async def test_a_full_batch_goes_at_once_and_the_rest_after_the_wait(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    lane = BatchLane(provider, max_batch=5, max_wait_s=0.2, poll_s=0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = [asyncio.create_task(lane.complete(ask(f"doc {i}"))) for i in range(7)]
    await asyncio.sleep(0.1)
    assert len(server.batches) == 1  # the first five went without waiting
    await asyncio.gather(*tasks)
    assert len(server.batches) == 2
    assert loop.time() - start >= 0.2


async def test_tool_calls_and_per_request_errors_come_back_to_each_caller(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    # Lines are answered in order, each like a live call: "a" meets the queued failure, "b"
    # takes the scripted tool call, "c" is echoed.
    server.fail_next(1, status=429, message="batch line throttled")
    server.script(FakeToolCall("lookup", {"q": "x"}))
    lane = BatchLane(provider, max_batch=3, max_wait_s=1.0, poll_s=0.01)
    a, b, c = await asyncio.gather(
        *(lane.complete(ask(t)) for t in ("a", "b", "c")), return_exceptions=True
    )
    assert isinstance(a, RateLimited)
    assert "batch line throttled" in str(a)
    assert isinstance(b, ModelReply)
    assert b.finish_reason == "tool_calls"
    assert b.tool_calls[0].name == "lookup"
    assert isinstance(c, ModelReply)
    assert c.text == "echo: c"


@pytest.mark.parametrize("outcome", ["failed", "expired"])
async def test_a_batch_that_fails_or_expires_fails_its_callers(
    server: FakeOpenAIServer, provider: OpenAICompatProvider, outcome: str
) -> None:
    server.batch_outcome = outcome
    lane = BatchLane(provider, max_batch=2, max_wait_s=1.0, poll_s=0.01)
    results = await asyncio.gather(
        lane.complete(ask("a")), lane.complete(ask("b")), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, ModelError)
        assert outcome in str(result)


async def test_a_batch_that_cannot_be_submitted_fails_every_caller(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    lane = BatchLane(provider, max_batch=2, max_wait_s=1.0, poll_s=0.01)
    await server.close()
    results = await asyncio.gather(
        lane.complete(ask("a")), lane.complete(ask("b")), return_exceptions=True
    )
    assert all(isinstance(r, ProviderUnavailable) for r in results)
    assert results[0] is not results[1]


async def test_live_requests_pass_straight_through(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    lane = BatchLane(provider, max_wait_s=10.0)
    reply = await lane.complete(ask("now", deferrable=False))
    assert reply.text == "echo: now"
    assert server.completion_count == 1
    assert not server.batches


async def test_a_caller_that_gives_up_leaves_the_batch(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    lane = BatchLane(provider, max_batch=10, max_wait_s=0.1, poll_s=0.01)
    quitter = asyncio.create_task(lane.complete(ask("quit")))
    stayer = asyncio.create_task(lane.complete(ask("stay")))
    await asyncio.sleep(0.01)
    quitter.cancel()
    reply: ModelReply = await stayer
    assert reply.text == "echo: stay"
    assert [b["messages"][-1]["content"] for b in server.batch_requests] == ["stay"]


async def test_closing_fails_the_waiting_callers(provider: OpenAICompatProvider) -> None:
    lane = BatchLane(provider, max_wait_s=10.0)
    waiting = asyncio.create_task(lane.complete(ask("a")))
    await asyncio.sleep(0.01)
    await lane.aclose()
    with pytest.raises(ModelError, match="closed"):
        await waiting


async def test_the_fake_batch_api_refuses_what_openai_refuses(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        bad = {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions"}
        async with http.post(server.base_url + "/batches", json=bad) as response:
            assert response.status == 400
            assert "input_file_id" in (await response.json())["error"]["message"]
        async with http.get(server.base_url + "/batches/batch_nope") as response:
            assert response.status == 404
        async with http.get(server.base_url + "/files/file-nope/content") as response:
            assert response.status == 404
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", b'{"custom_id": "x"}\n', filename="in.jsonl")
        async with http.post(server.base_url + "/files", data=form) as response:
            file = await response.json()
        assert file["object"] == "file"
        assert file["bytes"] == len(b'{"custom_id": "x"}\n')
        wrong = {"input_file_id": file["id"], "endpoint": "/v1/embeddings"}
        async with http.post(server.base_url + "/batches", json=wrong) as response:
            assert response.status == 400
        server.batch_latency_s = 10.0
        ok = {**wrong, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        async with http.post(server.base_url + "/batches", json=ok) as response:
            batch = await response.json()
        assert batch["status"] == "validating"
        async with http.post(server.base_url + f"/batches/{batch['id']}/cancel") as response:
            assert (await response.json())["status"] == "cancelled"


async def test_a_malformed_line_is_reported_in_the_error_file(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", b'{"custom_id": "r0", "body": {"model": 1}}\n', filename="x")
        async with http.post(server.base_url + "/files", data=form) as response:
            file_id = (await response.json())["id"]
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        async with http.post(server.base_url + "/batches", json=body) as response:
            batch_id = (await response.json())["id"]
        await asyncio.sleep(0.05)
        async with http.get(server.base_url + f"/batches/{batch_id}") as response:
            batch = await response.json()
        assert batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
        assert batch["output_file_id"] is None
        async with http.get(server.base_url + f"/files/{batch['error_file_id']}/content") as r:
            line = json.loads(await r.read())
        assert line["custom_id"] == "r0"
        assert "model" in line["error"]["message"]
