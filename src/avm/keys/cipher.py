"""Authenticated encryption and key derivation, the two primitives every key in AVM goes through.

Everything encrypted at rest (secrets, wrapped data keys, private knowledge) is sealed with
AES-256-GCM under a fresh random 96-bit nonce, with *associated data* naming what the bytes are
(``secret:NAME``, ``knowledge:AGENT:DOC:SEQ``...). The associated data is not stored in the
ciphertext but must be presented again to open it, so a ciphertext copied onto another row (one
agent's chunk swapped into another agent's, one secret's value under another name) fails to
open instead of being silently accepted.

Keys are never used for two purposes: each purpose gets its own key, derived with HKDF-SHA256
from a parent key and a purpose label.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KEY_BYTES", "NONCE_BYTES", "SealError", "derive", "open_sealed", "seal"]

KEY_BYTES = 32
NONCE_BYTES = 12


class SealError(Exception):
    """A ciphertext did not open: wrong key, wrong associated data, or tampered bytes.

    Internal to the key and knowledge stores, which translate it into an AVM error that says
    what could not be opened.
    """


def derive(
    key: bytes, purpose: bytes, *, length: int = KEY_BYTES, salt: bytes | None = None
) -> bytes:
    """Derive a sub-key for one purpose (HKDF-SHA256 with ``purpose`` as its info string)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=purpose).derive(key)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> tuple[bytes, bytes]:
    """Encrypt under a fresh random nonce; returns ``(nonce, ciphertext_with_tag)``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated)
    except InvalidTag:
        raise SealError("authentication failed") from None
