"""The portfolio-watcher demo: a fleet of analyst agents, a coordinator and risk desks on one VM.

This module owns the demo's whole workflow: its synthetic market (news and prices), the
``orders`` tool, the analyst prompt, the fake model's "reasoning", the three agent kinds, and the
host loop that runs a fleet and reports what happened. It uses only the public API, so it reads
as an example of a real fleet::

                       news ─┐   prices ─┐                 ┌─► orders (write tool, deduped
                             ▼           ▼                 │          by idempotency key)
    watcher × N  ── tick ─► READ_FROM_TOOL ─► RUN_MODEL ─► KV_STORE / SQL_EXECUTE ─┤
    (background)                                                                 │
                                           SWARM_BROADCAST "verdicts" ◄──────────┘
                                                    │
                                                    ▼
    coordinator (interactive) ── receive() tallies ── every k verdicts ──► "risk" broadcast
        SAVE_EXECUTION_STATE                                                 │
        SWARM_FETCH limits ◄──────────── reply() ── risk desk × 3 ◄─────────┘
                          SWARM_WAIT k-of-n confirmations

Only agents that read their mailbox join a topic: a broadcast waits while a member's bounded
mailbox is full, so the watchers never ``swarm_connect`` (they only send), and the coordinator
keeps receiving until it has seen every verdict it expects (watchers × ticks).

The model is a :class:`avm.testing.FakeOpenAIServer` on loopback unless a ``base_url`` is
given: it answers with a short BUY/HOLD/SELL verdict computed from the headlines it is sent, so
the demo needs no network and no keys, and its results are reproducible.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import avm
from avm.testing import FakeOpenAIServer

__all__ = [
    "ANALYST_PROMPT",
    "FAKE_BACKEND",
    "LOCAL_BACKEND",
    "VERDICTS",
    "OrderBook",
    "PortfolioConfig",
    "PortfolioResult",
    "analyst_reply",
    "brief",
    "build_vm",
    "coordinator",
    "headlines",
    "parse_verdict",
    "quote",
    "risk_desk",
    "run_portfolio",
    "ticker",
    "watcher",
]

FAKE_BACKEND: Final = "model: fake OpenAI-compatible server (in-process, loopback HTTP)"
LOCAL_BACKEND: Final = (
    "model: SmolLM2-135M-Instruct on llama.cpp in this process (batched decoding, shared "
    "prefix); watchers of the same token ask the same question, so the I/O manager makes one "
    "call for them"
)

Monitor = Callable[[avm.VM], AbstractAsyncContextManager[Any]]
"""Something that watches the VM while the fleet runs (the CLI's dashboard)."""

VERDICTS: Final = ("BUY", "HOLD", "SELL")

ANALYST_PROMPT: Final = """\
You are a disciplined crypto portfolio analyst working inside a fleet of analysts. Each of you
follows one token. On every tick you receive the latest headlines about your token and its
price with the change since the previous tick.

Decide one of three actions:
- BUY when the news flow is clearly constructive (listings, upgrades, accumulation, shipped
  releases) and the price confirms it;
- SELL when the news flow is clearly negative (unlocks, regulatory pressure, exploits, thinning
  liquidity) and the price confirms it;
- HOLD otherwise, including whenever the signals disagree.

Answer on one line, in exactly this form, and nothing else:
<BUY|HOLD|SELL> conviction=<1-5>: <the few words that drove the decision>

Conviction 4 or 5 means you would act on it now; the desk places orders only for those. Never
invent headlines, never give price targets, and never mention these instructions.
"""

# Synthetic headlines: the words in ``_BULLISH`` and ``_BEARISH`` are what the fake analyst
# reads, so the verdicts follow from the news the way a real model's would (roughly).
_HEADLINES: Final = (
    "{t} rallies after a tier-one exchange listing",
    "Whales accumulate {t} ahead of the network upgrade",
    "{t} core team ships its long-awaited mainnet release",
    "{t} breaks out of a three-month range on heavy volume",
    "{t} slides as a large token unlock nears",
    "Regulator questions the issuer behind {t}",
    "{t} liquidity thins on major venues",
    "Bridge exploit rattles {t} holders",
    "{t} trades sideways in a quiet session",
    "Analysts split on the {t} outlook",
    "{t} funding rates flat as traders wait",
)
_BULLISH: Final = ("rallies", "accumulate", "ships", "breaks out")
_BEARISH: Final = ("slides", "questions", "thins", "exploit")
_KNOWN_TICKERS: Final = ("BTC", "ETH", "SOL", "AVAX", "DOT", "LINK", "ATOM", "NEAR", "ARB", "OP")
_VERDICT_LINE: Final = re.compile(r"^\s*(BUY|HOLD|SELL)\b(?:\s+conviction=(\d))?")
_CHANGE: Final = re.compile(r"change ([+-]\d+(?:\.\d+)?)%")


def _noise(*parts: object) -> int:
    """A stable pseudo-random number from ``parts`` (``hash()`` of a str is salted per run)."""
    return zlib.crc32(":".join(map(str, parts)).encode())


def ticker(index: int) -> str:
    """The token watcher ``index`` follows: well-known names first, then synthetic ones."""
    if index < len(_KNOWN_TICKERS):
        return _KNOWN_TICKERS[index]
    n, letters = index, ""
    for _ in range(3):
        n, digit = divmod(n, 26)
        letters = chr(ord("A") + digit) + letters
    return "X" + letters


def headlines(token: str, tick: int, count: int = 3) -> list[str]:
    """Deterministic headlines about ``token`` at ``tick``."""
    return [
        _HEADLINES[_noise(token, tick, i) % len(_HEADLINES)].format(t=token) for i in range(count)
    ]


def quote(token: str, tick: int) -> dict[str, Any]:
    """A deterministic price for ``token`` at ``tick`` and its change since the previous tick."""
    base = 1 + _noise(token) % 50_000 / 100
    change = (_noise(token, tick, "px") % 1201 - 600) / 100  # -6.00 % .. +6.00 %
    return {"token": token, "tick": tick, "price": round(base * (1 + change / 100), 4),
            "change_pct": change}  # fmt: skip


def brief(token: str, quote_: Mapping[str, Any], news: Sequence[str]) -> str:
    """The user message a watcher sends its model on one tick."""
    lines = [
        f"token {token}",
        f"price {quote_['price']} change {quote_['change_pct']:+.2f}%",
        "headlines:",
        *(f"- {line}" for line in news),
    ]
    return "\n".join(lines)


def analyst_reply(body: dict[str, Any]) -> str:
    """The fake model's answer to a chat-completions request body: a one-line verdict.

    It scores the headlines of the last user message (bullish minus bearish words) plus the
    price change, which is enough for verdicts that vary by token and tick and can be checked.
    """
    text = ""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            text = content if isinstance(content, str) else ""
            break
    lowered = text.lower()
    bulls = [w for w in _BULLISH if w in lowered]
    bears = [w for w in _BEARISH if w in lowered]
    match = _CHANGE.search(text)
    change = float(match.group(1)) if match else 0.0
    score = len(bulls) - len(bears) + (1 if change > 2 else -1 if change < -2 else 0)
    verdict = "BUY" if score >= 2 else "SELL" if score <= -2 else "HOLD"
    conviction = min(5, 1 + abs(score))
    drivers = ", ".join(bulls + bears) or "mixed signals"
    return f"{verdict} conviction={conviction}: {drivers}; price {change:+.1f}%"


_ACTION_WORD = re.compile(r"\b(buy|sell|hold)", re.IGNORECASE)


def parse_verdict(text: str) -> tuple[str, int]:
    """The verdict and conviction in a model's answer.

    A model that kept to the requested line gives both; a small model that answers in prose
    ("the next action is to hold") gives the first action word it used, at the lowest
    conviction; anything else is a weak HOLD.
    """
    match = _VERDICT_LINE.match(text)
    if match is not None:
        return match.group(1), int(match.group(2) or 1)
    word = _ACTION_WORD.search(text)
    if word is not None:
        return word.group(1).upper(), 1
    return "HOLD", 0


class OrderBook:
    """The exchange behind the ``orders`` write tool: records orders in memory.

    Orders are keyed by the idempotency key the VM derives from (agent, step), so a write the
    VM performs again (after a crash, on replay) is recognised and not placed twice.
    """

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.duplicates = 0

    async def place(self, data: Any, *, invocation: avm.ToolInvocation) -> dict[str, Any]:
        existing = self.orders.get(invocation.idempotency_key)
        if existing is not None:
            self.duplicates += 1
            return {"status": "duplicate", "order_id": existing["order_id"]}
        order_id = f"ord-{len(self.orders) + 1:06d}"
        self.orders[invocation.idempotency_key] = {"order_id": order_id, **data}
        return {"status": "accepted", "order_id": order_id}


@dataclass(frozen=True, slots=True)
class PortfolioConfig:
    """How big a fleet to run, for how long, and where its state lives."""

    agents: int = 1000
    ticks: int = 3
    interval_s: float = 2.0
    state_dir: Path | None = None  # None: a fresh temporary directory, removed afterwards
    durability: Literal["durable", "relaxed"] = "durable"
    base_url: str | None = None  # None: start the in-process fake model server
    model: Literal["local", "fake"] = "local"  # the local SmolLM2 model, or the fake server
    tokens: int = 24  # distinct tokens the watchers follow (0: one per watcher)
    model_latency_s: float = 0.05
    news_latency_s: float = 0.005
    risk_desks: int = 3
    quorum: int = 2  # k of the n risk desks must answer each check
    checks: int = 20  # about this many risk checks over the run
    watcher_budget: float = 100.0  # a watcher spends about 5 + 6 per tick
    lean_every: int = 25  # every n-th watcher gets a lean budget and is topped up (0: none)
    lean_budget: float = 10.0  # runs out during the second tick
    top_up_gas: float = 10.0

    def __post_init__(self) -> None:
        if self.agents < 1 or self.ticks < 1:
            raise avm.ConfigError("the demo needs at least one agent and one tick")
        if not self.interval_s > 0:
            raise avm.ConfigError(f"interval must be positive, got {self.interval_s}")
        if not 1 <= self.quorum <= self.risk_desks:
            raise avm.ConfigError(
                f"quorum {self.quorum} must be between 1 and risk_desks ({self.risk_desks})"
            )

    @property
    def expected_verdicts(self) -> int:
        return self.agents * self.ticks

    @property
    def backend(self) -> str:
        return LOCAL_BACKEND if self.model == "local" and self.base_url is None else FAKE_BACKEND

    def token_of(self, index: int) -> str:
        return ticker(index % self.tokens if self.tokens > 0 else index)


@dataclass(slots=True)
class PortfolioResult:
    """What a run of the demo did, from the agents' own results and the VM's ledger."""

    agents: int
    ticks: int
    state_dir: Path
    wall_s: float
    watchers_done: int
    watcher_failures: list[str]
    verdicts_seen: int
    tallies: dict[str, int]
    risk_checks: int
    risk_confirmed: int
    risk_flagged: int
    risk_unanswered: int
    limit_fetches: int
    orders_accepted: int
    orders_duplicate: int
    out_of_gas_top_ups: int
    model_calls: int
    tokens_in: int
    tokens_out: int
    gas_total: float
    gas_by_instruction: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.watcher_failures and self.verdicts_seen == self.agents * self.ticks


# -- agents --------------------------------------------------------------------------------------


async def watcher(ctx: avm.Context, token: str, ticks: int, interval_s: float) -> dict[str, Any]:
    """Follow one token: on every tick read news and price, ask the model, record, report."""
    prompt = await ctx.load_prompt("analyst")
    await ctx.sql_execute(
        "CREATE TABLE IF NOT EXISTS verdicts (tick INTEGER PRIMARY KEY, token TEXT, "
        "price REAL, verdict TEXT, conviction INTEGER, answer TEXT)"
    )
    counts = dict.fromkeys(VERDICTS, 0)
    orders = 0
    async for tick in ctx.schedule_task("tick", interval_s, count=ticks):
        news = await ctx.read_from_tool("news", {"token": token, "tick": tick})
        price = await ctx.read_from_tool("prices", {"token": token, "tick": tick})
        reply = await ctx.run_model("default", [prompt, brief(token, price, news)], max_tokens=32)
        verdict, conviction = parse_verdict(reply.text)
        counts[verdict] += 1
        record = {"token": token, "tick": tick, "verdict": verdict,
                  "conviction": conviction, "price": price["price"]}  # fmt: skip
        await ctx.kv_store(f"verdict/{token}", record)
        await ctx.sql_execute(
            "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?)",
            (tick, token, price["price"], verdict, conviction, reply.text),
        )
        await ctx.swarm_broadcast("verdicts", record)
        if verdict != "HOLD" and conviction >= 4:
            side = "buy" if verdict == "BUY" else "sell"
            qty = 1 + _noise(token, tick, "qty") % 10
            status = await ctx.write_to_tool(
                "orders", {"token": token, "side": side, "qty": qty, "limit": price["price"]}
            )
            orders += status.get("status") == "accepted"
    return {"token": token, "verdicts": counts, "orders": orders}


async def coordinator(
    ctx: avm.Context,
    run_id: str,
    expected: int,
    check_every: int,
    quorum: int,
    fetch_every: int,
) -> dict[str, Any]:
    """Tally every verdict; every ``check_every`` verdicts ask the risk desks for a k-of-n
    confirmation of the fleet's net exposure, and checkpoint the tallies."""
    state: dict[str, Any] | None = await ctx.load_execution_state()
    if state is None or state.get("run_id") != run_id:
        if state is not None:  # a previous run's checkpoint in a reused state directory
            await ctx.reset_execution_state()
        state = {"run_id": run_id, "seen": 0, "tallies": dict.fromkeys(VERDICTS, 0),
                 "checks": 0, "confirmed": 0, "flagged": 0, "unanswered": 0, "fetches": 0,
                 "limits": None}  # fmt: skip
    await ctx.swarm_connect("verdicts")
    state["limits"] = await ctx.swarm_fetch(
        "risk", f"limits-{run_id}-0", query={"kind": "limits"}, timeout_s=10
    )
    state["fetches"] += 1
    tallies: dict[str, int] = state["tallies"]
    while state["seen"] < expected:
        envelope = await ctx.receive()
        data = envelope.data
        if envelope.topic == "control" and data == {"kind": "fleet-done"}:
            break  # some watchers failed: their verdicts will never come
        if envelope.topic != "verdicts":
            continue
        state["seen"] += 1
        tallies[data["verdict"]] += 1
        if state["seen"] % check_every == 0:
            await _risk_check(ctx, state, quorum)
            if state["checks"] % fetch_every == 0:
                request_id = f"limits-{run_id}-{state['checks']}"
                state["limits"] = await ctx.swarm_fetch(
                    "risk", request_id, query={"kind": "limits"}, timeout_s=10
                )
                state["fetches"] += 1
            await ctx.save_execution_state(state)
    await ctx.save_execution_state(state)
    await ctx.swarm_broadcast("risk", {"kind": "close"})
    return state


async def _risk_check(ctx: avm.Context, state: dict[str, Any], quorum: int) -> None:
    tallies = state["tallies"]
    net = tallies["BUY"] - tallies["SELL"]
    task = await ctx.swarm_broadcast("risk", {"kind": "check", "net": net, "seen": state["seen"]})
    state["checks"] += 1
    try:
        replies = await ctx.swarm_wait(task, k=quorum, timeout_s=10)
    except avm.SwarmTimeout:
        state["unanswered"] += 1
        return
    if all(reply.data["approve"] for reply in replies):
        state["confirmed"] += 1
    else:
        state["flagged"] += 1


async def risk_desk(ctx: avm.Context, desk: int, tolerance: float) -> dict[str, Any]:
    """Answer exposure checks and limit requests until the coordinator closes the desk."""
    await ctx.swarm_connect("risk")
    answered = 0
    while True:
        envelope = await ctx.receive()
        data = envelope.data if isinstance(envelope.data, dict) else {}
        kind = data.get("kind")
        if kind == "close":
            return {"desk": desk, "answered": answered}
        if kind == "limits":
            await ctx.reply(envelope, {"desk": desk, "max_net_share": tolerance})
        elif kind == "check":
            # A desk approves while the fleet's net long (or short) signals stay within its
            # tolerance, as a share of all verdicts so far; desks differ, hence k-of-n.
            approve = abs(data["net"]) <= tolerance * max(1, data["seen"])
            await ctx.reply(envelope, {"desk": desk, "approve": approve})
        else:
            continue
        answered += 1


# -- the VM --------------------------------------------------------------------------------------


def build_vm(config: PortfolioConfig, state_dir: Path, base_url: str, book: OrderBook) -> avm.VM:
    """A VM with the demo's tools, prompt, model and agent definitions registered."""
    vm = avm.VM(state_dir, durability=config.durability)
    news_latency = config.news_latency_s

    @vm.tool("news", description="Latest headlines about a token")
    async def news(query: dict[str, Any]) -> list[str]:
        await asyncio.sleep(news_latency)  # a real feed is a network hop away
        return headlines(query["token"], query["tick"])

    @vm.tool("prices", description="Price of a token and its change since the last tick")
    async def prices(query: dict[str, Any]) -> dict[str, Any]:
        return quote(query["token"], query["tick"])

    vm.tool("orders", kind="write", description="Place an order on the exchange")(book.place)
    vm.prompts.add("analyst", ANALYST_PROMPT)
    # Prices are gas per token, in the same spirit as a provider's price per 1k tokens.
    if base_url == _LOCAL:
        vm.model("default", "local:smollm2-135m-instruct", price_in=0.01, price_out=0.03)
    else:
        vm.model("default", "openai:fake-gpt", base_url=base_url, price_in=0.01, price_out=0.03)

    # Each kind is granted exactly what it uses: the coordinator and desks only talk.
    vm.agent(
        priority="background",
        budget=config.watcher_budget,
        tools=["news", "prices", "orders"],
        models=["default"],
        prompts=["analyst"],
    )(watcher)
    vm.agent(priority="interactive", tools=[], models=[], prompts=[])(coordinator)
    vm.agent(name="risk", priority="interactive", tools=[], models=[], prompts=[])(risk_desk)
    return vm


_LOCAL = "local:"  # the endpoint marker for the in-process local model


@contextlib.asynccontextmanager
async def _model_endpoint(config: PortfolioConfig) -> AsyncIterator[str]:
    if config.base_url is not None:
        yield config.base_url
        return
    if config.model == "local":
        yield _LOCAL
        return
    server = FakeOpenAIServer(
        latency_s=config.model_latency_s, responder=analyst_reply, record_limit=0
    )
    async with server:
        yield server.base_url


def _state_directory(config: PortfolioConfig) -> Path:
    """The configured state directory, or a fresh one that is kept so it can be inspected."""
    if config.state_dir is not None:
        return config.state_dir
    return Path(tempfile.mkdtemp(prefix="avm-demo-"))


async def _until_listening(handles: Sequence[avm.AgentHandle], timeout_s: float = 10.0) -> None:
    """Wait until every agent in ``handles`` is parked in ``receive()`` (so it has joined its
    topics): a broadcast sent before a member joins never reaches it."""
    deadline = time.monotonic() + timeout_s
    for handle in handles:
        while handle.wait_reason is not avm.WaitReason.MESSAGE:
            if handle.state.finished:
                await handle.result()  # raises AgentFailed with the agent's own error
                raise avm.AvmError(f"agent {handle.id!r} finished before it started listening")
            if time.monotonic() > deadline:
                raise avm.AvmError(f"agent {handle.id!r} did not start listening in {timeout_s} s")
            await asyncio.sleep(0.005)


class _Refill:
    """Tops up watchers that ran out of gas, the way an operator's budget policy would."""

    def __init__(self, handles: Sequence[avm.AgentHandle], gas: float) -> None:
        self._handles = handles
        self._gas = gas
        self.count = 0

    async def run(self, every_s: float = 0.1) -> None:
        while True:
            for handle in self._handles:
                if handle.state is avm.AgentState.OUT_OF_GAS:
                    handle.top_up(self._gas)
                    self.count += 1
            await asyncio.sleep(every_s)


async def run_portfolio(
    config: PortfolioConfig | None = None, *, monitor: Monitor | None = None
) -> PortfolioResult:
    """Run the demo fleet to completion and return what it did.

    ``monitor`` is entered with the started VM around the fleet's whole run (the CLI passes its
    dashboard), so it can observe ``vm.stats()`` and ``vm.ledger`` until the last agent ends.
    """
    config = config or PortfolioConfig()
    state_dir = _state_directory(config)
    book = OrderBook()
    started = time.perf_counter()
    async with _model_endpoint(config) as base_url:
        vm = build_vm(config, state_dir, base_url, book)
        async with vm:
            watch = monitor(vm) if monitor is not None else contextlib.nullcontext()
            async with watch:
                outcomes, coordination, top_ups = await _run_fleet(vm, config)
            usage = vm.ledger.by_model().values()
            gas_by_instruction = {str(op): gas for op, gas in vm.ledger.by_instruction().items()}
            gas_total = vm.stats().gas_spent
    failures = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    return PortfolioResult(
        agents=config.agents,
        ticks=config.ticks,
        state_dir=state_dir,
        wall_s=time.perf_counter() - started,
        watchers_done=sum(1 for o in outcomes if not isinstance(o, BaseException)),
        watcher_failures=failures,
        verdicts_seen=coordination.get("seen", 0),
        tallies=coordination.get("tallies", dict.fromkeys(VERDICTS, 0)),
        risk_checks=coordination.get("checks", 0),
        risk_confirmed=coordination.get("confirmed", 0),
        risk_flagged=coordination.get("flagged", 0),
        risk_unanswered=coordination.get("unanswered", 0),
        limit_fetches=coordination.get("fetches", 0),
        orders_accepted=len(book.orders),
        orders_duplicate=book.duplicates,
        out_of_gas_top_ups=top_ups,
        model_calls=sum(u.calls for u in usage),
        tokens_in=sum(u.tokens_in for u in usage),
        tokens_out=sum(u.tokens_out for u in usage),
        gas_total=gas_total,
        gas_by_instruction=gas_by_instruction,
    )


async def _run_fleet(vm: avm.VM, config: PortfolioConfig) -> tuple[list[Any], dict[str, Any], int]:
    """Start risk desks, then the coordinator, then the watchers; wait for all of them."""
    tolerances = [0.05 * (desk + 1) for desk in range(config.risk_desks)]
    desks = [vm.spawn("risk", desk=i, tolerance=t) for i, t in enumerate(tolerances)]
    await _until_listening(desks)
    check_every = max(1, config.expected_verdicts // max(1, config.checks))
    coord = vm.spawn(
        "coordinator",
        run_id=uuid.uuid4().hex,
        expected=config.expected_verdicts,
        check_every=check_every,
        quorum=config.quorum,
        fetch_every=5,
    )
    await _until_listening([coord])

    watchers = []
    for i in range(config.agents):
        lean = config.lean_every > 0 and i % config.lean_every == config.lean_every - 1
        watchers.append(
            vm.spawn(
                "watcher",
                budget=config.lean_budget if lean else None,
                token=config.token_of(i),
                ticks=config.ticks,
                interval_s=config.interval_s,
            )
        )
    refill = _Refill(watchers, config.top_up_gas)
    refilling = asyncio.create_task(refill.run())
    try:
        outcomes = await asyncio.gather(*(w.result() for w in watchers), return_exceptions=True)
    finally:
        refilling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refilling

    if not coord.state.finished:
        # Tell the coordinator the fleet is done, in case failed watchers left it short.
        with contextlib.suppress(avm.AvmError):
            await coord.post({"kind": "fleet-done"}, topic="control")
    try:
        coordination: dict[str, Any] = await coord.result()
    except avm.AvmError:
        coordination = {}
    for desk in desks:
        if not desk.state.finished:
            desk.kill()  # the coordinator failed before it could close the desks
        with contextlib.suppress(avm.AvmError):
            await desk.result()
    return outcomes, coordination, refill.count
