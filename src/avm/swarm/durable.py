"""Durable delivery: the message log that records swarm deliveries in the state store.

A delivery is written in the same batch as the sender's journal entry, and a consumption in the
same batch as the receiver's, so after a crash every message is either still pending (and put
back in its mailbox) or consumed (and its content is in the receiver's journal).
"""

from __future__ import annotations

import msgspec

from avm.storage.base import StateStore
from avm.swarm.mailbox import Envelope

__all__ = ["StoreMessageLog"]

_encoder = msgspec.msgpack.Encoder()


class StoreMessageLog:
    def __init__(self, store: StateStore) -> None:
        self._store = store

    def delivered(self, agent_id: str, envelope: Envelope) -> bool:
        return self._store.inbox_put(agent_id, envelope.id, _encoder.encode(envelope))

    def consumed(self, agent_id: str, envelope: Envelope) -> None:
        self._store.inbox_consume(agent_id, envelope.id)
