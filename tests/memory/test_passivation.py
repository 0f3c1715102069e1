"""Passivation records: small, encodable, and a source of GC roots."""

from __future__ import annotations

import sys

from avm._core.states import WaitReason
from avm.memory import (
    ContentRef,
    ContentStore,
    Conversation,
    PassivatedAgent,
    collect,
    roots_of,
)


def test_records_round_trip_through_msgpack() -> None:
    image, memory = ContentRef(b"i" * 32), ContentRef(b"m" * 32)
    record = PassivatedAgent("agent-7", image, 1234, WaitReason.TIMER, 17.5, memory)
    assert PassivatedAgent.decode(record.encode()) == record
    assert len(record.encode()) < 100


def test_records_are_small() -> None:
    record = PassivatedAgent("agent-7", ContentRef(b"i" * 32), 1234, WaitReason.MESSAGE)
    # One pointer per field and a header; no __dict__, no GC header.
    assert sys.getsizeof(record) <= 16 + 8 * len(PassivatedAgent.__struct_fields__)
    assert not hasattr(record, "__dict__")


def test_passivated_agents_root_their_image_and_memory(store: ContentStore) -> None:
    image = store.put(b"agent image: code and defaults", hold=False)
    records = []
    for i in range(10):
        chat = Conversation.start(store, system="shared").append(store, f"agent {i} said hi")
        saved = chat.save(store)
        records.append(PassivatedAgent(f"a{i}", image, i, WaitReason.MESSAGE, memory=saved))
        store.decref(saved)  # roots alone keep it in this test
    del records[5:]
    report = collect(store, roots_of(records))
    assert report.reclaimed_entries == 10  # five messages and five saved lists
    assert store.get(image)
    for record in records:
        assert record.memory is not None
        assert Conversation.load(store, record.memory).messages(store)[0].content == "shared"
