"""State stores: where the journal, KV, execution state, inbox and agent records live."""

from __future__ import annotations

from pathlib import Path

from avm.config import Durability
from avm.errors import ConfigError
from avm.storage.base import StateStore

__all__ = ["open_store"]


async def open_store(url: str | None, state_dir: Path, durability: Durability) -> StateStore:
    """The store a VM is configured with: SQLite in ``state_dir`` unless ``url`` names another."""
    if url is None or url.startswith("sqlite:"):
        from avm.storage.sqlite import SqliteStateStore

        path = state_dir / "state.db" if url is None else Path(url.removeprefix("sqlite:"))
        return SqliteStateStore(path, durability)
    if url.startswith(("postgresql://", "postgres://")):
        from avm.storage.postgres import PostgresStateStore

        return await PostgresStateStore.connect(url, durability)
    raise ConfigError(f"unknown state store {url!r}: use a postgresql:// URL, or none for SQLite")
