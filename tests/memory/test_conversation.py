"""Conversations as refs: appends share history, text is assembled in cache-friendly order."""

from __future__ import annotations

import tracemalloc

from avm.llm.types import Message, ToolCall, ToolSpec
from avm.memory import ContentStore, Conversation, Tier, collect

SYSTEM = "You are one of many careful trading agents. " * 200
TOOLS = [
    ToolSpec("quote", "Latest price of a symbol", {"type": "object", "properties": {"s": {}}}),
    ToolSpec("order", "Place an order"),
]


def test_layout_is_tools_shared_system_agent_prompt_history(store: ContentStore) -> None:
    chat = Conversation.start(store, tools=TOOLS, system=SYSTEM, agent_prompt="You are Ada.")
    chat = chat.append(store, "Buy?").append(store, Message("assistant", "Checking."))
    call = Message("assistant", tool_calls=(ToolCall("c1", "quote", '{"s": "ACME"}'),))
    chat = chat.append(store, call).append(store, Message("tool", "12.5", tool_call_id="c1"))
    prompt = chat.assemble(store)
    assert prompt.tools == tuple(TOOLS)
    assert prompt.messages == (
        Message("system", SYSTEM),
        Message("system", "You are Ada."),
        Message("user", "Buy?"),
        Message("assistant", "Checking."),
        call,
        Message("tool", "12.5", tool_call_id="c1"),
    )
    assert chat.messages(store) == prompt.messages


def test_agents_sharing_a_prefix_share_its_bytes_and_key(store: ContentStore) -> None:
    chats = [
        Conversation.start(store, tools=TOOLS, system="".join([SYSTEM]), agent_prompt=f"#{i}")
        for i in range(100)
    ]
    assert len({chat.prefix_key for chat in chats}) == 1
    assert all(chat.system is chats[0].system for chat in chats)
    assert all(chat.tools is chats[0].tools for chat in chats)
    # 100 agents: one prompt, one tool list, 100 agent prompts.
    assert store.stats().distinct_entries == 102
    other = Conversation.start(store, tools=TOOLS[:1], system=SYSTEM)
    assert other.prefix_key != chats[0].prefix_key


def test_append_does_not_copy_history(store: ContentStore) -> None:
    chat = Conversation.start(store, system="s")
    for i in range(1000):
        chat = chat.append(store, f"message {i}")
    message = store.put(b"\x82\xa4role\xa4user\xa7content\xa1x", hold=False)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        longer = chat.append_ref(message)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown <= 160  # one list cell and one conversation object, whatever the length
    assert len(longer) == 1001
    assert len(chat) == 1000  # the old value is untouched
    assert longer.history()[:1000] == chat.history()


def test_forks_share_their_common_history(store: ContentStore) -> None:
    base = Conversation.start(store, system="s").extend(store, ["a", "b"])
    left = base.append(store, "left")
    right = base.append(store, "right")
    assert left.history()[:2] == right.history()[:2] == base.history()
    assert left._head is not None
    assert right._head is not None
    assert left._head.parent is right._head.parent  # the very same cells


def test_save_and_load_round_trip(store: ContentStore) -> None:
    chat = Conversation.start(store, tools=TOOLS, system=SYSTEM, agent_prompt="me")
    chat = chat.extend(store, [f"turn {i}" for i in range(20)])
    ref = chat.save(store)
    assert store.holds(ref) == 1
    loaded = Conversation.load(store, ref)
    assert loaded == chat
    assert loaded.messages(store) == chat.messages(store)
    bare = Conversation().append(store, "only history")
    assert Conversation.load(store, bare.save(store)) == bare


def test_a_saved_conversation_keeps_its_content_alive(store: ContentStore) -> None:
    chat = Conversation.start(store, system=SYSTEM, agent_prompt="me").extend(store, ["a", "b"])
    saved = chat.save(store)
    store.demote([*chat.refs(), saved], Tier.COLD)  # passivated: all of it on disk
    del chat
    report = collect(store, roots=[])
    assert report.reclaimed_entries == 0
    assert Conversation.load(store, saved).messages(store)[-1] == Message("user", "b")
    store.decref(saved)  # re-activated elsewhere, or gone: the hold is released
    report = collect(store, roots=[])
    assert report.reclaimed_entries == 5  # prompt, agent prompt, two messages, the list
    assert store.stats().distinct_entries == 0


def test_live_conversations_are_kept_by_their_refs_as_roots(store: ContentStore) -> None:
    keep = Conversation.start(store, system=SYSTEM).append(store, "kept")
    drop = Conversation.start(store, system=SYSTEM).append(store, "dropped")
    report = collect(store, roots=keep.refs())
    assert report.reclaimed_entries == 1  # "dropped"; the shared system prompt stays
    assert keep.messages(store)[-1].content == "kept"
    assert drop.history()[0] not in store
