"""The VM's content store: configured by ``memory=``, reported by ``vm.stats()``."""

from __future__ import annotations

from pathlib import Path

import avm


async def test_vm_owns_a_budgeted_content_store(tmp_path: Path) -> None:
    async with avm.VM(tmp_path / "state", memory="64MiB") as vm:
        assert vm.memory is not None
        prompt = "You are a careful analyst. " * 2000
        refs = {vm.memory.put(prompt) for _ in range(100)}  # a hundred agents, one copy
        stats = vm.stats().memory
        assert len(refs) == 1
        assert stats.distinct_entries == 1
        assert stats.dedup_ratio >= 100
        assert stats.budget_bytes is not None
        assert stats.budget_bytes <= 64 * 2**20
    assert (tmp_path / "state" / "content.db").exists()
