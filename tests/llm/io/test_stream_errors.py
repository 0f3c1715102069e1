"""Streamed replies that break mid-way: both HTTP providers translate the failure the same way.

A raw asyncio server on loopback answers with a valid event-stream head and then misbehaves
(garbage event, connection cut, silence), so the provider's real HTTP client reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from avm.errors import ModelError, ModelTimeout, ProviderUnavailable
from avm.llm.providers.anthropic import AnthropicProvider
from avm.llm.providers.openai_compat import OpenAICompatProvider
from avm.llm.types import Message, ModelRequest

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


Behaviour = Callable[[asyncio.StreamWriter], Any]


async def garbage(writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD + chunk(b"data: {not json\n\n"))


async def cut(writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD + chunk(b": keep-alive\n\n"))
    await writer.drain()
    writer.close()


async def silent(writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD)
    await asyncio.sleep(5)


async def serve(behaviour: Behaviour) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await behaviour(writer)
            await writer.drain()
            await asyncio.sleep(5)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


async def read_all(provider: Any, request: ModelRequest) -> None:
    async with provider.stream(request) as stream:
        async for _ in stream:
            pass


def provider_for(kind: str, base_url: str) -> Any:
    if kind == "openai":
        return OpenAICompatProvider(base_url, timeout_s=0.3, max_retries=0)
    return AnthropicProvider(base_url, api_key="k", timeout_s=0.3, max_retries=0)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("behaviour", "error", "words"),
    [
        (garbage, ModelError, "malformed stream"),
        (cut, ProviderUnavailable, "stream"),
        (silent, ModelTimeout, "stream stalled for 0.3 s"),
    ],
)
async def test_a_broken_stream_is_translated(
    kind: str, behaviour: Behaviour, error: type[Exception], words: str
) -> None:
    async for base_url in serve(behaviour):
        provider = provider_for(kind, base_url)
        request = ModelRequest("m", (Message("user", "hi"),))
        try:
            with pytest.raises(error, match=words) as raised:
                await read_all(provider, request)
            assert type(raised.value) is error  # not a subclass standing in for it
            assert "model 'm'" in str(raised.value)
        finally:
            await provider.aclose()
