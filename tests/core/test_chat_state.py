"""Conversations inside saved execution state: stored by reference, restored after a restart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import avm
from avm import Context
from avm._core.chat_state import chat_refs, decode_state, encode_state, load_chat_content
from avm.errors import InvalidArgument, StorageError
from avm.llm.chat import Chat
from avm.memory import ContentStore
from avm.portable import export_agent, import_agent
from avm.storage.sqlite import SqliteStateStore
from avm.testing import FakeOpenAIServer, wait_until

StateSql = Callable[..., Awaitable[list[tuple[Any, ...]]]]  # the conftest's state_sql fixture
BACKENDS = ("sqlite", "postgres")

SYSTEM = "You answer questions about the fleet's portfolio, briefly. " * 40  # ~2.4 KB
TURNS = 6


def chatter(vm: avm.VM, server: FakeOpenAIServer) -> avm.AgentDefinition:
    vm.model("default", "openai:fake-gpt", base_url=server.base_url)

    @vm.agent(name="chatter")
    async def chat_loop(ctx: Context) -> list[str]:
        state = await ctx.load_execution_state() or {
            "turn": 0,
            "chat": ctx.conversation(system=SYSTEM, prompt=f"You are {ctx.agent_id}."),
        }
        chat: Chat = state["chat"]
        while state["turn"] < TURNS:
            if state["turn"] == TURNS // 2:
                await ctx.receive()  # the host stops while the agent waits here
            chat = chat.append("user", f"question {state['turn']} from {ctx.agent_id}")
            chat = chat.append_reply(await ctx.run_model("default", chat))
            state = {"turn": state["turn"] + 1, "chat": chat}
            await ctx.save_execution_state(state)
        return [m.content or "" for m in chat.messages()]

    return chat_loop


async def test_a_saved_conversation_is_kept_by_reference_and_survives_a_restart(
    make_vm: Callable[..., avm.VM],
    fake_server: FakeOpenAIServer,
    state_sql: StateSql,
    tmp_path: Path,
) -> None:
    async with make_vm() as vm:
        handle = vm.spawn(chatter(vm, fake_server), agent_id="c")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
    ((state,),) = await state_sql("SELECT state FROM execution_state WHERE agent_id = 'c'")
    # Three turns, six messages plus two prompts, as refs: far less than the system prompt.
    assert len(state) < 400
    (content,) = chat_refs(bytes(state))[:1]
    blobs = await state_sql("SELECT count(*) FROM blobs WHERE hash = ?", bytes(content))
    assert blobs == [(1,)]

    # A fresh content store: the conversation must come back from the state store.
    (tmp_path / "state" / "content.db").unlink()
    calls = fake_server.completion_count
    async with make_vm() as vm:
        chatter(vm, fake_server)
        handle = vm.handle("c")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        await handle.post("go on")
        texts = await handle.result()
    assert fake_server.completion_count == calls + TURNS - TURNS // 2
    assert texts[0] == SYSTEM
    assert texts[1] == "You are c."
    questions = [t for t in texts if t.startswith("question")]
    assert questions == [f"question {i} from c" for i in range(TURNS)]
    assert len(texts) == 2 + 2 * TURNS
    # What the server saw last is the whole conversation, in order.
    last = fake_server.requests[-1]["messages"]
    assert [m["content"] for m in last] == texts[:-1]


async def test_an_exported_agent_carries_its_saved_conversation(
    make_vm: Callable[..., avm.VM], fake_server: FakeOpenAIServer, tmp_path: Path, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("the archive round trip is the same code on both stores; test_history has it")
    async with make_vm() as vm:
        handle = vm.spawn(chatter(vm, fake_server), agent_id="c")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
    archive = export_agent(tmp_path / "state", "c", tmp_path / "c.avma")
    elsewhere = tmp_path / "elsewhere"
    import_agent(elsewhere, archive)
    async with avm.VM(elsewhere) as vm:
        chatter(vm, fake_server)
        handle = vm.handle("c")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        await handle.post("go on")
        texts = await handle.result()
    assert [t for t in texts if t.startswith("question")] == [
        f"question {i} from c" for i in range(TURNS)
    ]


def test_encoding_refuses_what_it_cannot_store() -> None:
    with pytest.raises(InvalidArgument, match="state of type object cannot be stored"):
        encode_state(object())
    with pytest.raises(InvalidArgument, match=r"state of type dict cannot be stored: .*object"):
        encode_state({"x": object()})


async def test_missing_or_corrupt_conversation_content_is_a_clear_error(tmp_path: Path) -> None:
    with ContentStore() as memory:
        chat = Chat.start(memory, system="shared").append("user", "hello")
        data, refs = encode_state({"chat": chat})
        assert set(chat_refs(data)) == set(refs)
        assert decode_state(data, memory, None)["chat"] == chat
    store = SqliteStateStore(tmp_path / "state.db")
    try:
        with ContentStore() as empty, pytest.raises(StorageError, match="does not have"):
            await load_chat_content(store, empty, data)
        store.put_blobs([(bytes(refs[0]), b"not the content")])
        await store.sync()
        with ContentStore() as empty, pytest.raises(StorageError, match="corrupt"):
            await load_chat_content(store, empty, data)
    finally:
        await store.aclose()
