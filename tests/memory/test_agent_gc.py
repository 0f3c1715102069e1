"""Deleting agents returns the content only they held; shared content stays for the others."""

from __future__ import annotations

from pathlib import Path

import avm
from avm import Context
from avm.cli.dashboard import Snapshot, progress_line
from avm.memory import Tier
from avm.testing import wait_until

SHARED = "You are one of a fleet of careful analysts. " * 1200  # ~53 KB, held by every agent


def unique_text(agent_id: str) -> str:
    return f"the private notes of {agent_id}: " + agent_id * 40


async def test_deleting_ten_thousand_agents_returns_their_unique_content(tmp_path: Path) -> None:
    deleted, kept = 10_000, 10
    async with avm.VM(tmp_path / "state", durability="relaxed", memory="256MiB") as vm:

        @vm.agent(name="noter")
        async def noter(ctx: Context) -> None:
            vm.hold(ctx.agent_id, SHARED)
            vm.hold(ctx.agent_id, unique_text(ctx.agent_id))
            vm.hold(ctx.agent_id, SHARED)  # once per agent and content, however often
            await ctx.receive()

        handles = [vm.spawn(noter, agent_id=f"n{i}") for i in range(deleted + kept)]
        await wait_until(lambda: vm.stats().waiting["message"] == deleted + kept, timeout_s=120)
        store = vm.memory
        assert store is not None
        shared = store.put(SHARED, hold=False)
        assert store.holds(shared) == deleted + kept
        # Half of the doomed agents wait out of RAM, their content on disk.
        for handle in handles[: deleted // 2]:
            assert vm.passivate(handle.id)
        assert vm.stats().passivated == deleted // 2
        assert "passivated 5,000" in progress_line(Snapshot.take(vm))
        first = vm.held("n0")
        assert len(first) == 2
        assert store.tier_of(first[1]) is Tier.COLD
        before = store.stats()

        for handle in handles[:deleted]:
            await vm.delete(handle.id)
        report = vm.collect()

        after = store.stats()
        # Each agent's unique note, and each passivated agent's list of what it held.
        lists = deleted // 2
        assert report.reclaimed_entries == deleted + lists
        unique_bytes = sum(len(unique_text(f"n{i}").encode()) for i in range(deleted))
        list_bytes = lists * (8 + 2 * 32)  # a header and two refs each
        assert report.reclaimed_bytes == unique_bytes + list_bytes
        assert after.distinct_entries == before.distinct_entries - deleted - lists == kept + 1
        assert store.holds(shared) == kept
        assert store.text(shared) == SHARED
        for handle in handles[deleted:]:
            (own,) = (ref for ref in vm.held(handle.id) if ref != shared)
            assert store.text(own) == unique_text(handle.id)
        stats = vm.stats()
        assert stats.agents["killed"] == 0  # deleted agents are not counted any more
        assert stats.agents["waiting"] == kept
        assert vm.agent_count("all") == kept


async def test_a_live_agents_conversation_survives_collection(tmp_path: Path) -> None:
    async with avm.VM(tmp_path / "state", durability="relaxed") as vm:

        @vm.agent(name="talker")
        async def talker(ctx: Context) -> int:
            chat = ctx.conversation(system=SHARED, prompt=f"You are {ctx.agent_id}.")
            for turn in range(3):
                chat = chat.append("user", f"{ctx.agent_id} says {turn}")
            await ctx.receive()
            # The text is read back from the store when the agent goes on.
            return sum(len(m.content or "") for m in chat.messages())

        first, second = vm.spawn(talker, agent_id="t1"), vm.spawn(talker, agent_id="t2")
        await wait_until(lambda: vm.stats().waiting["message"] == 2)
        store = vm.memory
        assert store is not None
        # Each agent holds the shared prompt, its own prompt and its three messages: one hold
        # per agent and content; the shared prompt is stored once, held twice.
        assert len(vm.held("t1")) == len(vm.held("t2")) == 5
        shared = store.put(SHARED, hold=False)
        assert store.holds(shared) == 2
        assert vm.collect().reclaimed_entries == 0  # chats stored unheld, but their agents hold
        # Passivated, t1's chat lives on only as its held list; it is re-built on waking.
        assert vm.passivate("t1")
        assert vm.collect().reclaimed_entries == 0

        await vm.post("t1", "go")
        expected = len(SHARED) + len("You are t1.") + sum(len(f"t1 says {t}") for t in range(3))
        assert await first.result() == expected
        assert vm.collect().reclaimed_entries == 1  # the list t1 was passivated with

        await vm.delete("t2")
        report = vm.collect()
        assert report.reclaimed_entries == 4  # t2's own prompt and messages; SHARED stays
        assert store.holds(shared) == 1
        assert store.text(shared) == SHARED
        assert second.id == "t2"
