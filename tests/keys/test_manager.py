"""The key manager: encryption at rest, grants, handles, rotation, all on a real SQLite file."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from avm.errors import CapabilityDenied, InvalidArgument, NotFound, StorageError
from avm.keys import (
    DB_NAME,
    KeyManager,
    MasterKey,
    MasterKeyError,
    SecretHandle,
    as_handle,
    write_key_file,
)

SECRET = "sk-live-9f8e7d6c5b4a3210-ZYXWVUT"


@pytest.fixture
def master() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def km(tmp_path: Path, master: MasterKey) -> Iterator[KeyManager]:
    with KeyManager.open(tmp_path, master) as manager:
        yield manager


def raw_files(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state.iterdir() if p.name.startswith(DB_NAME))


def test_secret_round_trip_and_listing(km: KeyManager, tmp_path: Path) -> None:
    handle = km.set("exchange-key", SECRET)
    assert handle == SecretHandle("exchange-key")
    km.grant("exchange-key", tool="exchange", agent="trader-1")
    [info] = km.list_secrets()
    assert info.name == "exchange-key"
    assert [g.principal for g in info.grants] == ["trader-1"]
    assert SECRET not in repr(info)
    assert SECRET not in repr(km)
    assert km.reveal(handle, agent_id="trader-1", tool="exchange") == SECRET
    km.remove("exchange-key")
    assert km.list_secrets() == []
    with pytest.raises(NotFound):
        km.remove("exchange-key")


def test_database_holds_no_plaintext(km: KeyManager, tmp_path: Path) -> None:
    km.set("exchange-key", SECRET)
    km.set("binary", bytes(range(200, 232)))
    km.close()
    raw = raw_files(tmp_path)
    assert SECRET.encode() not in raw
    assert base64.b64encode(SECRET.encode()) not in raw
    assert SECRET.encode().hex().encode() not in raw
    assert bytes(range(200, 232)) not in raw
    assert (tmp_path / DB_NAME).stat().st_mode & 0o777 == 0o600


def test_secrets_survive_reopen(tmp_path: Path, master: MasterKey) -> None:
    with KeyManager.open(tmp_path, master) as km:
        km.set("a-secret", SECRET)
        km.grant("a-secret", tool="http", definition="analyst")
    with KeyManager.open(tmp_path, master) as km:
        assert km.names() == ["a-secret"]
        assert km.reveal(SecretHandle("a-secret"), agent_id="x", tool="http", definition="analyst")


def test_wrong_master_key_is_refused_clearly(tmp_path: Path, master: MasterKey) -> None:
    KeyManager.open(tmp_path, master).close()
    with pytest.raises(MasterKeyError, match="does not open"):
        KeyManager.open(tmp_path, MasterKey.generate())


def test_grants_are_enforced(km: KeyManager) -> None:
    handle = km.set("news-key", SECRET)
    km.grant("news-key", tool="news", agent="a1")
    km.grant("news-key", tool="news", definition="watcher")
    assert km.reveal(handle, agent_id="a1", tool="news") == SECRET
    with pytest.raises(CapabilityDenied, match="not granted to agent 'a1' for tool 'http'"):
        km.reveal(handle, agent_id="a1", tool="http")
    with pytest.raises(CapabilityDenied):
        km.reveal(handle, agent_id="a2", tool="news")
    # A grant to a definition covers its agents, found through the VM's hook.
    km.definition_of = lambda agent_id: "watcher" if agent_id.startswith("watcher-") else None
    assert km.reveal(handle, agent_id="watcher-7", tool="news") == SECRET
    assert km.revoke("news-key", tool="news", definition="watcher")
    with pytest.raises(CapabilityDenied):
        km.reveal(handle, agent_id="watcher-7", tool="news")
    with pytest.raises(NotFound):
        km.reveal(SecretHandle("missing"), agent_id="a1", tool="news")
    with pytest.raises(InvalidArgument):
        km.grant("news-key", tool="news", agent="a", definition="b")


def test_substitute_reveals_only_granted_handles(km: KeyManager) -> None:
    km.set("token", SECRET)
    km.grant("token", tool="svc", agent="a1")
    payload = {"headers": {"Authorization": SecretHandle("token").framed("Bearer {}")}, "n": 1}
    assert km.substitute(payload, agent_id="a1", tool="svc") == {
        "headers": {"Authorization": f"Bearer {SECRET}"},
        "n": 1,
    }
    wire = {"key": {"$secret": "token"}}
    assert km.substitute(wire, agent_id="a1", tool="svc") == {"key": SECRET}
    with pytest.raises(CapabilityDenied):
        km.substitute(wire, agent_id="a1", tool="other")


def test_handle_reveals_nothing_anywhere(km: KeyManager) -> None:
    handle = km.set("token", SECRET)
    framed = handle.framed("Bearer {}")
    for text in (repr(handle), str(handle), repr(framed), f"{framed}"):
        assert SECRET not in text
    encoded = msgspec.msgpack.encode(framed)
    assert SECRET.encode() not in encoded
    decoded = msgspec.msgpack.decode(encoded)
    assert decoded == {"$secret": "token", "template": "Bearer {}"}
    assert as_handle(decoded) == framed  # a journaled handle is recognised again
    assert msgspec.json.encode(handle) == b'{"$secret":"token"}'
    with pytest.raises(InvalidArgument):
        SecretHandle("token", "no placeholder")


def test_short_and_invalid_secrets_are_refused(km: KeyManager) -> None:
    with pytest.raises(InvalidArgument, match="redacted"):
        km.set("short", "abc")
    with pytest.raises(InvalidArgument, match="not valid"):
        km.set("../etc", SECRET)


def test_copied_ciphertext_does_not_open(tmp_path: Path, master: MasterKey) -> None:
    with KeyManager.open(tmp_path, master) as km:
        km.set("one", SECRET)
        km.set("two", "another-secret-value")
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute(
            "UPDATE secrets SET (nonce, ciphertext) = "
            "(SELECT nonce, ciphertext FROM secrets WHERE name = 'one') WHERE name = 'two'"
        )
    with pytest.raises(StorageError, match=r"'two'.*tampered"):
        KeyManager.open(tmp_path, master)


def test_rotation_keeps_secrets_and_retires_old_key(tmp_path: Path, master: MasterKey) -> None:
    with KeyManager.open(tmp_path, master) as km:
        km.set("one", SECRET)
        km.set("two", "second-secret-value")
        km.grant("one", tool="t", agent="a")
        knowledge_key = km.data_key("knowledge")
        before = raw_files(tmp_path)
        new = MasterKey.generate()
        km.rotate(new)
        assert km.reveal(SecretHandle("one"), agent_id="a", tool="t") == SECRET
    assert raw_files(tmp_path) != before
    with pytest.raises(MasterKeyError):
        KeyManager.open(tmp_path, master)
    with KeyManager.open(tmp_path, new) as km:
        assert km.reveal(SecretHandle("one"), agent_id="a", tool="t") == SECRET
        assert km.data_key("knowledge") == knowledge_key  # re-wrapped, not replaced
        assert SECRET.encode() not in raw_files(tmp_path)


def test_rotate_key_file_and_recover_interrupted_rotation(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    write_key_file(key_file, MasterKey.generate())
    state = tmp_path / "state"
    with KeyManager.open(state, key_file=key_file) as km:
        km.set("one", SECRET)
        old_text = key_file.read_text()
        km.rotate_key_file(key_file)
    assert key_file.read_text() != old_text
    assert key_file.stat().st_mode & 0o777 == 0o600
    with KeyManager.open(state, key_file=key_file) as km:
        assert "one" in km

    # Simulate a crash after the database was rotated but before the rename.
    pending = key_file.with_name(key_file.name + ".pending")
    with KeyManager.open(state, key_file=key_file) as km:
        new = MasterKey.generate()
        write_key_file(pending, new)
        km.rotate(new)
    with KeyManager.open(state, key_file=key_file) as km:  # finds and adopts the pending key
        assert "one" in km
    assert not pending.exists()
    assert key_file.read_text().strip() == new.encode()
