"""A tiny agents file for ``avm run``: greeters that keep a guest book.

Run it::

    avm run examples/hello.py --agents 5
    avm run examples/hello.py --agents 1000 --no-dashboard

The convention ``avm run`` follows:

- the file defines ``vm = avm.VM(...)`` at module level, and registers its agents with
  ``@vm.agent`` (and its tools, prompts and models on the same ``vm``);
- if the file defines ``async def main(vm)``, ``avm run`` starts the VM and awaits
  ``main(vm)`` instead of spawning anything itself, for example::

      async def main(vm: avm.VM) -> None:
          handles = [vm.spawn(greeter, guest=name) for name in ("ada", "alan")]
          for handle in handles:
              print(await handle.result())

- otherwise it spawns ``--agents`` instances of the agent named by ``--agent`` (here there is
  only one, so the option can be left out), without arguments, and waits for them.

This file needs no model, network or key. To give the greeters a model, link one with
``vm.model("default", "openai:gpt-4o-mini", base_url=..., api_key_env="OPENAI_API_KEY")`` and
call ``await ctx.run_model("default", [prompt, "say hello"])`` in the agent.
"""

from __future__ import annotations

import datetime

import avm

vm = avm.VM()

vm.prompts.add("greeting", "Greet each guest warmly, in one short sentence, by name.")


@vm.tool("clock", description="The current UTC time, ISO 8601")
async def clock(query: object = None) -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@vm.agent(budget=100)
async def greeter(ctx: avm.Context, guest: str | None = None) -> str:
    """Sign the guest book three times, a tenth of a second apart, and remember the last visit."""
    guest = guest or ctx.agent_id
    prompt = await ctx.load_prompt("greeting")
    await ctx.sql_execute("CREATE TABLE IF NOT EXISTS guest_book (tick INTEGER, at TEXT)")
    async for tick in ctx.schedule_task("sign", interval_s=0.1, count=3):
        now = await ctx.read_from_tool("clock")
        await ctx.sql_execute("INSERT INTO guest_book VALUES (?, ?)", (tick, now))
    rows = await ctx.sql_fetch("SELECT count(*) FROM guest_book")
    await ctx.kv_store("last_visit", {"guest": guest, "signatures": rows[0][0]})
    return f"hello {guest}! ({prompt.tokens} prompt tokens, {rows[0][0]} signatures)"
