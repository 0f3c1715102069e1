"""A template's declared tool secrets become key-manager grants for its agents only."""

from __future__ import annotations

from pathlib import Path

import pytest

import avm
from avm.assembler import build_text, register
from avm.keys.manager import KeyManager
from avm.keys.master import MasterKey

TEMPLATE = """\
name: trader
secrets: [EXCHANGE_API_KEY]
tools:
  exchange: {access: write, secrets: [EXCHANGE_API_KEY]}
program:
  - write_to_tool: {api: exchange, data: {buy: 1}}
"""


async def test_declared_secrets_are_granted_to_the_template(tmp_path: Path) -> None:
    keys = KeyManager.open(tmp_path / "state", MasterKey.generate())
    keys.set("EXCHANGE_API_KEY", "xk-9f8e7d6c5b4a")
    async with avm.VM(tmp_path / "state", keys=keys) as vm:

        @vm.tool("exchange", kind="write")
        async def exchange(order: object) -> str:
            return "filled"

        image = build_text(TEMPLATE, file="trader.yaml", base_dir=tmp_path)
        register(vm, image)
        assert keys.allowed("EXCHANGE_API_KEY", tool="exchange", agent_id="x", definition="trader")
        assert not keys.allowed("EXCHANGE_API_KEY", tool="news", agent_id="x", definition="trader")
        assert not keys.allowed(
            "EXCHANGE_API_KEY", tool="exchange", agent_id="x", definition="other"
        )
    keys.close()


async def test_a_missing_secret_is_refused_at_registration(tmp_path: Path) -> None:
    keys = KeyManager.open(tmp_path / "state", MasterKey.generate())
    async with avm.VM(tmp_path / "state", keys=keys) as vm:

        @vm.tool("exchange", kind="write")
        async def exchange(order: object) -> str:
            return "filled"

        image = build_text(TEMPLATE, file="trader.yaml", base_dir=tmp_path)
        with pytest.raises(
            avm.ConfigError, match="needs secrets that are not stored: EXCHANGE_API_KEY"
        ):
            register(vm, image)
    keys.close()
