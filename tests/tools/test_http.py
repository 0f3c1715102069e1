"""The http tool and the service connectors, against real HTTP on loopback."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import pytest

from avm.errors import CapabilityDenied, InvalidArgument, ToolError
from avm.keys import KeyManager, SecretHandle
from avm.tools.builtin import (
    HttpClient,
    HttpPolicy,
    connector_tool,
    exchange,
    http_tool,
    news_feed,
    social,
)
from avm.tools.registry import Tool, ToolInvocation

if TYPE_CHECKING:
    from conftest import FakeServices


def inv(agent: str = "agent-1", step: int = 0) -> ToolInvocation:
    return ToolInvocation(agent, step, f"{agent}:{step}")


@pytest.fixture
def http(services: FakeServices, keys: KeyManager, http_client: HttpClient) -> Tool:
    allowed = frozenset({f"127.0.0.1:{services.port}"})
    policy = HttpPolicy(allowed_hosts=allowed, timeout_s=1.0, max_response_bytes=100_000)
    return http_tool(policy, client=http_client, keys=keys)


async def test_get_and_post(http: Tool, services: FakeServices) -> None:
    got = await http.call_read({"url": f"{services.base_url}/echo", "params": {"q": "btc"}}, inv())
    assert got["status"] == 200
    assert got["json"]["query"] == {"q": "btc"}
    posted = await http.call_write(
        {"url": f"{services.base_url}/echo", "json": {"a": 1}}, inv(step=7)
    )
    assert posted["json"]["body"] == '{"a": 1}'
    assert posted["json"]["headers"]["Idempotency-Key"] == "agent-1:7"


async def test_hosts_outside_the_allow_list_are_refused(http: Tool, services: FakeServices) -> None:
    for url in (
        "http://localhost:1/echo",
        f"http://127.0.0.2:{services.port}/echo",
        f"http://127.0.0.1:{services.port + 1}/echo",
        "https://example.com/",
        "file:///etc/passwd",
    ):
        with pytest.raises((CapabilityDenied, InvalidArgument)):
            await http.call_read({"url": url}, inv())
    assert services.requests == []


def test_https_only_off_loopback_and_wildcards() -> None:
    from yarl import URL

    policy = HttpPolicy(allowed_hosts=frozenset({"*.example.com", "api.other.org:8443"}))
    assert policy.allows(URL("https://a.example.com/x"))
    assert policy.allows(URL("https://b.a.example.com/x"))
    assert not policy.allows(URL("https://example.com/x"))
    assert not policy.allows(URL("https://evilexample.com/x"))
    assert policy.allows(URL("https://api.other.org:8443/"))
    assert not policy.allows(URL("https://api.other.org/"))
    v6 = HttpPolicy(allowed_hosts=frozenset({"[::1]:8080"}))
    assert v6.allows(URL("http://[::1]:8080/"))
    assert not v6.allows(URL("http://[::1]:8081/"))


async def test_plain_http_to_a_remote_host_is_refused(
    keys: KeyManager, http_client: HttpClient
) -> None:
    tool = http_tool(
        HttpPolicy(allowed_hosts=frozenset({"api.example.com"})), client=http_client, keys=keys
    )
    with pytest.raises(CapabilityDenied, match="https only"):
        await tool.call_read({"url": "http://api.example.com/"}, inv())


async def test_secret_header_for_granted_tool_and_echo_is_redacted(
    http: Tool, services: FakeServices, keys: KeyManager
) -> None:
    keys.set("svc-token", services.exchange_key)
    keys.grant("svc-token", tool="http", agent="agent-1")
    query = {
        "url": f"{services.base_url}/echo",
        "headers": {"Authorization": SecretHandle("svc-token").framed("Bearer {}")},
        "params": {"k": {"$secret": "svc-token"}},
    }
    result = await http.call_read(query, inv())
    # The service really received the secret...
    assert services.requests[-1]["headers"]["Authorization"] == f"Bearer {services.exchange_key}"
    assert services.requests[-1]["query"]["k"] == services.exchange_key
    # ...but what the agent gets back (the echo of it) is redacted everywhere.
    text = repr(result)
    assert services.exchange_key not in text
    assert base64.b64encode(services.exchange_key.encode()).decode() not in text
    assert result["json"]["headers"]["Authorization"] == "Bearer [REDACTED:svc-token]"


async def test_secret_not_granted_is_never_sent(
    http: Tool, services: FakeServices, keys: KeyManager
) -> None:
    keys.set("svc-token", services.exchange_key)
    keys.grant("svc-token", tool="some-other-tool", agent="agent-1")
    keys.grant("svc-token", tool="http", agent="agent-2")
    query = {"url": f"{services.base_url}/echo", "headers": {"X-Key": SecretHandle("svc-token")}}
    with pytest.raises(CapabilityDenied, match="not granted"):
        await http.call_read(query, inv("agent-1"))
    assert services.requests == []
    with pytest.raises(InvalidArgument, match="headers or params"):
        await http.call_write(
            {"url": f"{services.base_url}/echo", "json": {"k": SecretHandle("svc-token")}},
            inv("agent-2"),
        )


async def test_redirects_are_not_followed(http: Tool, services: FakeServices) -> None:
    result = await http.call_read({"url": f"{services.base_url}/redirect"}, inv())
    assert result["status"] == 302
    assert result["headers"]["location"] == "http://evil.invalid/steal"


async def test_response_size_and_timeout(http: Tool, services: FakeServices) -> None:
    result = await http.call_read({"url": f"{services.base_url}/big"}, inv())
    assert result["truncated"]
    assert len(result["body"]) == 100_000
    with pytest.raises(ToolError, match="timed out"):
        await http.call_read({"url": f"{services.base_url}/slow"}, inv())


async def test_method_direction_and_validation(http: Tool, services: FakeServices) -> None:
    with pytest.raises(InvalidArgument, match="not allowed"):
        await http.call_read({"method": "POST", "url": f"{services.base_url}/echo"}, inv())
    with pytest.raises(InvalidArgument, match="not allowed"):
        await http.call_write({"method": "GET", "url": f"{services.base_url}/echo"}, inv())
    with pytest.raises(InvalidArgument, match="line break"):
        await http.call_read(
            {"url": f"{services.base_url}/echo", "headers": {"X": "a\r\nB: c"}}, inv()
        )
    with pytest.raises(InvalidArgument, match="does not take"):
        await http.call_read({"url": f"{services.base_url}/echo", "proxy": "x"}, inv())


async def test_connectors_of_the_example_agent(
    services: FakeServices, keys: KeyManager, http_client: HttpClient
) -> None:
    keys.set("news-api-key", services.news_key)
    keys.set("exchange-api-key", services.exchange_key)
    keys.set("social-token", services.social_token)
    for secret, tool in (
        ("news-api-key", "news"),
        ("exchange-api-key", "exchange"),
        ("social-token", "social"),
    ):
        keys.grant(secret, tool=tool, definition="trader")
    keys.definition_of = lambda agent_id: agent_id.split("-")[0]
    news = connector_tool(news_feed(services.base_url), client=http_client, keys=keys)
    market = connector_tool(exchange(services.base_url), client=http_client, keys=keys)
    posts = connector_tool(social(services.base_url), client=http_client, keys=keys)

    headlines = await news.call_read({"topic": "BTC", "limit": 2}, inv("trader-1"))
    assert [h["title"] for h in headlines["items"]] == ["BTC headline 0", "BTC headline 1"]
    assert (await market.call_read({"symbol": "BTC"}, inv("trader-1")))["price"] == 64250.5
    order = {"symbol": "BTC", "side": "buy", "quantity": 0.5}
    first = await market.call_write(order, inv("trader-1", 4))
    again = await market.call_write(order, inv("trader-1", 4))  # a replay of the same step
    assert first == again
    assert len(services.orders) == 1
    await market.call_write(order, inv("trader-1", 5))
    assert len(services.orders) == 2
    await posts.call_write({"text": "BTC looks strong"}, inv("trader-1"))
    assert [p["text"] for p in await posts.call_read({"limit": 5}, inv("trader-1"))] == [
        "BTC looks strong"
    ]

    # Another definition's agent is not granted the exchange key: refused before sending.
    sent = len(services.requests)
    with pytest.raises(CapabilityDenied):
        await market.call_read({"symbol": "BTC"}, inv("intruder-1"))
    assert len(services.requests) == sent
    with pytest.raises(InvalidArgument, match="does not take"):
        await market.call_read({"symbol": "BTC", "url": "http://evil"}, inv("trader-1"))
    with pytest.raises(InvalidArgument, match="needs"):
        await market.call_write({"symbol": "BTC"}, inv("trader-1"))
    # Path parameters cannot smuggle a different route.
    for symbol in ("../orders", "..", "BTC/../../admin", "a?b=c", "x#y"):
        with pytest.raises(InvalidArgument, match="plain name"):
            await market.call_read({"symbol": symbol}, inv("trader-1"))


async def test_connector_reports_service_errors(
    services: FakeServices, keys: KeyManager, http_client: HttpClient
) -> None:
    keys.set("news-api-key", "wrong-key-0000")
    keys.grant("news-api-key", tool="news", agent="a")
    news = connector_tool(news_feed(services.base_url), client=http_client, keys=keys)
    with pytest.raises(ToolError, match="401"):
        await news.call_read({"topic": "BTC"}, inv("a"))


async def test_tools_through_the_vm(
    services: FakeServices, keys: KeyManager, http_client: HttpClient, vm: Any
) -> None:
    """An agent holds only a handle; the journal and its result never see the value."""
    import sqlite3

    from avm import Context

    keys.set("exchange-api-key", services.exchange_key)
    keys.grant("exchange-api-key", tool="exchange", definition="trader")
    keys.definition_of = lambda agent_id: agent_id.rsplit("-", 1)[0]  # ids are NAME-N
    vm.tools.add(connector_tool(exchange(services.base_url), client=http_client, keys=keys))
    policy = HttpPolicy(allowed_hosts=frozenset({f"127.0.0.1:{services.port}"}))
    vm.tools.add(http_tool(policy, client=http_client, keys=keys))
    keys.grant("exchange-api-key", tool="http", definition="trader")

    @vm.agent(name="trader", tools=["exchange", "http"])
    async def trader(ctx: Context, key: SecretHandle) -> Any:
        price = await ctx.read_from_tool("exchange", {"symbol": "ETH"})
        echoed = await ctx.read_from_tool(
            "http", {"url": f"{services.base_url}/echo", "headers": {"X-Key": key}}
        )
        return price, echoed["json"]["headers"]["X-Key"], str(key)

    price, echoed, shown = await vm.spawn(trader, key=keys.handle("exchange-api-key")).result()
    assert price == {"symbol": "ETH", "price": 64250.5}
    assert echoed == "[REDACTED:exchange-api-key]"
    assert shown == "[secret:exchange-api-key]"
    state = vm.config.state_dir
    with sqlite3.connect(f"{state}/state.db") as db:
        rows = (
            db.execute("SELECT * FROM journal").fetchall()
            + db.execute("SELECT * FROM agents").fetchall()
        )
    assert services.exchange_key.encode() not in repr(rows).encode()
