"""The key manager: secrets encrypted at rest, their grants, and the tool-boundary reveal.

One SQLite file, ``keys.db`` in the state directory, holds::

    meta      key check: a known string sealed under the master key, to tell a wrong key
              from a corrupt database before anything else is touched
    secrets   name → (nonce, AES-256-GCM ciphertext); associated data "secret:NAME"
    data_keys purpose → a random data key sealed under the master key ("knowledge": the root
              from which each agent's private-knowledge key is derived)
    grants    (secret, principal kind, principal, tool): who may use which secret where

Nothing in the file is plaintext but names, grant rows and timestamps. Decrypted values live
only in this process: in the key manager (to reveal them at the tool boundary) and in its
:class:`Redactor` (to cut them out of outputs).

Rotation re-encrypts every secret and re-wraps every data key under a new master key in one
SQLite transaction, so the file is either wholly under the old key or wholly under the new one.
:meth:`KeyManager.rotate_key_file` also replaces the key file without a window in which a crash
leaves the database under a key that was never written down: the new key is written and synced
to ``KEYFILE.pending`` first, the database is rotated, then the pending file is renamed over
the old one; :meth:`KeyManager.open` finishes an interrupted rotation by trying the pending key.

How the VM uses it (see :meth:`KeyManager.reveal` and :attr:`KeyManager.redactor`)::

    agent ──SecretHandle──► tool boundary ──reveal(handle, agent, tool)──► value ──► header/env
                              │ grants checked here; CapabilityDenied if not granted
    tool result / model output / log record / error ──redactor──► "[REDACTED:name]"
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import msgspec

from avm.errors import CapabilityDenied, InvalidArgument, NotFound, StorageError
from avm.keys.cipher import KEY_BYTES, SealError, open_sealed, seal
from avm.keys.handles import SecretHandle, as_handle, check_secret_name
from avm.keys.master import (
    MasterKey,
    MasterKeyError,
    load_master_key,
    read_key_file,
    write_key_file,
)
from avm.keys.redact import Redactor

__all__ = ["DB_NAME", "Grant", "KeyManager", "PrincipalKind", "SecretInfo"]

log = logging.getLogger(__name__)

DB_NAME = "keys.db"
MIN_SECRET_BYTES = 4
MAX_SECRET_BYTES = 64 * 1024
PrincipalKind = Literal["agent", "definition"]

_CHECK_PLAINTEXT = b"avm master key check v1"
_SECRETS_PURPOSE = b"avm/secrets/v1"
_WRAP_PURPOSE = b"avm/data-keys/v1"
_CHECK_PURPOSE = b"avm/key-check/v1"
_DATA_KEYS = ("knowledge",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS data_keys (
    purpose TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    secret TEXT NOT NULL REFERENCES secrets(name) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('agent', 'definition')),
    principal TEXT NOT NULL,
    tool TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (secret, kind, principal, tool)
);
"""


class Grant(msgspec.Struct, frozen=True):
    """Agent (or every agent of a definition) ``principal`` may use ``secret`` with ``tool``."""

    secret: str
    kind: PrincipalKind
    principal: str
    tool: str


class SecretInfo(msgspec.Struct, frozen=True):
    """What ``avm secrets list`` shows about a secret: never its value."""

    name: str
    created: float
    updated: float
    grants: list[Grant]


class _Keys:
    """The sub-keys derived from one master key."""

    __slots__ = ("check", "master", "secrets", "wrap")

    def __init__(self, master: MasterKey) -> None:
        self.master = master
        self.secrets = master.derive(_SECRETS_PURPOSE)
        self.wrap = master.derive(_WRAP_PURPOSE)
        self.check = master.derive(_CHECK_PURPOSE)


def _secret_ad(name: str) -> bytes:
    return b"secret:" + name.encode()


def _data_key_ad(purpose: str) -> bytes:
    return b"data-key:" + purpose.encode()


def _to_bytes(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise InvalidArgument(f"a secret value must be str or bytes, not {type(value).__name__}")


class KeyManager:
    """Encrypted secrets, their grants, and handle resolution for one state directory.

    Open it with :meth:`open` (finds the master key itself) and close it when done; it is also
    a context manager. All methods are synchronous and fast: reveals and grant checks are served
    from memory, only changes touch the database.
    """

    def __init__(self, path: Path, keys: _Keys, conn: sqlite3.Connection) -> None:
        self.path = path
        self._keys = keys
        self._db = conn
        self._lock = threading.RLock()
        self._values: dict[str, bytes] = {}
        self._grants: set[tuple[str, str, str, str]] = set()
        self._data_keys: dict[str, bytes] = {}
        self.redactor = Redactor()
        #: Maps an agent id to its definition's name, so grants made to a definition apply to
        #: every agent of it; the VM sets this when it wires the key manager in.
        self.definition_of: Callable[[str], str | None] | None = None
        self._watchers: list[Callable[[str], None]] = []
        self._load()

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        state_dir: str | os.PathLike[str],
        master: MasterKey | None = None,
        *,
        key_file: str | os.PathLike[str] | None = None,
    ) -> KeyManager:
        """Open (creating if needed) ``STATE_DIR/keys.db`` with the master key.

        Without ``master``, the key is found by :func:`load_master_key` (``key_file``, then
        ``AVM_MASTER_KEY``, then ``AVM_MASTER_KEY_FILE``).
        """
        state = Path(state_dir)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state / DB_NAME
        if master is None:
            master = load_master_key(key_file)
        conn = _connect(path)
        try:
            keys = _Keys(master)
            if not _check_matches(conn, keys):
                pending = _pending_key(key_file)
                if pending is not None and _check_matches(conn, _Keys(pending[0])):
                    # A rotation committed but crashed before its key file was renamed.
                    os.replace(pending[1], pending[1].with_suffix(""))
                    log.warning("finished an interrupted master key rotation of %s", path)
                    keys = _Keys(pending[0])
                else:
                    raise MasterKeyError(
                        f"the master key from {master.source} does not open {path}: it is not "
                        "the key this database was created or last rotated with"
                    )
            return cls(path, keys, conn)
        except BaseException:
            conn.close()
            raise

    def _load(self) -> None:
        with self._lock:
            rows = self._db.execute("SELECT name, nonce, ciphertext FROM secrets").fetchall()
            values: dict[str, bytes] = {}
            for name, nonce, ciphertext in rows:
                try:
                    values[name] = open_sealed(
                        self._keys.secrets, nonce, ciphertext, _secret_ad(name)
                    )
                except SealError:
                    raise StorageError(
                        f"secret {name!r} in {self.path} does not decrypt under the master key "
                        "that opened the database: the row was tampered with or copied"
                    ) from None
            self._values = values
            self._grants = {
                (s, k, p, t)
                for s, k, p, t in self._db.execute(
                    "SELECT secret, kind, principal, tool FROM grants"
                )
            }
            self._data_keys = {}
            for purpose, nonce, ciphertext in self._db.execute(
                "SELECT purpose, nonce, ciphertext FROM data_keys"
            ):
                try:
                    self._data_keys[purpose] = open_sealed(
                        self._keys.wrap, nonce, ciphertext, _data_key_ad(purpose)
                    )
                except SealError:
                    raise StorageError(f"data key {purpose!r} in {self.path} is corrupt") from None
            missing = [p for p in _DATA_KEYS if p not in self._data_keys]
            if missing:
                with self._transaction():
                    for purpose in missing:
                        key = os.urandom(KEY_BYTES)
                        nonce, ct = seal(self._keys.wrap, key, _data_key_ad(purpose))
                        self._db.execute(
                            "INSERT INTO data_keys VALUES (?, ?, ?)", (purpose, nonce, ct)
                        )
                        self._data_keys[purpose] = key
            self.redactor.replace_all(values)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._values.clear()
            self._data_keys.clear()
            self.redactor.replace_all({})

    def __enter__(self) -> KeyManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<KeyManager {self.path} ({len(self._values)} secrets)>"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    # -- secrets (what `avm secrets set/list/rm` call) -----------------------------------------

    def set(self, name: str, value: str | bytes) -> SecretHandle:
        """Store (or replace) a secret; returns the handle agents use for it."""
        check_secret_name(name)
        data = _to_bytes(value)
        if not MIN_SECRET_BYTES <= len(data) <= MAX_SECRET_BYTES:
            raise InvalidArgument(
                f"secret {name!r} is {len(data)} bytes; a secret must be {MIN_SECRET_BYTES} to "
                f"{MAX_SECRET_BYTES} bytes (shorter values cannot be redacted reliably)"
            )
        nonce, ciphertext = seal(self._keys.secrets, data, _secret_ad(name))
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO secrets VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "nonce = excluded.nonce, ciphertext = excluded.ciphertext, "
                "updated = excluded.updated",
                (name, nonce, ciphertext, now, now),
            )
        self._values[name] = data
        self.redactor.set(name, data)
        log.debug("secret %s stored", name)
        self._changed(name)
        return SecretHandle(name)

    def remove(self, name: str) -> None:
        """Delete a secret and its grants."""
        self._require(name)
        with self._transaction() as db:
            db.execute("DELETE FROM grants WHERE secret = ?", (name,))
            db.execute("DELETE FROM secrets WHERE name = ?", (name,))
        self._values.pop(name, None)
        self._grants = {g for g in self._grants if g[0] != name}
        self.redactor.discard(name)
        log.debug("secret %s removed", name)
        self._changed(name)

    def watch(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(name)`` whenever secret ``name`` changes in this process: its value
        set or removed, a grant of it given or revoked. Whoever revealed the value earlier and
        keeps it (a model provider's request headers) reveals it again there."""
        if callback not in self._watchers:
            self._watchers.append(callback)

    def unwatch(self, callback: Callable[[str], None]) -> None:
        """Stop calling ``callback`` (see :meth:`watch`); nothing if it was not watching."""
        if callback in self._watchers:
            self._watchers.remove(callback)

    def _changed(self, name: str) -> None:
        for callback in list(self._watchers):
            callback(name)

    def names(self) -> list[str]:
        return sorted(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def list_secrets(self) -> list[SecretInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, created, updated FROM secrets ORDER BY name"
            ).fetchall()
        return [
            SecretInfo(name, created, updated, self.grants(name)) for name, created, updated in rows
        ]

    def handle(self, name: str) -> SecretHandle:
        """The handle for an existing secret (what an agent is given instead of the value)."""
        self._require(name)
        return SecretHandle(name)

    def _require(self, name: str) -> None:
        check_secret_name(name)
        if name not in self._values:
            known = ", ".join(sorted(self._values)) or "none"
            raise NotFound(f"no secret named {name!r} (stored: {known})")

    # -- grants (what `avm secrets grant/revoke` call) -----------------------------------------

    def grant(
        self, secret: str, *, tool: str, agent: str | None = None, definition: str | None = None
    ) -> Grant:
        """Allow one agent, or every agent of one definition, to use ``secret`` with ``tool``."""
        kind, principal = _principal(agent, definition)
        self._require(secret)
        if not tool:
            raise InvalidArgument("a grant must name the tool the secret may be used with")
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO grants VALUES (?, ?, ?, ?, ?)",
                (secret, kind, principal, tool, time.time()),
            )
        self._grants.add((secret, kind, principal, tool))
        log.debug("secret %s granted to %s %s for tool %s", secret, kind, principal, tool)
        self._changed(secret)
        return Grant(secret, kind, principal, tool)

    def revoke(
        self, secret: str, *, tool: str, agent: str | None = None, definition: str | None = None
    ) -> bool:
        """Withdraw one grant; returns whether it existed."""
        kind, principal = _principal(agent, definition)
        with self._transaction() as db:
            cur = db.execute(
                "DELETE FROM grants WHERE secret = ? AND kind = ? AND principal = ? AND tool = ?",
                (secret, kind, principal, tool),
            )
        self._grants.discard((secret, kind, principal, tool))
        self._changed(secret)
        return cur.rowcount > 0

    def grants(self, secret: str | None = None) -> list[Grant]:
        return [
            Grant(s, k, p, t)  # type: ignore[arg-type]
            for s, k, p, t in sorted(self._grants)
            if secret is None or s == secret
        ]

    def allowed(
        self, secret: str, *, tool: str, agent_id: str, definition: str | None = None
    ) -> bool:
        """Whether ``agent_id`` (of ``definition``) may use ``secret`` with ``tool``."""
        if (secret, "agent", agent_id, tool) in self._grants:
            return True
        if definition is None and self.definition_of is not None:
            definition = self.definition_of(agent_id)
        return definition is not None and (secret, "definition", definition, tool) in self._grants

    # -- the tool boundary ---------------------------------------------------------------------

    def reveal(
        self,
        handle: SecretHandle,
        *,
        agent_id: str,
        tool: str,
        definition: str | None = None,
    ) -> str:
        """The handle's value, framed by its template, if the grants allow it for this tool.

        Raises :class:`CapabilityDenied` when no grant covers (secret, agent or its definition,
        tool), and :class:`NotFound` for an unknown secret. Call it only where the value
        leaves the VM (an HTTP header, a sandboxed process's environment).
        """
        name = handle.name
        self._exists(name)
        if not self.allowed(name, tool=tool, agent_id=agent_id, definition=definition):
            raise CapabilityDenied(
                f"secret {name!r} is not granted to agent {agent_id!r} for tool {tool!r}; "
                f"grant it with `avm secrets grant {name} --tool {tool} --agent {agent_id}` "
                "(or --definition NAME for every agent of a definition)"
            )
        log.debug("secret %s revealed to tool %s for agent %s", name, tool, agent_id)
        return handle.render(self._text(name))

    def reveal_to_definition(self, handle: SecretHandle, *, definition: str, tool: str) -> str:
        """Like :meth:`reveal`, for a boundary that serves every agent of ``definition`` at
        once (a model provider shared by a template's agents): only a grant to the definition
        itself counts, never one to a single agent."""
        name = handle.name
        self._exists(name)
        if (name, "definition", definition, tool) not in self._grants:
            raise CapabilityDenied(
                f"secret {name!r} is not granted to definition {definition!r} for {tool!r}; "
                f"grant it with `avm secrets grant {name} --tool {tool} --definition {definition}`"
            )
        log.debug("secret %s revealed to %s for definition %s", name, tool, definition)
        return handle.render(self._text(name))

    def _exists(self, name: str) -> None:
        if name not in self._values:
            raise NotFound(f"secret {name!r} does not exist (it may have been removed)")

    def _text(self, name: str) -> str:
        try:
            return self._values[name].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"secret {name!r} is binary and cannot be used as text (a header or variable)"
            ) from None

    def substitute(
        self, value: Any, *, agent_id: str, tool: str, definition: str | None = None
    ) -> Any:
        """``value`` with every handle (or ``{"$secret": ...}``) inside replaced by its value.

        For tools that take secrets anywhere in their input; each handle is checked against
        the grants like :meth:`reveal`. The result must never be journaled or logged.
        """

        def walk(item: Any) -> Any:
            handle = as_handle(item)
            if handle is not None:
                return self.reveal(handle, agent_id=agent_id, tool=tool, definition=definition)
            if isinstance(item, dict):
                return {k: walk(v) for k, v in item.items()}
            if isinstance(item, list):
                return [walk(v) for v in item]
            if isinstance(item, tuple):
                return tuple(walk(v) for v in item)
            return item

        return walk(value)

    def redact(self, value: Any) -> Any:
        """Shorthand for ``self.redactor.redact(value)``."""
        return self.redactor.redact(value)

    # -- data keys -----------------------------------------------------------------------------

    def data_key(self, purpose: Literal["knowledge"]) -> bytes:
        """A random data key kept wrapped under the master key (rotation re-wraps it)."""
        try:
            return self._data_keys[purpose]
        except KeyError:
            raise InvalidArgument(f"no data key for purpose {purpose!r}") from None

    # -- rotation ------------------------------------------------------------------------------

    def rotate(self, new_master: MasterKey) -> None:
        """Re-encrypt every secret and data key under ``new_master``, in one transaction.

        Afterwards only ``new_master`` opens the database; store it (key file or environment)
        before discarding the old one. :meth:`rotate_key_file` does both safely for key files.
        """
        new = _Keys(new_master)
        with self._transaction() as db:
            for name, data in self._values.items():
                nonce, ct = seal(new.secrets, data, _secret_ad(name))
                db.execute(
                    "UPDATE secrets SET nonce = ?, ciphertext = ? WHERE name = ?", (nonce, ct, name)
                )
            for purpose, key in self._data_keys.items():
                nonce, ct = seal(new.wrap, key, _data_key_ad(purpose))
                db.execute(
                    "UPDATE data_keys SET nonce = ?, ciphertext = ? WHERE purpose = ?",
                    (nonce, ct, purpose),
                )
            _write_check(db, new)
        self._keys = new
        log.info(
            "master key rotated for %s (%d secrets re-encrypted)", self.path, len(self._values)
        )

    def rotate_key_file(self, key_file: str | os.PathLike[str]) -> MasterKey:
        """Generate a new master key, rotate to it, and replace ``key_file`` with it.

        Crash-safe: the new key is durable in ``KEYFILE.pending`` before the database changes,
        and :meth:`open` completes a rotation interrupted between the two.
        """
        path = Path(key_file)
        pending = path.with_name(path.name + ".pending")
        new_master = MasterKey.generate()
        write_key_file(pending, new_master, overwrite=True)
        try:
            self.rotate(new_master)
        except BaseException:
            pending.unlink(missing_ok=True)  # the database is still under the old key
            raise
        os.replace(pending, path)
        return MasterKey.from_base64(new_master.encode(), f"key file {path}")


def _principal(agent: str | None, definition: str | None) -> tuple[PrincipalKind, str]:
    if (agent is None) == (definition is None):
        raise InvalidArgument("a grant names exactly one of agent=... or definition=...")
    if agent is not None:
        return "agent", agent
    assert definition is not None
    return "definition", definition


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        # Create the file private before SQLite opens it; its journal copies these permissions.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")  # overwrite deleted ciphertext, not just unlink
        conn.executescript(_SCHEMA)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the secrets database {path}: {exc}") from None
    return conn


def _check_matches(conn: sqlite3.Connection, keys: _Keys) -> bool:
    row = conn.execute("SELECT value FROM meta WHERE name = 'check'").fetchone()
    if row is None:
        if conn.execute("SELECT count(*) FROM secrets").fetchone()[0]:
            raise StorageError("the secrets database has secrets but no key check; it is damaged")
        conn.execute("BEGIN IMMEDIATE")
        _write_check(conn, keys)
        conn.execute("COMMIT")
        return True
    blob: bytes = row[0]
    try:
        open_sealed(keys.check, blob[:12], blob[12:], b"key-check")
    except SealError:
        return False
    return True


def _write_check(conn: sqlite3.Connection, keys: _Keys) -> None:
    nonce, ct = seal(keys.check, _CHECK_PLAINTEXT, b"key-check")
    conn.execute(
        "INSERT INTO meta VALUES ('check', ?) "
        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (nonce + ct,),
    )


def _pending_key(key_file: str | os.PathLike[str] | None) -> tuple[MasterKey, Path] | None:
    if key_file is None:
        return None
    path = Path(key_file)
    pending = path.with_name(path.name + ".pending")
    if not pending.exists():
        return None
    return read_key_file(pending), pending
