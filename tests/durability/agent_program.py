"""An agent program run in its own process by the durability tests.

usage: agent_program.py STATE_DIR MODEL_URL (start|resume) [AGENTS ROUNDS]

``start`` spawns the agents and runs until they all finish; ``resume`` lets the VM recover
whatever the state directory holds and runs until those finish. Prints ``ALL DONE`` at the end.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp

import avm


def build(
    state_dir: str, model_url: str, ledger_url: str | None
) -> tuple[avm.VM, dict[str, aiohttp.ClientSession]]:
    vm = avm.VM(state_dir)
    vm.model("default", "openai:fake-gpt", base_url=model_url)
    session: dict[str, aiohttp.ClientSession] = {}

    @vm.tool("ledger", kind="write")
    async def ledger(data: Any, *, invocation: avm.ToolInvocation) -> Any:
        if ledger_url is None:
            return "ok"
        if "s" not in session:
            session["s"] = aiohttp.ClientSession()
        async with session["s"].post(
            ledger_url, json={"key": invocation.idempotency_key, "data": data}
        ) as response:
            return await response.json()

    @vm.agent(name="worker", budget=1_000_000)
    async def worker(ctx: avm.Context, rounds: int) -> int:
        state = await ctx.load_execution_state() or {"i": 0}
        while state["i"] < rounds:
            i = state["i"]
            reply = await ctx.run_model("default", f"{ctx.agent_id} step {ctx.step}")
            await ctx.write_to_tool("ledger", {"agent": ctx.agent_id, "round": i})
            count = (await ctx.kv_fetch("count")) or 0
            await ctx.kv_store("count", count + 1)
            await ctx.sql_execute("CREATE TABLE IF NOT EXISTS r (i INTEGER, said TEXT)")
            await ctx.sql_execute("INSERT INTO r VALUES (?, ?)", (i, reply.text))
            await ctx.swarm_broadcast("tally", {"from": ctx.agent_id, "round": i})
            state["i"] = i + 1
            await ctx.save_execution_state(state)
        return int(state["i"])

    @vm.agent(name="collector", priority="interactive")
    async def collector(ctx: avm.Context, expected: int) -> int:
        state = await ctx.load_execution_state() or {"seen": []}
        await ctx.swarm_connect("tally")
        while len(state["seen"]) < expected:
            message = await ctx.receive()
            state["seen"].append(f"{message.data['from']}/{message.data['round']}")
            await ctx.save_execution_state(state)
        await ctx.kv_store("seen", state["seen"])
        return len(state["seen"])

    return vm, session


async def main() -> None:
    state_dir, model_url, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    ledger_url = sys.argv[6] if len(sys.argv) > 6 else None
    vm, sessions = build(state_dir, model_url, ledger_url)
    async with vm:
        if mode == "start":
            agents, rounds = int(sys.argv[4]), int(sys.argv[5])
            vm.spawn("collector", agent_id="collector", expected=agents * rounds)
            for n in range(agents):
                vm.spawn("worker", agent_id=f"w{n:04d}", rounds=rounds)
        await vm.join()
        for session in sessions.values():
            await session.close()
    print("ALL DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
