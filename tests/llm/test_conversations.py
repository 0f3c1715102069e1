"""Conversations as model input: agents chat through ``ctx.conversation`` (real HTTP)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import avm
from avm import Context
from avm.errors import CapabilityDenied, InvalidArgument, ModelError, ReplayDivergence
from avm.llm.chat import Assembler, Chat
from avm.llm.io.prefix import PrefixTable
from avm.llm.types import Message, ModelRequest, PrefixHint, ToolCall, ToolSpec
from avm.memory import ContentStore
from avm.testing import FakeOpenAIServer, wait_until

SHARED = "You are one of many market analysts. Answer in one line. " * 200  # ~11 KB


def wire(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


async def test_an_agent_chats_over_several_turns(make_vm: Callable[..., avm.VM]) -> None:
    async with FakeOpenAIServer() as server, make_vm() as vm:
        vm.model("default", "openai:fake-gpt", base_url=server.base_url)
        seen: list[int] = []

        @vm.agent
        async def analyst(ctx: Context) -> list[str]:
            chat = ctx.conversation(system=SHARED, prompt="You are Ada.")
            first = chat
            texts = []
            for turn in range(3):
                chat = chat.append("user", f"question {turn}")
                reply = await ctx.run_model("default", chat)
                texts.append(reply.text)
                chat = chat.append_reply(reply)
            seen.extend([len(first), len(chat)])
            return texts

        texts = await vm.spawn(analyst).result()
    assert texts == [f"echo: question {turn}" for turn in range(3)]
    assert seen == [0, 6]  # growing a chat leaves the old one as it was
    assert server.completion_count == 3
    prompts = [wire("system", SHARED), wire("system", "You are Ada.")]
    history: list[dict[str, str]] = []
    for turn, body in enumerate(server.requests):
        history.append(wire("user", f"question {turn}"))
        assert body["messages"] == prompts + history
        history.append(wire("assistant", f"echo: question {turn}"))


async def test_a_conversation_carries_its_tools(make_vm: Callable[..., avm.VM]) -> None:
    async with FakeOpenAIServer() as server, make_vm() as vm:
        vm.model("default", "openai:fake-gpt", base_url=server.base_url)

        @vm.tool("lookup", description="market figures")
        async def lookup(query: str) -> str:
            return f"figures for {query}"

        @vm.agent
        async def analyst(ctx: Context) -> str:
            chat = ctx.conversation(system="Use the tools.", tools=["lookup"])
            chat = chat.add("what moved?")
            return (await ctx.run_model("default", chat)).text

        @vm.agent
        async def both(ctx: Context) -> None:
            chat = ctx.conversation(tools=["lookup"]).add("hi")
            await ctx.run_model("default", chat, tools=["lookup"])

        assert await vm.spawn(analyst).result() == "echo: what moved?"
        with pytest.raises(avm.AgentFailed) as failed:
            await vm.spawn(both).result()
        assert isinstance(failed.value.__cause__, InvalidArgument)
        assert "carries its own tools" in str(failed.value)
    (body,) = server.requests
    assert [tool["function"]["name"] for tool in body["tools"]] == ["lookup"]
    assert body["messages"] == [wire("system", "Use the tools."), wire("user", "what moved?")]


async def test_an_agent_without_the_tool_cannot_put_it_in_a_conversation(
    make_vm: Callable[..., avm.VM],
) -> None:
    async with make_vm() as vm:

        @vm.tool("lookup")
        async def lookup(query: str) -> str:
            return query

        @vm.agent(tools=[])
        async def outsider(ctx: Context) -> None:
            ctx.conversation(tools=["lookup"])

        with pytest.raises(avm.AgentFailed) as failed:
            await vm.spawn(outsider).result()
        assert isinstance(failed.value.__cause__, CapabilityDenied)
        assert "lookup" in str(failed.value)


async def test_a_thousand_agents_store_a_shared_prompt_once(
    make_vm: Callable[..., avm.VM],
) -> None:
    agents = 1000
    async with FakeOpenAIServer() as server, make_vm() as vm:
        vm.model("default", "openai:fake-gpt", base_url=server.base_url)
        before = vm.stats().memory

        @vm.agent
        async def analyst(ctx: Context, index: int) -> str:
            chat = ctx.conversation(system=SHARED, prompt=f"You are analyst {index}.")
            reply = await ctx.run_model("default", chat.add(f"task {index}"))
            return reply.text

        handles = [vm.spawn(analyst, index=i) for i in range(agents)]
        replies = await asyncio.gather(*(h.result() for h in handles))
        after = vm.stats().memory
    assert replies == [f"echo: task {i}" for i in range(agents)]
    assert server.completion_count == agents
    offered = after.put_bytes - before.put_bytes
    new = after.new_bytes - before.new_bytes
    assert offered > agents * len(SHARED)  # every agent put the shared prompt...
    assert new < len(SHARED) + agents * 200  # ...which was new only once
    assert after.dedup_ratio > 10
    # Every request carried the shared prompt as its first message, each agent its own second.
    firsts = {body["messages"][0]["content"] for body in server.requests}
    seconds = {body["messages"][1]["content"] for body in server.requests}
    assert firsts == {SHARED}
    assert len(seconds) == agents


def build(vm: avm.VM, server: FakeOpenAIServer, system: str = SHARED) -> avm.AgentDefinition:
    vm.model("default", "openai:fake-gpt", base_url=server.base_url)

    @vm.agent(name="chatter")
    async def chatter(ctx: Context) -> list[str]:
        chat = ctx.conversation(system=system, prompt="You are Ada.")
        texts = []
        for turn in range(4):
            chat = chat.add(f"turn {turn}")
            reply = await ctx.run_model("default", chat)
            texts.append(reply.text)
            chat = chat.append_reply(reply)
            if turn == 1:
                await ctx.receive()  # the host stops while the agent waits here
        return texts

    return chatter


def numbered() -> Callable[[dict[str, Any]], str]:
    """Replies that differ every call: a replayed call would show as a new number."""
    counter = itertools.count(1)
    return lambda body: f"answer {next(counter)}"


async def test_a_restarted_agent_replays_its_replies_without_calling_again(
    make_vm: Callable[..., avm.VM],
) -> None:
    async with FakeOpenAIServer(responder=numbered()) as server:
        async with make_vm() as vm:
            chatter = build(vm, server)
            handle = vm.spawn(chatter, agent_id="ada")
            await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        assert server.completion_count == 2

        async with make_vm() as vm:
            build(vm, server)
            handle = vm.handle("ada")  # recovered on start: the chat is rebuilt by replay
            await handle.post("go on")
            texts = await handle.result()
    assert texts == ["answer 1", "answer 2", "answer 3", "answer 4"]
    assert server.completion_count == 4  # turns 0 and 1 came from the journal
    # The live turns after recovery sent the whole conversation, replayed replies included.
    assert [m["content"] for m in server.requests[-1]["messages"][2:]] == [
        "turn 0", "answer 1", "turn 1", "answer 2", "turn 2", "answer 3", "turn 3",
    ]  # fmt: skip


async def test_a_changed_conversation_diverges_on_replay(make_vm: Callable[..., avm.VM]) -> None:
    async with FakeOpenAIServer() as server:
        async with make_vm() as vm:
            chatter = build(vm, server)
            handle = vm.spawn(chatter, agent_id="ada")
            await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)

        async with make_vm() as vm:
            build(vm, server, system="A different system prompt.")
            with pytest.raises(avm.AgentFailed) as failed:
                await vm.handle("ada").result()
        assert isinstance(failed.value.__cause__, ReplayDivergence)
        assert "different arguments" in str(failed.value)


# -- the parts, without a VM ---------------------------------------------------------------------


def test_assembly_matches_the_conversation_layout(tmp_path: Path) -> None:
    tools = [ToolSpec("lookup", "market figures")]
    with ContentStore(tmp_path) as store:
        chat = Chat.start(store, system=SHARED, prompt="You are Ada.", tools=tools)
        chat = chat.append("user", "hello").add(Message("assistant", "hi"))
        assembler = Assembler()
        assembled = assembler.assemble(store, chat.as_input())
        expected = chat.conversation.assemble(store)
        assert assembled.messages == expected.messages
        assert assembled.tools == expected.tools == tuple(tools)
        assert assembled.prefix == PrefixHint(chat.prefix_key, 1)
        # Another agent's chat with the same system prompt gets the very same text object.
        other = Chat.start(store, system=SHARED, prompt="You are Bo.").add("hey")
        again = assembler.assemble(store, other.as_input())
        assert again.messages[0].content is assembled.messages[0].content
        assert again.prefix.key != assembled.prefix.key  # no tools there: another prefix


def test_assembly_reuses_the_messages_a_chat_just_stored(tmp_path: Path) -> None:
    """A message added to a chat is what the next assembly hands the model: the object itself,
    not a decoded copy read back from the store; ill-typed messages are still decoded."""
    from avm.llm.chat import ASSEMBLER

    with ContentStore(tmp_path) as store:
        reply = Message("assistant", "the market rose", tool_calls=(ToolCall("c1", "f", "{}"),))
        chat = Chat.start(store, system=SHARED).add("hello").add(reply).add("thanks")
        assembled = ASSEMBLER.assemble(store, chat.as_input())
        assert assembled.messages == chat.conversation.assemble(store).messages
        assert assembled.messages[2] is reply
        fresh = Assembler()
        assert fresh.assemble(store, chat.as_input()).messages == assembled.messages

        last = chat.conversation.last
        assert last is not None
        for odd in (
            Message("robot", "beep"),  # type: ignore[arg-type]
            Message("user", 42),  # type: ignore[arg-type]
            Message("user", "hi", name=7),  # type: ignore[arg-type]
            Message("assistant", "x", tool_calls=[ToolCall("c", "f", "{}")]),  # type: ignore[arg-type]
            Message("assistant", "x", tool_calls=(ToolCall("c", "f", b"{}"),)),  # type: ignore[arg-type]
        ):
            fresh = Assembler()
            fresh.learn(last, odd)
            assert len(fresh) == 0
        fresh.learn(last, Message("user", "thanks"))
        assert len(fresh) == 1


def test_the_memo_stays_within_its_budget(tmp_path: Path) -> None:
    with ContentStore(tmp_path) as store:
        assembler = Assembler(max_bytes=4096)
        for index in range(50):
            chat = Chat.start(store, system=f"{index} " + "x" * 1000).add("q")
            assert (
                assembler.assemble(store, chat.as_input())
                .messages[0]
                .content.startswith(f"{index} ")
            )
        assert len(assembler) <= 8


def test_chat_rejects_what_is_not_a_message(tmp_path: Path) -> None:
    with ContentStore(tmp_path) as store:
        chat = Chat.start(store)
        with pytest.raises(InvalidArgument, match="role must be one of"):
            chat.append("robot", "beep")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="must be a Message or a str"):
            chat.add(42)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="system must be a str or a Prompt"):
            Chat.start(store, system=b"bytes")  # type: ignore[arg-type]


def test_a_prefix_hint_keeps_the_agent_prompt_out_of_the_shared_part() -> None:
    table = PrefixTable()
    shared = Message("system", SHARED)

    def request(agent: str, hint: PrefixHint | None) -> ModelRequest:
        messages = (shared, Message("system", agent), Message("user", "q"))
        return ModelRequest("m", messages, prefix=hint)

    hint = PrefixHint(b"k" * 32, 1)
    first = table.of(request("You are Ada.", hint))
    second = table.of(request("You are Bo.", hint))
    assert first is not None
    assert first is second
    assert first.count == 1
    assert first.texts == (SHARED,)
    unhinted = table.of(request("You are Cy.", None))
    assert unhinted is not None
    assert unhinted.count == 2  # without a hint: every leading system message
    with pytest.raises(ModelError, match="prefix hint covers 2"):
        table.of(ModelRequest("m", (shared, Message("user", "q")), prefix=PrefixHint(b"j", 2)))
