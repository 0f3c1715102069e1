"""Template agents recover like Python agents: stopped mid-program, resumed from the journal.

The interpreter computes only from the image and from instruction results, so a template agent
re-run after its VM stopped replays its journal (nothing performed twice) and continues live.
"""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import avm
from avm import assembler
from avm.testing import FakeOpenAIServer, MockClock

RESUMABLE = textwrap.dedent(
    """
    name: resumable
    models:
      m: {use: default}
    prompts:
      style: Answer in one word.
    tools:
      orders: {access: write}
    setup:
      - load_prompt: {prompt_id: style}
        as: style
      - sql_execute: {query: "CREATE TABLE IF NOT EXISTS said (round INTEGER, text TEXT)"}
    program:
      - repeat: 2
        as: round
        do:
          - run_model: {model: m, input: ["${style}", "round ${round} of ${agent_id}"]}
            as: reply
          - write_to_tool: {api: orders, data: {round: "${round}", said: "${reply.text}"}}
          - sql_execute: {query: "INSERT INTO said VALUES (?, ?)",
                          params: ["${round}", "${reply.text}"]}
      - swarm_wait: {}
        as: message
      - run_model: {model: m, input: "after ${message.data}"}
        as: last
      - write_to_tool: {api: orders, data: {said: "${last.text}"}}
      - sql_fetch: {query: "SELECT count(*) FROM said"}
        as: rows
    result: {last: "${last.text}", got: "${message.data}", rows: "${rows.0.0}"}
    """
)


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(5000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


def host(vm: avm.VM, server: FakeOpenAIServer, writes: Counter[str]) -> None:
    vm.model("default", "openai:fake", base_url=server.base_url)

    @vm.tool("orders", kind="write")
    async def orders(data: Any, *, invocation: avm.ToolInvocation) -> str:
        writes[invocation.idempotency_key] += 1
        return "ok"


async def test_a_stopped_template_agent_resumes_from_its_journal(
    make_vm: Callable[..., avm.VM], fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    writes: Counter[str] = Counter()
    images = tmp_path / "images"
    async with make_vm() as vm:
        host(vm, fake_server, writes)
        built = assembler.build_text(RESUMABLE)
        path = built.write(images)
        handle = vm.spawn(assembler.register(vm, built), agent_id="r")
        await until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        steps_before = handle.step
    assert fake_server.completion_count == 2
    assert len(writes) == 2

    # A new VM on the same state: the image is loaded from its file and registered again.
    async with make_vm() as vm:
        host(vm, fake_server, writes)
        assembler.register(vm, assembler.load(path))
        handle = vm.handle("r")
        await vm.recovered()
        assert handle.step == steps_before  # replayed up to the wait, nothing performed
        await handle.post("go")
        result = await handle.result()
    assert result == {"last": "echo: after go", "got": "go", "rows": 2}
    assert fake_server.completion_count == 3  # the two first rounds were not asked again
    assert len(writes) == 3
    assert set(writes.values()) == {1}
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        ops = [op for (op,) in db.execute("SELECT op FROM journal WHERE agent_id = 'r'")]
        status = db.execute("SELECT status FROM agents WHERE agent_id = 'r'").fetchone()[0]
    assert status == "done"
    assert ops.count("RUN_MODEL") == 3
    assert ops.count("LOAD_PROMPT") == 1


async def test_a_scheduled_template_keeps_its_tick_grid_across_a_restart(
    make_vm: Callable[..., avm.VM], tmp_path: Path
) -> None:
    source = textwrap.dedent(
        """
        name: ticker
        schedule: {interval_s: 60, ticks: 4}
        program:
          - kv_store: {key: "tick/${tick}", value: "${tick}"}
        result: ${tick}
        """
    )
    clock = MockClock()
    async with make_vm(clock=clock) as vm:
        definition = assembler.register(vm, assembler.build_text(source))
        handle = vm.spawn(definition, agent_id="t")
        # Each tick is two steps (SCHEDULE_TASK, KV_STORE); tick 0 fires at once.
        await until(lambda: handle.step == 3 and handle.wait_reason is avm.WaitReason.TIMER)
        clock.advance(60)
        await until(lambda: handle.step == 5 and handle.wait_reason is avm.WaitReason.TIMER)
    async with make_vm(clock=clock) as vm:
        assembler.register(vm, assembler.build_text(source))
        handle = vm.handle("t")
        await vm.recovered()
        await until(lambda: handle.step == 5 and handle.wait_reason is avm.WaitReason.TIMER)
        clock.advance(60)
        await until(lambda: handle.step == 7 and handle.wait_reason is avm.WaitReason.TIMER)
        clock.advance(60)
        assert await handle.result() == 3
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        keys = sorted(k for (k,) in db.execute("SELECT key FROM kv WHERE agent_id = 't'"))
    assert keys == ["tick/0", "tick/1", "tick/2", "tick/3"]


async def test_a_changed_template_diverges_instead_of_guessing(
    make_vm: Callable[..., avm.VM],
) -> None:
    first = "name: evolving\nprogram:\n  - kv_store: {key: a, value: 1}\n  - swarm_wait: {}\n"
    second = "name: evolving\nprogram:\n  - kv_store: {key: a, value: 2}\n  - swarm_wait: {}\n"
    async with make_vm() as vm:
        handle = vm.spawn(assembler.register(vm, assembler.build_text(first)), agent_id="e")
        await until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
    async with make_vm() as vm:
        assembler.register(vm, assembler.build_text(second))
        with pytest.raises(avm.AgentFailed) as failed:
            await vm.handle("e").result()
    assert isinstance(failed.value.__cause__, avm.ReplayDivergence)
