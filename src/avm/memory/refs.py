"""Content refs: the 32-byte BLAKE3 digest that names a piece of content everywhere in AVM.

A :data:`ContentRef` is a plain ``bytes`` at run time (a ``NewType``), so it costs what a 32-byte
``bytes`` costs, encodes with msgpack and SQLite as-is, and compares and hashes as bytes. The
digest is BLAKE3 of the exact bytes stored (text is stored as UTF-8), so it is the same in every
process, on every machine and in every run: a ref written to a journal today names the same
content when the journal is replayed next year.
"""

from __future__ import annotations

from typing import NewType

import blake3

from avm.memory.errors import InvalidRef

__all__ = [
    "HASH_SIZE",
    "Content",
    "ContentRef",
    "as_bytes",
    "check_ref",
    "hash_content",
    "ref_from_hex",
]

HASH_SIZE = 32

ContentRef = NewType("ContentRef", bytes)
"""The BLAKE3-256 digest of a piece of content, as 32 raw bytes."""

Content = bytes | bytearray | memoryview | str
"""What can be stored: bytes-like values as they are, text as UTF-8."""


def as_bytes(data: Content) -> bytes:
    """The exact bytes stored for ``data``: UTF-8 for text, an immutable copy of buffers."""
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(
        f"content must be bytes, bytearray, memoryview or str, not {type(data).__name__}"
    )


def hash_content(data: Content) -> ContentRef:
    """The ref ``data`` is stored under, without storing it."""
    return ContentRef(blake3.blake3(as_bytes(data)).digest())


def check_ref(ref: object) -> ContentRef:
    """``ref`` as a :data:`ContentRef`, or :class:`InvalidRef` if it cannot be one."""
    if type(ref) is bytes and len(ref) == HASH_SIZE:
        return ContentRef(ref)
    if isinstance(ref, bytes | bytearray | memoryview) and len(ref) == HASH_SIZE:
        return ContentRef(bytes(ref))
    raise InvalidRef(
        f"a content ref is {HASH_SIZE} raw bytes (a BLAKE3 digest), got "
        f"{type(ref).__name__}{f' of length {len(ref)}' if hasattr(ref, '__len__') else ''}"
    )


def ref_from_hex(text: str) -> ContentRef:
    """Parse the 64-hex-digit form of a ref (what logs and the HTTP API show)."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise InvalidRef(f"{text!r} is not a hex content ref") from None
    if len(raw) != HASH_SIZE:
        raise InvalidRef(f"a content ref is {HASH_SIZE * 2} hex digits, got {len(text)}")
    return ContentRef(raw)
