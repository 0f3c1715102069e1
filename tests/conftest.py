"""Shared fixtures: a VM on a temporary state directory, and a fake model server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import avm
from avm.testing import FakeOpenAIServer


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(latency_s=0.0) as server:
        yield server


@pytest.fixture
def make_vm(tmp_path: Path) -> Callable[..., avm.VM]:
    """Build VMs on ``tmp_path/state`` (the same directory each call, to test restarts)."""

    def make(**options: Any) -> avm.VM:
        options.setdefault("state_dir", tmp_path / "state")
        return avm.VM(**options)

    return make


@pytest.fixture
async def vm(make_vm: Callable[..., avm.VM]) -> AsyncIterator[avm.VM]:
    machine = make_vm()
    async with machine:
        yield machine
