"""A small agent for the history and portability tests, importable and runnable as a program.

usage: keeper.py STATE_DIR MESSAGE [STORE_URL] — resume agent ``k`` in STATE_DIR (and the
PostgreSQL store STORE_URL, if given), send it MESSAGE, print what it returns.

The keeper follows the checkpoint pattern: it loads its state first, does its setup only when
it has none, and saves the state as the last instruction of the setup.
"""

from __future__ import annotations

import asyncio
import sys

import avm

MARKER = "MARKER-7f3a9c"


def define(vm: avm.VM) -> avm.AgentDefinition:
    @vm.agent(name="keeper")
    async def keeper(ctx: avm.Context) -> str:
        state = await ctx.load_execution_state()
        if state is None:
            await ctx.kv_store("note", MARKER)
            await ctx.sql_execute("CREATE TABLE t (v TEXT)")
            await ctx.sql_execute("INSERT INTO t VALUES ('kept')")
            await ctx.save_execution_state({"phase": 1})
        message = await ctx.receive()
        rows = await ctx.sql_fetch("SELECT v FROM t")
        return f"{message.data}:{rows[0][0]}:{await ctx.kv_fetch('note')}"

    return keeper


async def resume(state_dir: str, message: str, store: str | None) -> str:
    async with avm.VM(state_dir, store=store) as vm:
        define(vm)
        handle = vm.handle("k")
        await handle.post(message)
        return str(await handle.result())


if __name__ == "__main__":
    print(asyncio.run(resume(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)))
