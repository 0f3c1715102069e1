"""A VM whose agents all end up passivated, run in its own process to be killed.

usage: passivating_program.py STATE_DIR STORE_URL|- AGENTS

Spawns AGENTS receivers (two messages each) and one sleeper (a 0.5 s WAIT), all passivated
after 0.1 s idle; once every one is, and the store has committed their records, prints
``PASSIVATED`` and waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import avm
from avm.testing import wait_until

SLEEP_S = 0.5


def build(state_dir: str, store: str | None) -> avm.VM:
    vm = avm.VM(state_dir, store=store, passivate_after=0.1)

    @vm.agent(name="receiver")
    async def receiver(ctx: avm.Context) -> list[Any]:
        got = []
        for _ in range(2):
            envelope = await ctx.receive()
            got.append(envelope.data)
            await ctx.kv_store("seen", len(got))
        return got

    @vm.agent(name="sleeper")
    async def sleeper(ctx: avm.Context) -> str:
        await ctx.kv_store("started", True)
        await ctx.wait(SLEEP_S)
        return "rested"

    @vm.agent(name="flush")
    async def flush(ctx: avm.Context) -> None:
        # Its durable write commits behind everything queued before it: the records too.
        await ctx.kv_store("flushed", True)

    return vm


async def main() -> None:
    state_dir, store, agents = sys.argv[1], sys.argv[2], int(sys.argv[3])
    vm = build(state_dir, None if store == "-" else store)
    async with vm:
        for n in range(agents):
            vm.spawn("receiver", agent_id=f"r{n:03d}")
        vm.spawn("sleeper", agent_id="sleeper")
        await wait_until(lambda: vm.stats().passivated == agents + 1, what="all passivated")
        await vm.spawn("flush", agent_id="flush").result()
        print("PASSIVATED", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
