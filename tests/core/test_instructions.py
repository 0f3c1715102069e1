"""Every implemented instruction, executed by a real agent in a real VM (SQLite and PostgreSQL
state stores, loopback HTTP)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import avm
from avm import Context, Op
from avm.testing import FakeOpenAIServer, FakeToolCall


async def run_one(vm: avm.VM, fn: Callable[..., Any], **kwargs: Any) -> Any:
    definition = vm.agent(name=f"t_{fn.__name__}")(fn)
    return await vm.spawn(definition, **kwargs).result()


BACKENDS = ("sqlite", "postgres")  # run each VM test on both state stores
StateSql = Callable[..., Awaitable[list[tuple[Any, ...]]]]  # the conftest's state_sql fixture


async def test_kv_store_and_fetch(vm: avm.VM) -> None:
    async def agent(ctx: Context) -> Any:
        await ctx.kv_store("a", {"x": [1, 2, 3]})
        await ctx.kv_store("a", {"x": [4]})  # overwrite
        return await ctx.kv_fetch("a"), await ctx.kv_fetch("missing")

    assert await run_one(vm, agent) == ({"x": [4]}, None)


async def test_kv_stores_any_msgpack_value(vm: avm.VM) -> None:
    values: list[Any] = [True, False, None, 0, -1.5, "", b"\x00", [1, [2]], {"a": {"b": None}}]

    async def agent(ctx: Context) -> list[Any]:
        for i, value in enumerate(values):
            await ctx.kv_store(f"k{i}", value)
        return [await ctx.kv_fetch(f"k{i}") for i in range(len(values))]

    assert await run_one(vm, agent) == values


async def test_kv_rejects_unstorable_values(vm: avm.VM) -> None:
    async def agent(ctx: Context) -> None:
        await ctx.kv_store("a", object())

    with pytest.raises(avm.AgentFailed) as failed:
        await run_one(vm, agent)
    cause = failed.value.__cause__
    assert isinstance(cause, avm.InvalidArgument)
    assert "KV_STORE" in str(cause)
    assert "cannot be stored" in str(cause)


async def test_execution_state_save_load_reset(vm: avm.VM) -> None:
    async def agent(ctx: Context) -> list[Any]:
        seen = [await ctx.load_execution_state()]
        await ctx.save_execution_state({"cursor": 7})
        seen.append(await ctx.load_execution_state())
        await ctx.reset_execution_state()
        seen.append(await ctx.load_execution_state())
        return seen

    assert await run_one(vm, agent) == [None, {"cursor": 7}, None]


async def test_sql_execute_and_fetch(vm: avm.VM) -> None:
    async def agent(ctx: Context) -> Any:
        await ctx.sql_execute("CREATE TABLE t (k TEXT, v INTEGER)")
        inserted = await ctx.sql_execute("INSERT INTO t VALUES (?, ?), (?, ?)", ("a", 1, "b", 2))
        named = await ctx.sql_fetch("SELECT v FROM t WHERE k = :k", {"k": "b"})
        rows = await ctx.sql_fetch("SELECT k, v FROM t ORDER BY k")
        return inserted, named, rows

    inserted, named, rows = await run_one(vm, agent)
    assert inserted.rowcount == 2
    assert named == [[2]]
    assert rows == [["a", 1], ["b", 2]]


async def test_sql_fetch_is_read_only(vm: avm.VM) -> None:
    async def agent(ctx: Context) -> None:
        await ctx.sql_execute("CREATE TABLE t (v)")
        await ctx.sql_fetch("INSERT INTO t VALUES (1) RETURNING v")

    with pytest.raises(avm.AgentFailed) as failed:
        await run_one(vm, agent)
    assert isinstance(failed.value.__cause__, avm.SqlDenied)
    assert "read-only" in str(failed.value.__cause__)


async def test_sql_errors_are_storage_errors(vm: avm.VM) -> None:
    async def agent(ctx: Context) -> str:
        try:
            await ctx.sql_fetch("SELECT * FROM nowhere")
        except avm.StorageError as exc:
            return str(exc)
        return "no error"

    message = await run_one(vm, agent)
    assert "no such table: nowhere" in message
    assert "SQL_FETCH" in message


async def test_tools_list_read_write(vm: avm.VM) -> None:
    writes: list[tuple[Any, str]] = []

    @vm.tool("news", description="Headlines for a token")
    async def news(token: str) -> list[str]:
        return [f"{token} rallies", f"{token} dips"]

    @vm.tool("orders", kind="write", description="Place an order")
    async def orders(data: Any, *, invocation: avm.ToolInvocation) -> str:
        writes.append((data, invocation.idempotency_key))
        return "accepted"

    async def agent(ctx: Context) -> Any:
        tools = await ctx.get_tools_list()
        headlines = await ctx.read_from_tool("news", "ETH")
        status = await ctx.write_to_tool("orders", {"buy": "ETH"})
        return [(t.name, t.can_read, t.can_write) for t in tools], headlines, status

    listed, headlines, status = await run_one(vm, agent)
    assert listed == [("news", True, False), ("orders", False, True)]
    assert headlines == ["ETH rallies", "ETH dips"]
    assert status == "accepted"
    # The idempotency key is (agent, step): stable for the same instruction on replay.
    assert writes == [({"buy": "ETH"}, "t_agent-1:2")]


async def test_tool_failure_is_a_tool_error(vm: avm.VM) -> None:
    @vm.tool("flaky")
    async def flaky(query: Any) -> Any:
        raise RuntimeError("upstream said no")

    async def agent(ctx: Context) -> str:
        try:
            await ctx.read_from_tool("flaky", 1)
        except avm.ToolError as exc:
            return str(exc)
        return "no error"

    message = await run_one(vm, agent)
    assert "agent 't_agent-1', step 0, READ_FROM_TOOL" in message
    assert "RuntimeError: upstream said no" in message


async def test_unknown_tool_is_not_found(vm: avm.VM) -> None:
    async def agent(ctx: Context) -> None:
        await ctx.read_from_tool("nope")

    with pytest.raises(avm.AgentFailed) as failed:
        await run_one(vm, agent)
    assert isinstance(failed.value.__cause__, avm.NotFound)
    assert "unknown tool 'nope'" in str(failed.value.__cause__)


async def test_load_prompt_and_run_model(vm: avm.VM, fake_server: FakeOpenAIServer) -> None:
    vm.model("default", "openai:fake-gpt", base_url=fake_server.base_url, price_in=1, price_out=2)
    vm.prompts.add("analyst", "You are a careful analyst.")

    async def agent(ctx: Context) -> Any:
        prompt = await ctx.load_prompt("analyst")
        reply = await ctx.run_model("default", [prompt, "What about ETH?"], max_tokens=50)
        return prompt, reply

    prompt, reply = await run_one(vm, agent)
    assert prompt.text == "You are a careful analyst."
    assert reply.text == "echo: What about ETH?"
    assert reply.usage.tokens_in > 0
    assert reply.usage.tokens_out > 0
    body = fake_server.requests[-1]
    assert body["messages"] == [
        {"role": "system", "content": "You are a careful analyst."},
        {"role": "user", "content": "What about ETH?"},
    ]
    assert body["max_tokens"] == 50
    # Token usage feeds gas: price_in * tokens_in + price_out * tokens_out, plus LOAD_PROMPT.
    usage = vm.ledger.by_model()["default"]
    assert usage.calls == 1
    assert usage.tokens_in == reply.usage.tokens_in
    expected = reply.usage.tokens_in * 1 + reply.usage.tokens_out * 2
    assert vm.ledger.by_instruction()["RUN_MODEL"] == pytest.approx(expected)
    assert vm.ledger.by_instruction()["LOAD_PROMPT"] == pytest.approx(0.02 * prompt.tokens)


async def test_run_model_with_tool_calls(vm: avm.VM, fake_server: FakeOpenAIServer) -> None:
    vm.model("default", "openai:fake-gpt", base_url=fake_server.base_url)
    fake_server.script(FakeToolCall("news", {"token": "BTC"}))

    @vm.tool("news", description="Headlines", parameters={"type": "object"})
    async def news(token: str) -> str:
        return token

    async def agent(ctx: Context) -> avm.ModelReply:
        return await ctx.run_model("default", "use a tool", tools=["news"])

    reply = await run_one(vm, agent)
    assert reply.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("news", '{"token":"BTC"}')]
    assert fake_server.requests[-1]["tools"][0]["function"]["name"] == "news"


async def test_model_errors_are_translated(vm: avm.VM, fake_server: FakeOpenAIServer) -> None:
    vm.model("default", "openai:fake-gpt", base_url=fake_server.base_url)
    fake_server.fail_next(10, status=500)

    async def agent(ctx: Context) -> str:
        try:
            await ctx.run_model("default", "hi")
        except avm.ModelError as exc:
            return type(exc).__name__ + ": " + str(exc)
        return "no error"

    message = await run_one(vm, agent)
    assert message.startswith("ProviderUnavailable: agent 't_agent-1', step 0, RUN_MODEL")


async def test_unknown_model(vm: avm.VM) -> None:
    async def agent(ctx: Context) -> None:
        await ctx.run_model("gpt-9", "hi")

    with pytest.raises(avm.AgentFailed, match="unknown model 'gpt-9'"):
        await run_one(vm, agent)


@pytest.mark.parametrize(
    "call",
    [
        lambda ctx: ctx.allocate_gpu(0, 10),
        lambda ctx: ctx.release_gpu(),
        lambda ctx: ctx.list_gpus(),
        lambda ctx: ctx.check_gpu_load(),
    ],
)
async def test_not_yet_available(vm: avm.VM, call: Callable[[Context], Any]) -> None:
    async def agent(ctx: Context) -> None:
        await call(ctx)

    with pytest.raises(avm.AgentFailed) as failed:
        await run_one(vm, agent)
    assert isinstance(failed.value.__cause__, avm.NotAvailable)
    assert "is not available yet" in str(failed.value.__cause__)


async def test_every_instruction_is_journaled(vm: avm.VM, state_sql: StateSql) -> None:
    async def agent(ctx: Context) -> None:
        await ctx.kv_store("k", 1)
        await ctx.kv_fetch("k")
        with contextlib.suppress(avm.InvalidArgument):
            await ctx.kv_fetch("")
        await ctx.save_execution_state(1)

    await run_one(vm, agent)
    await vm.stop()
    ops = "SELECT step, op, status FROM journal WHERE agent_id = ? ORDER BY step"
    assert await state_sql(ops, "t_agent-1") == [
        (0, Op.KV_STORE, 0),
        (1, Op.KV_FETCH, 0),
        (2, Op.KV_FETCH, 1),
        (3, Op.SAVE_EXECUTION_STATE, 0),
    ]


async def test_journal_entries_form_a_hash_chain(vm: avm.VM, state_sql: StateSql) -> None:
    import blake3

    from avm._core.journal import GENESIS, chain_hash

    async def agent(ctx: Context) -> None:
        for i in range(5):
            await ctx.kv_store(f"k{i}", "v" * i)

    await run_one(vm, agent)
    await vm.stop()
    rows = await state_sql(
        "SELECT step, op, args_digest, status, result, gas, wall, prev_hash, hash "
        "FROM journal WHERE agent_id = 't_agent-1' ORDER BY step"
    )
    prev = GENESIS
    for step, op, digest, status, result, gas, wall, prev_hash, entry_hash in rows:
        assert prev_hash == prev
        assert (
            chain_hash(prev, "t_agent-1", step, op, digest, status, result, gas, wall) == entry_hash
        )
        prev = entry_hash
    assert len(rows) == 5
    assert blake3.blake3(b"").digest() != prev
