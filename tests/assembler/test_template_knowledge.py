"""Knowledge sources: read into the image at build time, loaded into the store at register/run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

import avm
from avm import assembler
from avm.keys.manager import KeyManager
from avm.keys.master import MasterKey
from avm.knowledge import KnowledgeStore, knowledge_tools

TEMPLATE = """\
name: desk
knowledge:
  notes: notes/
  market: {source: market.md, scope: public, namespace: desk-market}
  rule: {text: "Never chase a pump on thin liquidity.", title: Rule one}
tools:
  knowledge.search: {}
program:
  - read_from_tool: {api: knowledge.search, query: {query: "${q}", scope: "${scope}"}}
    as: hits
inputs: {q: string, scope: {type: string, default: all}}
result: ${hits}
"""


def write_sources(root: Path) -> None:
    (root / "notes" / "deep").mkdir(parents=True)
    (root / "notes" / "halving.md").write_text("The halving cuts issuance of BTC in half.\n")
    (root / "notes" / "deep" / "unlocks.txt").write_text("Token unlocks add supply.\n")
    (root / "notes" / "chart.png").write_bytes(b"\x89PNG not text")  # not a text file: skipped
    (root / "notes" / ".draft.md").write_text("hidden drafts are skipped\n")
    (root / "market.md").write_text("ETH gas fees fell to a yearly low.\n")
    (root / "desk.yaml").write_text(TEMPLATE)


def test_sources_are_read_into_the_image_and_its_digest(tmp_path: Path) -> None:
    write_sources(tmp_path)
    image = assembler.build(tmp_path / "desk.yaml")
    knowledge = msgspec.json.decode(image.data)["knowledge"]
    assert knowledge["notes"] == {
        "documents": [
            {"title": "notes/deep/unlocks.txt", "text": "Token unlocks add supply.\n"},
            {"title": "notes/halving.md", "text": "The halving cuts issuance of BTC in half.\n"},
        ]
    }
    assert knowledge["market"]["scope"] == "public"
    assert knowledge["market"]["namespace"] == "desk-market"
    assert knowledge["rule"]["documents"] == [
        {"title": "Rule one", "text": "Never chase a pump on thin liquidity."}
    ]
    # The image is self-contained: it loads back, away from the sources, to the same digest.
    path = image.write(tmp_path / "images")
    assert assembler.load(path).digest == image.digest
    # Building again is the same image; changing any source file changes it.
    assert assembler.build(tmp_path / "desk.yaml").digest == image.digest
    (tmp_path / "notes" / "deep" / "unlocks.txt").write_text("Token unlocks add more supply.\n")
    assert assembler.build(tmp_path / "desk.yaml").digest != image.digest
    (tmp_path / "notes" / "chart.png").write_bytes(b"other bytes")  # not a source: no change
    changed = assembler.build(tmp_path / "desk.yaml").digest
    assert assembler.build(tmp_path / "desk.yaml").digest == changed


def test_a_missing_or_unreadable_source_is_located(tmp_path: Path) -> None:
    write_sources(tmp_path)
    (tmp_path / "notes" / "bad.md").write_bytes(b"\xff\xfe not utf-8")
    text = TEMPLATE.replace("market.md", "gone.md")
    with pytest.raises(assembler.TemplateError) as refused:
        assembler.build_text(text, file="desk.yaml", base_dir=tmp_path)
    assert [str(p) for p in refused.value.problems] == [
        "desk.yaml:3:10: knowledge.notes: expected UTF-8 text files, found 'notes/bad.md' "
        "(not UTF-8)",
        "desk.yaml:4:20: knowledge.market.source: expected an existing file or directory, "
        "found 'gone.md'",
    ]


def test_a_file_name_with_a_nul_byte_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    # Found by the fuzz test: the OS refuses such a path with a ValueError of its own.
    text = '{"name": "a", "program": [{"now": null, "as": "t"}], "knowledge": {"n": "x\\u0000"},'
    text += ' "prompts": {"p": {"file": "p\\u0000.txt"}}}'
    with pytest.raises(assembler.TemplateError) as refused:
        assembler.build_text(text, file="t.json", base_dir=tmp_path)
    found = [p.found for p in refused.value.problems]
    assert "'x\\x00' (a NUL byte)" in found
    assert "'p\\x00.txt' (a NUL byte)" in found


async def test_sources_are_loaded_and_searchable_private_per_agent(tmp_path: Path) -> None:
    write_sources(tmp_path)
    image = assembler.build(tmp_path / "desk.yaml")
    state = tmp_path / "state"
    keys = KeyManager.open(state, MasterKey.generate())
    store = KnowledgeStore.open(state, keys)
    async with avm.VM(state, keys=keys) as vm:
        for tool in knowledge_tools(store, namespaces=("desk-market",)):
            vm.tools.add(tool)
        with pytest.raises(avm.ConfigError, match=r"has knowledge sources \(market, notes, rule"):
            assembler.register(vm, image)
        desk = assembler.register(vm, image, knowledge=store)
        assembler.register(vm, image, knowledge=store)  # again: nothing is added twice

        async def search(agent_id: str, q: str, scope: str = "all") -> list[Any]:
            hits = await vm.spawn(desk, agent_id=agent_id, q=q, scope=scope).result()
            return [(hit["scope"], hit["title"]) for hit in hits]

        assert await search("a", "halving") == [("private", "notes/halving.md")]
        assert await search("a", "unlocks supply") == [("private", "notes/deep/unlocks.txt")]
        assert await search("a", "liquidity pump") == [("private", "Rule one")]
        assert await search("a", "gas fees") == [("public", "market.md")]
        assert await search("a", "drafts") == []
        assert await search("b", "halving", "private") == [("private", "notes/halving.md")]
        # The same agent started again (as after a restart) does not get a second copy.
        assert await search("a", "halving", "private") == [("private", "notes/halving.md")]

        # An agent that is not of the template has none of its private knowledge, only the
        # public namespace, whatever it asks for.
        @vm.agent(name="outsider", tools=["knowledge.search"])
        async def outsider(ctx: avm.Context) -> Any:
            return await ctx.read_from_tool("knowledge.search", {"query": "halving gas fees"})

        hits = await vm.spawn(outsider, agent_id="x").result()
        assert [(hit["scope"], hit["title"]) for hit in hits] == [("public", "market.md")]
    assert len(store.search_public("desk-market", "gas fees")) == 1
    store.close()
    keys.close()
