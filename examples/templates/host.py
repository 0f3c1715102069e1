"""The VM that hosts ``portfolio_watcher.yaml`` for ``avm run``: its tools and its model.

A template declares the tools and models it uses; the VM that runs it provides them. This file
is an ordinary agents file (``vm = avm.VM(...)`` at module level) that defines no agents::

    avm run examples/templates/portfolio_watcher.yaml --vm examples/templates/host.py \\
        --agents 100 --no-dashboard

The tools serve the demo's synthetic market (deterministic headlines and prices) and an
in-memory order book; the model named ``default`` is an in-process stand-in that answers like
the demo's fake analyst, so this runs with no network and no keys. To use a real model, link
one instead: ``vm.model("default", "openai:gpt-4o-mini", base_url=..., api_key_env=...)``.
"""

from __future__ import annotations

import itertools
from typing import Any

import avm
from avm.demo.portfolio import OrderBook, analyst_reply, headlines, quote
from avm.testing.fake_openai import count_tokens

vm = avm.VM()
book = OrderBook()


@vm.tool("news", description="Latest headlines about a token")
async def news(query: dict[str, Any]) -> list[str]:
    return headlines(query["token"], query["tick"])


@vm.tool("prices", description="Price of a token and its change since the last tick")
async def prices(query: dict[str, Any]) -> dict[str, Any]:
    return quote(query["token"], query["tick"])


vm.tool("orders", kind="write", description="Place an order on the exchange")(book.place)


class Analyst:
    """A model provider in this process: the demo's scripted analyst, with token counts."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    async def complete(self, request: avm.ModelRequest) -> avm.ModelReply:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        text = analyst_reply({"messages": messages})
        usage = avm.Usage(
            tokens_in=sum(count_tokens(m.content) + 4 for m in request.messages),
            tokens_out=count_tokens(text),
        )
        return avm.ModelReply(text=text, model=f"analyst-{next(self._ids)}", usage=usage)

    async def aclose(self) -> None:
        return None


vm.models.add("default", "local:analyst", provider=Analyst())
