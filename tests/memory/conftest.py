"""Fixtures for the memory tests: a content store on a temporary state directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from avm.memory import Codec, ContentStore


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[..., ContentStore]]:
    """Build stores on ``tmp_path/state`` (the same directory each call, to test reopening).

    Dictionary training runs inline unless a test passes its own codec, so results do not
    depend on a worker thread's timing.
    """
    stores: list[ContentStore] = []

    def make(**options: Any) -> ContentStore:
        options.setdefault("codec", Codec(background=False))
        store = ContentStore(tmp_path / "state", **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., ContentStore]) -> ContentStore:
    return make_store()
