"""Per-agent storage: isolation (including SQL escape attempts) and persistence across restarts.

Every VM test runs on both state stores; agents' own SQL is a SQLite file per agent with either.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import avm
from avm import Context
from avm.testing import wait_until

BACKENDS = ("sqlite", "postgres")  # run each VM test on both state stores
StateSql = Callable[..., Awaitable[list[tuple[Any, ...]]]]  # the conftest's state_sql fixture


async def test_kv_is_per_agent(vm: avm.VM) -> None:
    @vm.agent
    async def writer(ctx: Context, value: str) -> Any:
        before = await ctx.kv_fetch("shared-name")
        await ctx.kv_store("shared-name", value)
        return before, await ctx.kv_fetch("shared-name")

    assert await vm.spawn(writer, agent_id="a", value="from a").result() == (None, "from a")
    assert await vm.spawn(writer, agent_id="b", value="from b").result() == (None, "from b")


async def test_sql_is_per_agent(vm: avm.VM) -> None:
    @vm.agent
    async def owner(ctx: Context) -> None:
        await ctx.sql_execute("CREATE TABLE secrets (v TEXT)")
        await ctx.sql_execute("INSERT INTO secrets VALUES ('mine')")

    @vm.agent
    async def snoop(ctx: Context) -> Any:
        tables = await ctx.sql_fetch("SELECT name FROM sqlite_master")
        try:
            await ctx.sql_fetch("SELECT * FROM _avm_applied")
        except avm.SqlDenied as exc:
            return tables, str(exc)
        return tables, "readable"

    await vm.spawn(owner).result()
    tables, bookkeeping = await vm.spawn(snoop).result()
    # A database of its own: only the VM's (unreadable) exactly-once record is there.
    assert tables == [["_avm_applied"]]
    assert "table _avm_applied belongs to the VM" in bookkeeping


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("ATTACH DATABASE '{other}' AS other", "ATTACH"),
        ("VACUUM INTO '{tmp}/copy.db'", "cannot VACUUM from within a transaction"),
        ("PRAGMA database_list", "PRAGMA statements are not allowed"),
        ("PRAGMA writable_schema = 1", "PRAGMA statements are not allowed"),
        ("SELECT load_extension('/tmp/evil.so')", "load_extension is not allowed"),
        ("BEGIN", "transaction"),
        ("SAVEPOINT s", "savepoints are not allowed"),
        ("SELECT * FROM other.secrets", "no such table: other.secrets"),
    ],
)
async def test_sql_escape_attempts_are_refused(
    make_vm: Callable[..., avm.VM], tmp_path: Path, query: str, reason: str
) -> None:
    async with make_vm() as vm:

        @vm.agent
        async def owner(ctx: Context) -> None:
            await ctx.sql_execute("CREATE TABLE secrets (v TEXT)")
            await ctx.sql_execute("INSERT INTO secrets VALUES ('mine')")

        @vm.agent
        async def attacker(ctx: Context, query: str) -> str:
            try:
                await ctx.sql_execute(query)
            except avm.StorageError as exc:
                return f"{type(exc).__name__}: {exc}"
            return "allowed"

        await vm.spawn(owner, agent_id="owner").result()
        other = vm._runtime().sql.path_for("owner")
        sql = query.format(other=other, tmp=tmp_path)
        message = await vm.spawn(attacker, agent_id="mallory", query=sql).result()
    assert message != "allowed"
    assert reason in message
    assert "agent 'mallory', step 0, SQL_EXECUTE" in message
    assert not (tmp_path / "copy.db").exists()
    with sqlite3.connect(other) as db:  # nothing of the owner's was touched
        assert db.execute("SELECT v FROM secrets").fetchall() == [("mine",)]


async def test_only_one_statement_per_call(vm: avm.VM) -> None:
    @vm.agent
    async def agent(ctx: Context) -> str:
        try:
            await ctx.sql_execute("CREATE TABLE a (x); DROP TABLE a")
        except avm.StorageError as exc:
            return str(exc)
        return "allowed"

    assert "one statement at a time" in await vm.spawn(agent).result()


async def test_runaway_sql_hits_the_step_limit(make_vm: Callable[..., avm.VM]) -> None:
    async with make_vm(sql_max_steps=10_000) as vm:

        @vm.agent
        async def agent(ctx: Context) -> str:
            try:
                await ctx.sql_fetch(
                    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c) "
                    "SELECT count(*) FROM c"
                )
            except avm.StorageError as exc:
                return str(exc)
            return "finished"

        assert "over the VM's per-statement step limit" in await vm.spawn(agent).result()


async def test_kv_sql_and_state_survive_a_restart(make_vm: Callable[..., avm.VM]) -> None:
    async def first(ctx: Context) -> None:
        await ctx.kv_store("counter", 41)
        await ctx.save_execution_state({"phase": "analysed"})
        await ctx.sql_execute("CREATE TABLE trades (token TEXT, qty REAL)")
        await ctx.sql_execute("INSERT INTO trades VALUES ('ETH', 1.5)")

    async def second(ctx: Context) -> Any:
        counter = await ctx.kv_fetch("counter")
        await ctx.kv_store("counter", counter + 1)
        return (
            await ctx.kv_fetch("counter"),
            await ctx.load_execution_state(),
            await ctx.sql_fetch("SELECT token, qty FROM trades"),
        )

    async with make_vm() as vm:
        await vm.spawn(vm.agent(name="trader")(first), agent_id="trader-x").result()
    async with make_vm() as vm:
        handle = vm.spawn(vm.agent(name="trader")(second), agent_id="trader-x")
        result = await handle.result()
        # The agent's journal continues where its history ended.
        assert handle.step == 4 + 5
    assert result == (42, {"phase": "analysed"}, [["ETH", 1.5]])


async def test_agent_records_persist_status(
    make_vm: Callable[..., avm.VM], state_sql: StateSql
) -> None:
    async with make_vm() as vm:

        @vm.agent(budget=100)
        async def done(ctx: Context) -> None:
            await ctx.kv_store("k", 1)

        @vm.agent
        async def forever(ctx: Context) -> None:
            await ctx.receive()

        await vm.spawn(done, agent_id="d").result()
        vm.spawn(forever, agent_id="f")
    rows: dict[str, str] = dict(await state_sql("SELECT agent_id, status FROM agents"))
    ((spent,),) = await state_sql("SELECT spent FROM agents WHERE agent_id = 'd'")
    assert rows == {"d": "done", "f": "stopped"}
    assert spent == 10  # KV_STORE of 1 (one msgpack byte) at 0.01 gas a byte: 10 milligas


async def test_relaxed_durability_still_persists_on_stop(make_vm: Callable[..., avm.VM]) -> None:
    async with make_vm(durability="relaxed") as vm:

        @vm.agent
        async def agent(ctx: Context) -> None:
            for i in range(100):
                await ctx.kv_store(f"k{i}", i)

        await vm.spawn(agent, agent_id="r").result()
    async with make_vm() as vm:

        @vm.agent
        async def reader(ctx: Context) -> Any:
            return await ctx.kv_fetch("k99")

        assert await vm.spawn(reader, agent_id="r").result() == 99


async def test_concurrent_kv_reads_get_their_own_values(make_vm: Callable[..., avm.VM]) -> None:
    # Reads issued together are answered together (one query on PostgreSQL): each must still
    # get its own agent's value, and a missing key None.
    async with make_vm() as vm:

        @vm.agent
        async def keeper(ctx: Context, n: int) -> Any:
            await ctx.kv_store("n", n)
            await ctx.kv_store(f"only-{n}", n * 10)
            await ctx.receive()
            return await ctx.kv_fetch("n"), await ctx.kv_fetch(f"only-{n}"), await ctx.kv_fetch("x")

        handles = [vm.spawn(keeper, agent_id=f"k{n}", n=n) for n in range(200)]
        await wait_until(lambda: vm.stats().waiting["message"] == len(handles))
        for handle in handles:
            await handle.post("go")
        results = [await handle.result() for handle in handles]
    assert results == [(n, n * 10, None) for n in range(200)]
