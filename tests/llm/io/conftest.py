"""Fixtures for the I/O wrapper tests: a fake OpenAI server and a provider talking to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from avm.llm.providers.openai_compat import OpenAICompatProvider
from avm.testing.fake_openai import FakeOpenAIServer


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(record_limit=None) as srv:
        yield srv


@pytest.fixture
async def provider(server: FakeOpenAIServer) -> AsyncIterator[OpenAICompatProvider]:
    p = OpenAICompatProvider(server.base_url, timeout_s=5.0, max_retries=0, backoff_base_s=0.001)
    yield p
    await p.aclose()
