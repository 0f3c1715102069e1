"""Template agents reach only the hosts their template declares, with the secrets it declares.

Everything runs against the local fake services of ``conftest.py`` (one aiohttp server playing
the news feed, the exchange and the social network, plus an echo) and the fake OpenAI server:
real HTTP on loopback, real key manager, real VM.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import avm
from avm import assembler
from avm.keys import KeyManager
from avm.testing import FakeOpenAIServer
from avm.tools.builtin import (
    HttpClient,
    HttpPolicy,
    connector_tool,
    exchange,
    http_tool,
    news_feed,
    social,
)

if TYPE_CHECKING:
    from conftest import FakeServices

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "templates"
MODEL_KEY = "sk-model-key-0f3e2d1c9b8a"


def fetcher(port: int, *, hosts: str, secrets: str = "", name: str = "fetcher") -> assembler.Image:
    """A template that GETs the URL it is given through the ``http`` tool."""
    declared = f"secrets: [{secrets}]\n" if secrets else ""
    tool_secrets = f", secrets: [{secrets}]" if secrets else ""
    text = (
        f"name: {name}\n"
        "inputs: {url: string, headers: {type: object, default: {}}}\n"
        f"tools:\n  http: {{hosts: [{hosts}]{tool_secrets}}}\n"
        f"{declared}"
        "program:\n"
        "  - read_from_tool: {api: http, query: {url: '${url}', headers: '${headers}'}}\n"
        "    as: got\n"
        "result: ${got.json}\n"
    )
    return assembler.build_text(text, file="fetcher.yaml")


async def test_the_http_allow_list_of_a_template_agent_is_what_it_declares(
    tmp_path: Path, services: FakeServices, keys: KeyManager, http_client: HttpClient
) -> None:
    port = services.port
    # The VM's own http tool may reach the service as 127.0.0.1 and as localhost; the template
    # declares only 127.0.0.1, so its agents may not use the other name.
    policy = HttpPolicy(allowed_hosts=frozenset({f"127.0.0.1:{port}", f"localhost:{port}"}))
    async with avm.VM(tmp_path / "state", keys=keys) as vm:
        vm.tools.add(http_tool(policy, client=http_client, keys=keys))
        definition = assembler.register(vm, fetcher(port, hosts=f"127.0.0.1:{port}"))
        assert definition.capabilities.tools == {"fetcher/http"}

        allowed = vm.spawn(definition, url=f"http://127.0.0.1:{port}/echo?q=1")
        assert (await allowed.result())["query"] == {"q": "1"}

        denied = vm.spawn(definition, url=f"http://localhost:{port}/echo?q=2")
        with pytest.raises(avm.AgentFailed) as failed:
            await denied.result()
        cause = failed.value.__cause__
        assert isinstance(cause, avm.CapabilityDenied)
        assert "template 'fetcher' declares only these hosts" in str(cause)

        # The same request from a Python agent with the VM's tool goes through: the narrowing
        # is the template's, not the VM's.
        @vm.agent(name="python", tools=["http"])
        async def python(ctx: avm.Context) -> Any:
            got = await ctx.read_from_tool("http", {"url": f"http://localhost:{port}/echo?q=3"})
            return got["json"]["query"]

        assert await vm.spawn(python).result() == {"q": "3"}
    assert [r["query"] for r in services.requests] == [{"q": "1"}, {"q": "3"}]


async def test_secrets_go_only_to_declared_tools_and_hosts(
    tmp_path: Path, services: FakeServices, keys: KeyManager, http_client: HttpClient
) -> None:
    port = services.port
    keys.set("ECHO_KEY", services.news_key)
    policy = HttpPolicy(allowed_hosts=frozenset({f"127.0.0.1:{port}", f"localhost:{port}"}))
    secret = {"X-Key": {"$secret": "ECHO_KEY"}}
    async with avm.VM(tmp_path / "state", keys=keys) as vm:
        vm.tools.add(http_tool(policy, client=http_client, keys=keys))
        with_secret = assembler.register(
            vm, fetcher(port, hosts=f"127.0.0.1:{port}", secrets="ECHO_KEY")
        )
        # To the declared host: the service receives the value, the agent sees it redacted.
        echoed = await vm.spawn(
            with_secret, url=f"http://127.0.0.1:{port}/echo", headers=secret
        ).result()
        assert echoed["headers"]["X-Key"] == "[REDACTED:ECHO_KEY]"
        assert services.requests[-1]["headers"]["X-Key"] == services.news_key
        sent = len(services.requests)

        # To a host the template does not declare: refused before the secret is revealed.
        elsewhere = vm.spawn(with_secret, url=f"http://localhost:{port}/echo", headers=secret)
        with pytest.raises(avm.AgentFailed) as failed:
            await elsewhere.result()
        assert isinstance(failed.value.__cause__, avm.CapabilityDenied)
        assert len(services.requests) == sent

    # A template whose tool does not declare the secret cannot have it sent.
    async with avm.VM(tmp_path / "other", keys=keys) as vm:
        vm.tools.add(http_tool(policy, client=http_client, keys=keys))
        without = assembler.register(vm, fetcher(port, hosts=f"127.0.0.1:{port}", name="plain"))
        handle = vm.spawn(without, url=f"http://127.0.0.1:{port}/echo", headers=secret)
        with pytest.raises(avm.AgentFailed) as failed:
            await handle.result()
        assert isinstance(failed.value.__cause__, avm.CapabilityDenied)
        assert "ECHO_KEY" in str(failed.value.__cause__)
    assert len(services.requests) == sent


async def test_registration_refuses_network_tools_without_matching_hosts(
    tmp_path: Path, services: FakeServices, keys: KeyManager, http_client: HttpClient
) -> None:
    keys.set("EXCHANGE_API_KEY", services.exchange_key)
    async with avm.VM(tmp_path / "state", keys=keys) as vm:
        vm.tools.add(
            connector_tool(
                exchange(services.base_url, secret="EXCHANGE_API_KEY"),
                client=http_client,
                keys=keys,
            )
        )
        policy = HttpPolicy(allowed_hosts=frozenset({f"127.0.0.1:{services.port}"}))
        vm.tools.add(http_tool(policy, client=http_client, keys=keys))
        text = (
            "name: wrong\n"
            "tools:\n"
            "  exchange: {hosts: [api.exchange.example], secrets: [EXCHANGE_API_KEY]}\n"
            "  http: {}\n"
            "secrets: [EXCHANGE_API_KEY]\n"
            "program:\n"
            "  - read_from_tool: {api: exchange, query: {symbol: BTC}}\n"
        )
        with pytest.raises(avm.ConfigError) as refused:
            assembler.register(vm, assembler.build_text(text, file="wrong.yaml"))
    message = str(refused.value)
    assert (
        f"tool 'exchange' reaches 127.0.0.1:{services.port}, which template 'wrong' does not "
        "declare in its hosts (api.exchange.example)"
    ) in message
    assert "tool 'http' reaches the network: declare the hosts" in message


def trader_image(port: int) -> assembler.Image:
    text = (EXAMPLES / "portfolio_trader.yaml").read_text(encoding="utf-8")
    for host in ("news.example.com", "api.exchange.example", "social.example"):
        text = text.replace(f"[{host}]", f"[127.0.0.1:{port}]")
    text = text.replace("interval_s: 60", "interval_s: 0.05")
    return assembler.build_text(text, file="portfolio_trader.yaml", base_dir=EXAMPLES)


def analyst(body: dict[str, Any]) -> str:
    question = body["messages"][-1]["content"]
    if question.startswith("token BTC"):
        return "BUY conviction=5: BTC headline 0"
    return "HOLD conviction=2: mixed signals"


async def test_the_portfolio_trader_flow_against_local_services(
    tmp_path: Path, services: FakeServices, keys: KeyManager, http_client: HttpClient
) -> None:
    for name, value in (
        ("OPENAI_API_KEY", MODEL_KEY),
        ("NEWS_API_KEY", services.news_key),
        ("EXCHANGE_API_KEY", services.exchange_key),
        ("SOCIAL_TOKEN", services.social_token),
    ):
        keys.set(name, value)
    base = services.base_url
    async with FakeOpenAIServer(api_key=MODEL_KEY, responder=analyst) as model:
        state = tmp_path / "state"
        async with avm.VM(state, keys=keys) as vm:
            for connector in (
                news_feed(base, secret="NEWS_API_KEY"),
                exchange(base, secret="EXCHANGE_API_KEY"),
                social(base, secret="SOCIAL_TOKEN"),
            ):
                vm.tools.add(connector_tool(connector, client=http_client, keys=keys))
            text_image = trader_image(services.port)
            image = assembler.build_text(
                text_image.data.decode().replace("https://api.openai.com/v1", model.base_url),
                file="trader.avmi",
            )
            trader = assembler.register(vm, image)
            handles = {t: vm.spawn(trader, agent_id=f"t-{t}", token=t) for t in ("BTC", "ETH")}
            results = {t: await h.result() for t, h in handles.items()}
        assert model.completion_count == 6

    assert results == {"BTC": "BUY conviction=5: BTC headline 0", "ETH": analyst(
        {"messages": [{"content": "token ETH"}]})}  # fmt: skip
    # Three ticks of BTC bought three times, once each (the exchange deduplicates by the
    # idempotency key, and the agent sent each order once), and posted about it.
    orders = sorted(services.orders.values(), key=lambda o: o["id"])
    assert [(o["symbol"], o["side"], o["quantity"]) for o in orders] == [("BTC", "buy", 1)] * 3
    assert [p["text"] for p in services.posts] == [
        f"Bought 1 BTC at 64250.5 (order {o['id']})" for o in orders
    ]
    paths = [r["path"] for r in services.requests]
    assert paths.count("/v1/news") == 6
    assert paths.count("/v1/prices/BTC") == paths.count("/v1/prices/ETH") == 3
    # Every request authenticated with the secret its service expects (a wrong one is a 401,
    # which would have failed the agent), and none of them is stored anywhere.
    for value in (MODEL_KEY, services.news_key, services.exchange_key, services.social_token):
        for path in state.rglob("*"):
            if path.is_file():
                assert value.encode() not in path.read_bytes(), path
    with sqlite3.connect(state / "state.db") as db:
        tools = {row[0] for row in db.execute("SELECT DISTINCT op FROM journal")}
    assert {"READ_FROM_TOOL", "WRITE_TO_TOOL", "RUN_MODEL"} <= {str(t) for t in tools}
