"""End to end: the seeds' portfolio watcher, as the example template, run as a fleet.

N template agents against local tools and the fake model server (real HTTP): each reads news
and prices, asks the model, writes KV and SQL, broadcasts its verdict to a listening Python
agent, places orders when convinced, on a schedule of ticks. Everything they did is checked
against what the demo's deterministic market and fake analyst say they should have done.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import msgspec

import avm
from avm import assembler
from avm.demo.portfolio import OrderBook, analyst_reply, headlines, quote, ticker
from avm.storage.agent_sql import AgentDatabases
from avm.testing import FakeOpenAIServer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "templates"
AGENTS, TICKS = 24, 3


def fast_watcher() -> assembler.Image:
    text = (EXAMPLE / "portfolio_watcher.yaml").read_text(encoding="utf-8")
    assert "interval_s: 2.0" in text
    text = text.replace("interval_s: 2.0", "interval_s: 0.05")
    return assembler.build_text(text, file="portfolio_watcher.yaml", base_dir=EXAMPLE)


def expected_answer(token: str, tick: int) -> tuple[dict[str, Any], str]:
    """What the watcher sees on a tick, and what the fake analyst answers."""
    price = quote(token, tick)
    brief = (
        f"token {token}\nprice {price['price']!r} change {price['change_pct']!r}%\n"
        f"headlines: {msgspec.json.encode(headlines(token, tick)).decode()}"
    )
    return price, analyst_reply({"messages": [{"role": "user", "content": brief}]})


async def collector(ctx: avm.Context, expected: int) -> list[Any]:
    await ctx.swarm_connect("verdicts")
    return [(await ctx.receive()).data for _ in range(expected)]


async def test_a_fleet_of_template_watchers(tmp_path: Path) -> None:
    book = OrderBook()
    news_calls: list[tuple[str, int]] = []
    async with FakeOpenAIServer(latency_s=0.01, responder=analyst_reply) as server:
        vm = avm.VM(tmp_path / "state")

        @vm.tool("news", description="Latest headlines about a token")
        async def news(query: dict[str, Any]) -> list[str]:
            news_calls.append((query["token"], query["tick"]))
            await asyncio.sleep(0.002)
            return headlines(query["token"], query["tick"])

        @vm.tool("prices")
        async def prices(query: dict[str, Any]) -> dict[str, Any]:
            return quote(query["token"], query["tick"])

        vm.tool("orders", kind="write")(book.place)
        vm.model(
            "default", "openai:fake-gpt", base_url=server.base_url, price_in=0.001, price_out=0.003
        )
        async with vm:
            watcher = assembler.register(vm, fast_watcher())
            listener = vm.agent(name="collector", tools=[], models=[], prompts=[])(collector)
            inbox = vm.spawn(listener, expected=AGENTS * TICKS)
            for _ in range(5000):  # until the listener has joined the swarm
                if inbox.wait_reason is avm.WaitReason.MESSAGE:
                    break
                await asyncio.sleep(0.001)
            tokens = [ticker(i) for i in range(AGENTS)]
            handles = [vm.spawn(watcher, agent_id=f"w-{t}", token=t) for t in tokens]
            results = await asyncio.gather(*(h.result() for h in handles))
            received = await inbox.result()
            stats = vm.stats()
            by_instruction = vm.ledger.by_instruction()

    # Every watcher ran its three ticks (a watcher that falls more than an interval behind
    # skips to the current tick, so the tick numbers are read from what the tools were asked).
    seen: dict[str, list[int]] = {token: [] for token in tokens}
    for token, tick in news_calls:
        seen[token].append(tick)
    assert all(len(ticks) == TICKS and ticks == sorted(set(ticks)) for ticks in seen.values())
    assert server.completion_count == AGENTS * TICKS
    assert stats.agents["done"] == AGENTS + 1

    expected_orders = 0
    for token, result in zip(tokens, results, strict=True):
        last = seen[token][-1]
        price, answer = expected_answer(token, last)
        assert result == {"token": token, "tick": last, "price": price["price"], "answer": answer}
        for tick in seen[token]:
            said = expected_answer(token, tick)[1].split(":")[0]
            expected_orders += said in (
                "BUY conviction=4",
                "BUY conviction=5",
                "SELL conviction=4",
                "SELL conviction=5",
            )
    assert expected_orders > 0
    assert len(book.orders) == expected_orders
    assert book.duplicates == 0

    # The swarm broadcast reached the listener: one verdict per watcher per tick.
    assert sorted((v["token"], v["tick"]) for v in received) == sorted(news_calls)

    state = tmp_path / "state"
    with sqlite3.connect(state / "state.db") as db:
        kv = dict(db.execute("SELECT agent_id, value FROM kv WHERE key LIKE 'verdict/%'"))
    assert len(kv) == AGENTS
    assert msgspec.msgpack.decode(kv["w-BTC"]) == results[0]
    databases = AgentDatabases(state / "sql")
    for token in tokens[:3]:
        with sqlite3.connect(databases.path_for(f"w-{token}")) as db:
            rows = db.execute("SELECT tick, token, answer FROM verdicts ORDER BY tick").fetchall()
        assert rows == [(k, token, expected_answer(token, k)[1]) for k in seen[token]]

    # Metered like any agent: every instruction family the flow uses was charged.
    charged = {str(op) for op, gas in by_instruction.items() if gas > 0}
    assert {"LOAD_PROMPT", "READ_FROM_TOOL", "RUN_MODEL", "KV_STORE", "WRITE_TO_TOOL"} <= charged
