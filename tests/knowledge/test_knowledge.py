"""Knowledge: chunking, bm25 search, private encryption at rest, isolation, and the tools."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avm import Context
from avm.errors import CapabilityDenied, InvalidArgument
from avm.keys import KeyManager, MasterKey
from avm.knowledge import KnowledgeStore, chunk_text, knowledge_tools, terms
from avm.tools.registry import ToolInvocation

THESIS = (
    "Our confidential accumulation thesis: quietly buy zanzibarcoin below forty cents, "
    "because the treasury multisig unlocks in March and the founders promised buybacks."
)
FILLER = "Markets moved sideways today with modest volume across major pairs. " * 30


@pytest.fixture
def master() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def keys(tmp_path: Path, master: MasterKey) -> Iterator[KeyManager]:
    with KeyManager.open(tmp_path / "state", master) as manager:
        yield manager


@pytest.fixture
def store(tmp_path: Path, keys: KeyManager) -> Iterator[KnowledgeStore]:
    with KnowledgeStore.open(tmp_path / "state", keys) as knowledge:
        yield knowledge


def raw_bytes(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state.glob("knowledge.db*"))


def test_chunking_windows_overlap_and_keep_text() -> None:
    words = [f"w{i}" for i in range(450)]
    text = " ".join(words)
    chunks = chunk_text(text, size=200, overlap=40)
    assert len(chunks) == 3
    assert chunks[0].split()[-40:] == chunks[1].split()[:40]
    assert chunks[-1].split()[-1] == "w449"
    assert chunk_text("one\ntwo  three", size=10, overlap=2) == ["one\ntwo  three"]
    assert chunk_text("   ") == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("x", size=5, overlap=5)
    assert terms("Ünïcode ＢＴＣ, don't_stop") == ["ünïcode", "btc", "don", "t", "stop"]


def test_public_search_ranks_with_bm25(store: KnowledgeStore) -> None:
    store.add_public("market", "Bitcoin halving cuts the block reward in half.", title="halving")
    store.add_public("market", FILLER + " bitcoin mentioned once.", title="filler")
    store.add_public("other", "Bitcoin halving elsewhere", title="elsewhere")
    hits = store.search_public("market", "bitcoin halving")
    assert hits[0].title == "halving"
    assert {h.namespace for h in hits} == {"market"}
    assert hits[0].score > hits[-1].score
    assert store.search_public("market", 'bitcoin" OR * NEAR(') != []  # no FTS5 syntax injection
    assert store.search_public("market", "!!!") == []


def test_private_knowledge_is_not_on_disk_in_plaintext(
    store: KnowledgeStore, tmp_path: Path
) -> None:
    store.add_private("analyst-1", THESIS + " " + FILLER, title="secret thesis zanzibar")
    hits = store.search_private("analyst-1", "zanzibarcoin multisig")
    assert hits
    assert "quietly buy zanzibarcoin" in hits[0].text
    assert hits[0].title == "secret thesis zanzibar"
    store.close()
    raw = raw_bytes(tmp_path / "state")
    words = ("zanzibarcoin", "multisig", "confidential", "buybacks", "quietly", "analyst-1")
    for word in (*words, "Markets moved sideways", "zanzibar"):
        assert word.encode() not in raw, word
        assert word.encode("utf-16-le") not in raw, word


def test_one_agent_cannot_read_another_agents_private_knowledge(store: KnowledgeStore) -> None:
    store.add_private("alice", THESIS)
    assert store.search_private("alice", "zanzibarcoin")
    assert store.search_private("bob", "zanzibarcoin") == []
    assert store.search("bob", "zanzibarcoin treasury", namespaces=("market",)) == []


def test_idempotent_adds(store: KnowledgeStore) -> None:
    a = store.add_private("alice", THESIS, idempotency_key="alice:3")
    b = store.add_private("alice", THESIS, idempotency_key="alice:3")
    assert a == b
    assert len(store.search_private("alice", "zanzibarcoin")) == 1
    assert store.add_public("n", "x y z", idempotency_key="k") == store.add_public(
        "n", "x y z", idempotency_key="k"
    )


def test_remove_private(store: KnowledgeStore) -> None:
    doc = store.add_private("alice", THESIS)
    from avm.errors import NotFound

    with pytest.raises(NotFound):
        store.remove_private("bob", doc)
    store.remove_private("alice", doc)
    assert store.search_private("alice", "zanzibarcoin") == []


def test_knowledge_survives_master_key_rotation(tmp_path: Path, master: MasterKey) -> None:
    state = tmp_path / "rot"
    with KeyManager.open(state, master) as km, KnowledgeStore.open(state, km) as ks:
        ks.add_private("alice", THESIS)
        new = MasterKey.generate()
        km.rotate(new)
    with KeyManager.open(state, new) as km, KnowledgeStore.open(state, km) as ks:
        assert "zanzibarcoin" in ks.search_private("alice", "zanzibarcoin")[0].text


def test_another_master_key_cannot_read_private_knowledge(
    tmp_path: Path, master: MasterKey
) -> None:
    state = tmp_path / "a"
    with KeyManager.open(state, master) as km, KnowledgeStore.open(state, km) as ks:
        ks.add_private("alice", THESIS)
    other = tmp_path / "b"
    with KeyManager.open(other, MasterKey.generate()) as km:
        (other / "knowledge.db").write_bytes((state / "knowledge.db").read_bytes())
        with KnowledgeStore.open(other, km) as ks:  # a stolen file under someone else's keys
            assert ks.search_private("alice", "zanzibarcoin") == []


async def test_tools_direct(store: KnowledgeStore) -> None:
    search, add = knowledge_tools(store, namespaces=("market",), writable=("market",))
    inv = ToolInvocation("alice", 1, "alice:1")
    assert (await add.call_write({"text": THESIS, "title": "t"}, inv))["scope"] == "private"
    listing = {"text": "zanzibarcoin listed", "scope": "public", "namespace": "market"}
    await add.call_write(listing, ToolInvocation("alice", 2, "alice:2"))
    hits = await search.call_read({"query": "zanzibarcoin"}, inv)
    assert {h["scope"] for h in hits} == {"private", "public"}
    bob = ToolInvocation("bob", 1, "bob:1")
    assert {h["scope"] for h in await search.call_read("zanzibarcoin", bob)} == {"public"}
    with pytest.raises(CapabilityDenied):
        await search.call_read({"query": "x", "namespace": "secret-ns"}, bob)
    with pytest.raises(CapabilityDenied):
        await add.call_write({"text": "x", "scope": "public", "namespace": "other"}, bob)
    with pytest.raises(InvalidArgument):
        await search.call_read(
            {"query": "x", "agent": "alice"}, bob
        )  # no way to name another agent


async def test_tools_through_the_vm(vm: Any, tmp_path: Path, keys: KeyManager) -> None:
    with KnowledgeStore.open(tmp_path / "kstate", keys) as store:
        for tool in knowledge_tools(store, namespaces=("market",), writable=("market",)):
            vm.tools.add(tool)

        @vm.agent(name="researcher", tools=["knowledge.search", "knowledge.add"])
        async def researcher(ctx: Context, note: str, query: str) -> Any:
            await ctx.write_to_tool("knowledge.add", {"text": note, "title": "note"})
            return await ctx.read_from_tool(
                "knowledge.search", {"query": query, "scope": "private"}
            )

        mine = await vm.spawn(researcher, agent_id="r1", note=THESIS, query="zanzibarcoin").result()
        theirs = await vm.spawn(
            researcher, agent_id="r2", note="unrelated note about rain", query="zanzibarcoin"
        ).result()
        assert len(mine) == 1
        assert "zanzibarcoin" in mine[0]["text"]
        assert theirs == []
