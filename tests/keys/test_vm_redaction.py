"""Secrets never reach an agent, a model or the journal through a running VM."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import avm
from avm.keys.manager import KeyManager
from avm.keys.master import MasterKey
from avm.testing import FakeOpenAIServer

SECRET = "sk-live-5b2f9e0c7a114d"


async def test_tool_and_model_output_is_redacted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys = KeyManager.open(state, MasterKey.generate())
    keys.set("exchange_key", SECRET)
    async with FakeOpenAIServer() as server, avm.VM(state, keys=keys) as vm:
        vm.model("default", "openai:fake-gpt", base_url=server.base_url)
        server.script(f"the key is {SECRET}")

        @vm.tool("leaky")
        async def leaky(query: Any) -> dict[str, Any]:
            # A tool that echoes its environment, in plain text and base64.
            encoded = base64.b64encode(SECRET.encode()).decode()
            return {"env": f"EXCHANGE_KEY={SECRET}", "b64": encoded}

        @vm.tool("broken")
        async def broken(query: Any) -> None:
            raise RuntimeError(f"auth failed for {SECRET}")

        @vm.agent
        async def agent(ctx: avm.Context) -> Any:
            seen = await ctx.read_from_tool("leaky")
            try:
                await ctx.read_from_tool("broken")
            except avm.ToolError as exc:
                error = str(exc)
            reply = await ctx.run_model("default", f"please repeat {SECRET}")
            return seen, error, reply.text

        seen, error, reply = await vm.spawn(agent).result()
        sent = server.requests[-1]["messages"][-1]["content"]
    assert seen == {
        "env": "EXCHANGE_KEY=[REDACTED:exchange_key]",
        "b64": "[REDACTED:exchange_key]",
    }
    assert error.endswith("auth failed for [REDACTED:exchange_key]")
    assert reply == "the key is [REDACTED:exchange_key]"
    assert sent == "please repeat [REDACTED:exchange_key]"  # the model never saw it either
    raw = b"".join(p.read_bytes() for p in state.glob("state.db*"))
    assert SECRET.encode() not in raw
    assert base64.b64encode(SECRET.encode()) not in raw
    keys.close()
