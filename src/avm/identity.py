"""Agent identities: one ed25519 key pair per agent, held by the VM, never in the journal.

The VM signs an agent's chain head (agent id, step, entry hash) with the agent's private key, so
anyone holding the public key can check that an exported history is the one the VM recorded.
Private keys live in ``identity.db`` in the state directory, created with mode 0600; they travel
with an agent only inside an export archive, because the agent keeps its identity when it moves.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["IdentityStore", "SignedHead", "head_message", "verify_head"]

_DOMAIN = b"avm/chain-head/v1"


class SignedHead(msgspec.Struct, frozen=True):
    """An agent's chain head as signed by the VM that recorded it."""

    agent_id: str
    step: int
    hash: bytes
    public_key: bytes
    signature: bytes


def head_message(agent_id: str, step: int, entry_hash: bytes) -> bytes:
    return msgspec.msgpack.encode((_DOMAIN, agent_id, step, entry_hash))


def verify_head(head: SignedHead) -> bool:
    """True if ``head.signature`` is the agent key's signature of that head."""
    try:
        Ed25519PublicKey.from_public_bytes(head.public_key).verify(
            head.signature, head_message(head.agent_id, head.step, head.hash)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


class IdentityStore:
    def __init__(self, state_dir: str | Path) -> None:
        path = Path(state_dir) / "identity.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Create it private before any key is written into it.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS identities (agent_id TEXT PRIMARY KEY, "
            "private_key BLOB NOT NULL) WITHOUT ROWID"
        )

    def _key(self, agent_id: str) -> Ed25519PrivateKey:
        row = self._db.execute(
            "SELECT private_key FROM identities WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        if row is not None:
            return Ed25519PrivateKey.from_private_bytes(bytes(row[0]))
        key = Ed25519PrivateKey.generate()
        self.put(agent_id, key.private_bytes_raw())
        return key

    def put(self, agent_id: str, private_key: bytes) -> None:
        """Install an agent's private key (an imported agent keeps its identity)."""
        self._db.execute(
            "INSERT OR REPLACE INTO identities(agent_id, private_key) VALUES (?, ?)",
            (agent_id, private_key),
        )

    def private_bytes(self, agent_id: str) -> bytes:
        return self._key(agent_id).private_bytes_raw()

    def public_key(self, agent_id: str) -> bytes:
        return self._key(agent_id).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, agent_id: str, step: int, entry_hash: bytes) -> SignedHead:
        key = self._key(agent_id)
        return SignedHead(
            agent_id,
            step,
            entry_hash,
            key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            key.sign(head_message(agent_id, step, entry_hash)),
        )

    def close(self) -> None:
        self._db.close()
