"""Execution state that holds conversations: saved by reference, not copied into every save.

An agent that checkpoints its conversation (``await ctx.save_execution_state({"chat": chat,
...})``) would otherwise write the whole history into every saved state. Here a :class:`Chat`
inside a state encodes as a msgpack extension holding its refs only (a few dozen bytes per
message), and the content those refs name goes to the state store's blob table, keyed by the
same BLAKE3 hash, in the batch of the save that needs it: a message is written once, however
many checkpoints include it, and never becomes durable after the state that refers to it.

Reading a state back binds every chat to the VM's content store and to the agent (which holds
the content again, see ``VM.hold``). After a restart the store may not have the content any
more; :func:`load_chat_content` brings it back from the blob table first, so decoding itself
stays synchronous (replay decodes journaled results while the agent re-runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec

from avm.errors import InvalidArgument, StorageError
from avm.llm.chat import Chat, ConversationInput
from avm.memory.conversation import Conversation
from avm.memory.refs import ContentRef
from avm.memory.store import ContentStore
from avm.storage.base import StateStore

__all__ = [
    "CHAT_EXT",
    "chat_refs",
    "decode_state",
    "encode_state",
    "load_chat_content",
    "persist_chat_content",
]

CHAT_EXT: Final = 2  # the msgpack extension type of a chat inside a state
_input_encoder: Final = msgspec.msgpack.Encoder()
_input_decoder: Final = msgspec.msgpack.Decoder(ConversationInput)
_plain: Final = msgspec.msgpack.Decoder()
# Refs this process has handed to the store's blob table; a bound keeps the set small.
_DURABLE_MEMO: Final = 1 << 20


def encode_state(value: Any, what: str = "state") -> tuple[bytes, list[ContentRef]]:
    """``value`` as msgpack with its chats by reference, and the refs those chats need."""
    refs: list[ContentRef] = []

    def enc_hook(obj: Any) -> Any:
        if isinstance(obj, Chat):
            refs.extend(obj.refs())
            return msgspec.msgpack.Ext(CHAT_EXT, _input_encoder.encode(obj.as_input()))
        raise NotImplementedError(f"objects of type {type(obj).__name__} are not supported")

    try:
        data = msgspec.msgpack.Encoder(enc_hook=enc_hook).encode(value)
    except (TypeError, ValueError, OverflowError, NotImplementedError) as exc:
        raise InvalidArgument(
            f"{what} of type {type(value).__name__} cannot be stored: {exc}; use None, bool, "
            "int, float, str, bytes, lists, dicts, msgspec structs or conversations"
        ) from None
    return data, refs


def decode_state(
    data: bytes, store: ContentStore | None, keep: Callable[[ContentRef], None] | None
) -> Any:
    """A state saved by :func:`encode_state`, its chats bound to ``store`` (held by ``keep``)."""

    def ext_hook(code: int, payload: memoryview) -> Any:
        if code != CHAT_EXT:
            raise StorageError(f"saved state holds an unknown extension type {code}")
        if store is None:
            raise StorageError("saved state holds a conversation but the VM has no content store")
        refs = _input_decoder.decode(payload)
        conversation = Conversation(
            tools=_ref(refs.tools), system=_ref(refs.system), agent_prompt=_ref(refs.agent_prompt)
        )
        for ref in refs.history:
            conversation = conversation.append_ref(ref)
        if keep is not None:
            for ref in conversation.refs():
                keep(ref)
        return Chat(store, conversation, keep)

    return msgspec.msgpack.Decoder(ext_hook=ext_hook).decode(data)


def chat_refs(data: bytes) -> list[ContentRef]:
    """Every ref the chats inside an encoded state need (none for a state without chats)."""
    refs: list[ContentRef] = []

    def ext_hook(code: int, payload: memoryview) -> Any:
        if code == CHAT_EXT:
            saved = _input_decoder.decode(payload)
            parts = (saved.tools, saved.system, saved.agent_prompt, *saved.history)
            refs.extend(ContentRef(part) for part in parts if part is not None)
        return None

    if data[:1] != b"\xc0":  # nil: no state; anything else may hold chats
        try:
            msgspec.msgpack.Decoder(ext_hook=ext_hook).decode(data)
        except msgspec.DecodeError as exc:
            raise StorageError(f"a saved execution state does not decode: {exc}") from None
    return refs


def persist_chat_content(
    store: StateStore, memory: ContentStore, refs: Iterable[ContentRef], durable: set[bytes]
) -> None:
    """Queue the content of ``refs`` in ``store``'s blob table, with the next commit.

    ``durable`` remembers refs already queued by this process, so a checkpoint writes only the
    messages added since the last one.
    """
    fresh = [ref for ref in dict.fromkeys(refs) if ref not in durable]
    if not fresh:
        return
    store.put_blobs((bytes(ref), memory.get(ref)) for ref in fresh)
    if len(durable) + len(fresh) > _DURABLE_MEMO:
        durable.clear()
    durable.update(fresh)


async def load_chat_content(store: StateStore, memory: ContentStore | None, data: bytes) -> None:
    """Make sure the content store has what the chats in ``data`` need, from the blob table."""
    refs = chat_refs(data)
    if not refs or memory is None:
        return
    for ref in refs:
        if ref in memory:
            continue
        blob = await store.get_blob(ref)
        if blob is None:
            raise StorageError(
                f"a saved conversation refers to content blake3:{ref.hex()[:16]} that the state "
                "store does not have"
            )
        if memory.put(blob, hold=False) != ref:
            raise StorageError(f"content blake3:{ref.hex()[:16]} in the state store is corrupt")


def _ref(value: bytes | None) -> ContentRef | None:
    return None if value is None else ContentRef(value)
