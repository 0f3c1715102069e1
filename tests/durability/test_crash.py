"""Agents survive SIGKILL of their host: nothing completed is performed twice, nothing is lost.

A VM runs in a subprocess with hundreds of agents mid-workflow (model calls against the fake
server, tool writes to a counting server, KV and SQL writes, messages to a collector). It is
killed with SIGKILL at random moments, restarted on the same state directory each time, and
finally left to finish. Then: every agent finished; a model call or tool write seen more than
once belongs to a step journaled as performed again after a crash (it was in flight); every KV
counter and SQL table has exactly one write per round; the collector got every message exactly
once; every hash chain verifies.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from avm._core.journal import EntryFlag
from avm.history import verify
from avm.storage.agent_sql import AgentDatabases
from avm.testing import FakeOpenAIServer

PROGRAM = Path(__file__).with_name("agent_program.py")
AGENTS, ROUNDS = 200, 4


class Ledger:
    """A counting tool server: records every write it receives, keyed by idempotency key."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls[body["key"]] += 1
        return web.json_response({"ok": True})


@pytest.fixture
async def ledger() -> AsyncIterator[tuple[Ledger, str]]:
    counter = Ledger()
    app = web.Application()
    app.router.add_post("/ledger", counter.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield counter, f"http://127.0.0.1:{port}/ledger"
    await runner.cleanup()


async def run_program(args: list[str], state: Path, kill_at_entries: int | None) -> bool:
    """Run the agent program; SIGKILL it once its journal holds ``kill_at_entries`` entries.

    Returns True if it ran to the end instead.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(PROGRAM), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    finishing = asyncio.ensure_future(process.communicate())
    while kill_at_entries is not None and not finishing.done():
        if journal_size(state) >= kill_at_entries:
            process.send_signal(signal.SIGKILL)
            await finishing
            return False
        await asyncio.sleep(0.02)
    out, err = await asyncio.wait_for(finishing, timeout=120)
    assert process.returncode == 0, err.decode()[-3000:]
    return b"ALL DONE" in out


def journal_size(state: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM journal").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created yet, or busy: ask again


def journal_flags(state: Path) -> dict[tuple[str, int], int]:
    with sqlite3.connect(state / "state.db") as db:
        return {(a, s): f for a, s, f in db.execute("SELECT agent_id, step, flags FROM journal")}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sigkill_at_random_points(
    tmp_path: Path, ledger: tuple[Ledger, str], seed: int
) -> None:
    counter, ledger_url = ledger
    rng = random.Random(seed)
    state = tmp_path / "state"
    async with FakeOpenAIServer(latency_s=0.002, record_limit=None) as server:
        common = [str(state), server.base_url]
        # Each worker journals 9 entries a round; kill at random points spread over the run.
        expected = AGENTS * ROUNDS * 9
        kill_points = sorted(rng.uniform(0.05, 0.95) * expected for _ in range(3))
        finished = await run_program(
            [*common, "start", str(AGENTS), str(ROUNDS), ledger_url], state, int(kill_points[0])
        )
        kills = 0
        while not finished:
            kills += 1
            point = int(kill_points[kills]) if kills < len(kill_points) else None
            finished = await run_program([*common, "resume", "0", "0", ledger_url], state, point)
        prompts = Counter(_last_user_text(r) for r in server.requests)

    assert kills == 3, "the run finished before every kill point: make the workload longer"
    flags = journal_flags(state)

    def in_flight(agent: str, step: int) -> bool:
        return bool(flags.get((agent, step), 0) & EntryFlag.AFTER_CRASH)

    for prompt, seen in prompts.items():  # "w0007 step 12"
        agent, _, step = prompt.split()
        assert seen == 1 or in_flight(agent, int(step)), f"model call {prompt} made {seen} times"
    for key, seen in counter.calls.items():  # "w0007:13"
        agent, step = key.rsplit(":", 1)
        assert seen == 1 or in_flight(agent, int(step)), f"tool write {key} made {seen} times"
    assert len(counter.calls) == AGENTS * ROUNDS

    with sqlite3.connect(state / "state.db") as db:
        statuses = Counter(s for (s,) in db.execute("SELECT status FROM agents"))
        counts = dict(db.execute("SELECT agent_id, value FROM kv WHERE key = 'count'"))
        (seen_blob,) = db.execute(
            "SELECT value FROM kv WHERE agent_id = 'collector' AND key = 'seen'"
        ).fetchone()
    assert statuses == {"done": AGENTS + 1}
    assert set(counts.values()) == {bytes([ROUNDS])}
    assert len(counts) == AGENTS
    databases = AgentDatabases(state / "sql")
    for n in range(AGENTS):
        with sqlite3.connect(databases.path_for(f"w{n:04d}")) as db:
            rounds = [i for (i,) in db.execute("SELECT i FROM r ORDER BY i")]
        assert rounds == list(range(ROUNDS))
    seen = _msgpack(seen_blob)
    assert len(seen) == len(set(seen)) == AGENTS * ROUNDS

    assert any(f & EntryFlag.AFTER_CRASH for f in flags.values())
    report = verify(state)
    assert report.ok, report.breaks
    assert report.agents == AGENTS + 1


def _last_user_text(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def _msgpack(blob: bytes) -> Any:
    import msgspec

    return msgspec.msgpack.decode(blob)
