"""The journal format: one entry per executed instruction, hash-chained per agent.

An entry records who (agent), when in the agent's life (its step number, stable across
restarts), what (the opcode and a BLAKE3 digest of its arguments), how it ended (status and the
msgpack-encoded result or error), what it cost (milligas) and the wall time. Each entry's
``hash`` covers all of that plus the previous entry's hash of the same agent, so the history of an
agent is a chain that any edit breaks.

Values are encoded with msgspec's msgpack: compact, fast, and able to carry the structs of
:mod:`avm.llm.types` and the VM's own result types.

Large payloads are stored by content hash. A result (or a saved execution state) longer than
:data:`PAYLOAD_THRESHOLD` bytes goes to the store's blob table under its 32-byte BLAKE3 hash, in
the same batch as the entry that refers to it, and the entry holds a *payload reference*
instead: the byte ``0xC1`` followed by that hash. ``0xC1`` is the one byte msgpack never uses,
so a reference can never be mistaken for an encoded value. The chain hash covers the reference,
and the blob is checked against its key whenever it is read back, so a history stays verifiable;
identical payloads (a system prompt loaded by a thousand agents, a checkpoint saved again
unchanged) are stored once.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any

import blake3
import msgspec

from avm.errors import InvalidArgument, StorageError
from avm.llm.prompts import Prompt
from avm.llm.types import Message

__all__ = [
    "GENESIS",
    "PAYLOAD_THRESHOLD",
    "REF_MARKER",
    "EntryFlag",
    "EntryStatus",
    "JournalEntry",
    "args_digester",
    "blob_key",
    "chain_hash",
    "decode_value",
    "describe_ref",
    "digest_args",
    "digest_model_args",
    "encode_value",
    "payload_ref",
    "ref_key",
    "resolve_payload",
]

GENESIS = b"\x00" * 32
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
_encode = _encoder.encode
_blake3 = blake3.blake3


class EntryStatus(enum.IntEnum):
    OK = 0
    ERROR = 1


class EntryFlag(enum.IntFlag):
    """What recovery did for an entry; recorded so the journal says which happened."""

    NONE = 0
    AFTER_CRASH = 1  # the first step performed live after a recovery: it may have been in flight
    DEDUPLICATED = 2  # found already applied (an agent SQL write), so not performed again


class JournalEntry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    agent_id: str
    step: int
    op: str
    args_digest: bytes
    status: EntryStatus
    result: bytes
    gas: int  # milligas charged
    wall: float
    prev_hash: bytes
    hash: bytes
    flags: int = 0


def encode_value(value: Any, what: str = "value") -> bytes:
    """Encode a value an agent stores or receives; unencodable values are the agent's error."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(
            f"{what} of type {type(value).__name__} cannot be stored: {exc}; "
            "use None, bool, int, float, str, bytes, lists, dicts or msgspec structs"
        ) from None


def decode_value(data: bytes) -> Any:
    return _decoder.decode(data)


def digest_args(args: tuple[Any, ...]) -> bytes:
    """A 16-byte BLAKE3 digest of an instruction's arguments, to spot divergence on replay."""
    try:
        encoded = _encode(args)
    except (TypeError, ValueError, OverflowError):
        encoded = repr(args).encode()
    return _blake3(encoded).digest(16)


# RUN_MODEL inputs often share one large system prompt among thousands of calls. Its part of the
# digest is the BLAKE3 of its encoding, computed once per object (the prompt library hands every
# agent the same Prompt, a program keeps one system Message for all its agents, and neither a
# Prompt, a Message nor a str can change), so a call hashes a few dozen bytes for it instead of
# the whole text. Exact all the same: the part changes with any byte.
_PART_EXT = 1  # a msgpack extension type: no plain value an agent passes encodes like it
_SHARED_MIN = 1024
_MAX_PARTS = 64  # objects remembered; each is kept alive while remembered, so ids stay unique
_parts: dict[int, tuple[object, msgspec.msgpack.Ext]] = {}


def _part(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        if len(value) < _SHARED_MIN:
            return value
    elif kind is Message:
        if len(value.content) < _SHARED_MIN:
            return value
    elif kind is not Prompt:
        return value
    known = _parts.get(id(value))
    if known is not None and known[0] is value:
        return known[1]
    try:
        encoded = _encode(value)
    except (TypeError, ValueError, OverflowError):
        return value
    if kind is Prompt and len(encoded) < _SHARED_MIN:
        return value
    if len(_parts) >= _MAX_PARTS:
        _parts.clear()
    part = msgspec.msgpack.Ext(_PART_EXT, _blake3(encoded).digest())
    _parts[id(value)] = (value, part)
    return part


def digest_model_args(args: tuple[Any, ...]) -> bytes:
    """RUN_MODEL's argument digest: large prompts and strings of its input count by hash."""
    model_input = args[1] if len(args) > 1 else None
    if type(model_input) is list:
        args = (args[0], [_part(item) for item in model_input], *args[2:])
    return digest_args(args)


def args_digester(op: str) -> Callable[[tuple[Any, ...]], bytes]:
    """The argument digest an opcode's entries carry (the journal and replay must agree)."""
    return digest_model_args if op == "RUN_MODEL" else digest_args


def chain_hash(
    prev_hash: bytes,
    agent_id: str,
    step: int,
    op: str,
    args_digest: bytes,
    status: int,
    result: bytes,
    gas: int,
    wall: float,
    flags: int = 0,
) -> bytes:
    """The entry hash: BLAKE3 over the previous hash and every recorded field.

    That is, over ``prev_hash``, then the msgpack array ``[agent_id, step, op, args_digest,
    status, gas, wall, flags]``, then ``result``. The three are hashed as one concatenation,
    which is the same hash as feeding them in turn and, for entries this small, costs a third
    less than three calls into the hasher.
    """
    fields = _encode((agent_id, step, op, args_digest, status, gas, wall, flags))
    return _blake3(prev_hash + fields + result).digest()


# -- payloads stored by content hash ---------------------------------------------------------------

# Payloads up to this many bytes stay inline: a reference (33 bytes) plus a blob row cost more
# than they save below it, and most results (None, counts, short strings, rows) are far smaller.
PAYLOAD_THRESHOLD = 1024
REF_MARKER = b"\xc1"  # never a msgpack value's first byte
_REF_SIZE = 33

BlobReader = Callable[[bytes], Awaitable[bytes | None]]


def blob_key(data: bytes) -> bytes:
    """The key a payload is stored under: its 32-byte BLAKE3 hash."""
    return _blake3(data).digest()


def payload_ref(key: bytes) -> bytes:
    return REF_MARKER + key


def ref_key(data: bytes) -> bytes | None:
    """The blob key ``data`` refers to, or None if ``data`` is an inline encoded value."""
    if len(data) == _REF_SIZE and data[:1] == REF_MARKER:
        return data[1:]
    return None


def describe_ref(key: bytes, size: int | None) -> str:
    """A payload reference for people: its size (when the blob is at hand) and a short hash."""
    what = "missing" if size is None else f"{size:,} bytes"
    return f"<payload {what}, blake3:{key[:4].hex()}>"


async def resolve_payload(data: bytes, get_blob: BlobReader, where: str) -> bytes:
    """``data`` itself, or the payload it refers to, checked against its hash.

    ``where`` names what holds the reference (an agent's entry or state), for the error raised
    when the blob is missing or does not hash to its key.
    """
    key = ref_key(data)
    if key is None:
        return data
    blob = await get_blob(key)
    if blob is None:
        raise StorageError(f"{where} refers to payload blake3:{key.hex()}, which is missing")
    if blob_key(blob) != key:
        raise StorageError(f"{where}: payload blake3:{key.hex()} is corrupt (hash differs)")
    return blob
