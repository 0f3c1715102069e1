"""Test kit shipped with AVM: a mock clock and a fake OpenAI-compatible server."""

from avm.testing.clock import MockClock
from avm.testing.fake_openai import FakeOpenAIServer, FakeReply, FakeToolCall
from avm.testing.waiting import wait_until

__all__ = ["FakeOpenAIServer", "FakeReply", "FakeToolCall", "MockClock", "wait_until"]
