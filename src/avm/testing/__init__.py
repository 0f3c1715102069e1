"""Test kit shipped with AVM: a mock clock, fake OpenAI-compatible and Anthropic servers."""

from avm.testing.clock import MockClock
from avm.testing.fake_anthropic import FakeAnthropicServer
from avm.testing.fake_openai import FakeOpenAIServer, FakeReply, FakeToolCall
from avm.testing.waiting import wait_until

__all__ = [
    "FakeAnthropicServer",
    "FakeOpenAIServer",
    "FakeReply",
    "FakeToolCall",
    "MockClock",
    "wait_until",
]
